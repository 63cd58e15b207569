"""How well a judge agrees with human step labels, and with another judge.

Against ``reference_scores`` we report what PRM papers report, so numbers are comparable:
step accuracy at a threshold, ROC AUC (a step labelled >= threshold is the positive class),
and the ProcessBench metric — the earliest error index (first step under the threshold, -1 if
none) must match the reference exactly; accuracy on erroneous and on correct solutions and their
harmonic mean (F1). AUC and ranks are written here with numpy (average ranks for ties) rather
than pulling in scikit-learn or scipy for two formulas.

Only rows the judge actually scored are compared (status ok, scores and labels present, same
number of steps); the rest are counted so a silently shrinking comparison is visible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.inspection.stats import Exploded, explode, first_errors, json_number

CALIBRATION_BINS = 10
SCATTER_POINTS = 1000  # step score pairs kept for the A-vs-B scatter (evenly spaced, so fixed)


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the average of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], n]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n)
    ranks[order] = avg[np.cumsum(new) - 1]
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Mann–Whitney AUC: P(score of a random positive > a random negative), ties count half.

    None when only one class is present (AUC is undefined there).
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    return pearson(rankdata(a), rankdata(b)) if len(a) >= 2 else None


def harmonic(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def processbench_metric(pred: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """The ProcessBench metric from earliest-error indices (-1: no error), as its run_eval.py
    computes it: accuracy on erroneous solutions (prediction == label exactly), on correct ones
    (prediction == -1), and their harmonic mean. A prediction that can match nothing (e.g. -2
    for an answer that could not be parsed) is a miss, as the official script counts it."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    erroneous = ref >= 0
    hit = pred == ref
    acc_err = float(hit[erroneous].mean()) if erroneous.any() else None
    acc_cor = float(hit[~erroneous].mean()) if (~erroneous).any() else None
    return {
        "erroneous": int(erroneous.sum()),
        "correct": int((~erroneous).sum()),
        "error_accuracy": json_number(acc_err),
        "correct_accuracy": json_number(acc_cor),
        "f1": json_number(harmonic(acc_err, acc_cor)),
    }


def _rows_to_compare(table: pa.Table) -> tuple[np.ndarray, dict[str, int]]:
    """Mask of rows with status ok, scores and labels present and equally long."""
    n = table.num_rows
    ok = pc.equal(table.column("status"), "ok").fill_null(False).to_numpy(zero_copy_only=False)
    s_len = pc.list_value_length(table.column("scores")).fill_null(-1).to_numpy(zero_copy_only=False)
    r_len = pc.list_value_length(table.column("reference_scores")).fill_null(-1).to_numpy(
        zero_copy_only=False)
    labeled = r_len >= 0
    scored = ok & (s_len >= 0)
    mask = labeled & scored & (s_len == r_len)
    counts = {
        "rows": n,
        "labeled": int(labeled.sum()),
        "compared": int(mask.sum()),
        "not_scored": int((labeled & ~scored).sum()),
        "length_mismatch": int((labeled & scored & (s_len != r_len)).sum()),
    }
    return mask, counts


def calibration(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Reliability table: per score bin, mean score vs mean reference label; plus ECE."""
    idx = np.minimum((np.clip(scores, 0, 1) * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    count = np.bincount(idx, minlength=CALIBRATION_BINS)
    s_sum = np.bincount(idx, weights=scores, minlength=CALIBRATION_BINS)
    l_sum = np.bincount(idx, weights=labels, minlength=CALIBRATION_BINS)
    c_sum = np.bincount(idx, weights=(labels >= threshold).astype(np.float64), minlength=CALIBRATION_BINS)
    bins = []
    ece = 0.0
    for i in range(CALIBRATION_BINS):
        if not count[i]:
            continue
        ms, ml = s_sum[i] / count[i], l_sum[i] / count[i]
        ece += count[i] * abs(ms - ml)
        bins.append({
            "lo": i / CALIBRATION_BINS, "hi": (i + 1) / CALIBRATION_BINS, "count": int(count[i]),
            "mean_score": json_number(ms), "mean_reference": json_number(ml), "frac_correct": json_number(c_sum[i] / count[i]),
        })
    return {"bins": bins, "ece": json_number(ece / max(len(scores), 1))}


def _aligned_steps(s: Exploded, r: Exploded) -> tuple[np.ndarray, np.ndarray]:
    """Step pairs where both the judge and the reference gave a value."""
    both = ~np.isnan(s.values) & ~np.isnan(r.values)
    return s.values[both], r.values[both]


def versus_reference(table: pa.Table, threshold: float = 0.5) -> dict[str, Any] | None:
    """Agreement of ``scores`` with ``reference_scores`` in a step_scores table (one judge)."""
    mask, counts = _rows_to_compare(table)
    if counts["labeled"] == 0:
        return None
    sub = table.filter(pa.array(mask))
    s, r = explode(sub.column("scores")), explode(sub.column("reference_scores"))
    sv, rv = _aligned_steps(s, r)
    pred_ok, ref_ok = sv >= threshold, rv >= threshold
    fe_pred, fe_ref = first_errors(s, threshold), first_errors(r, threshold)
    erroneous = fe_ref >= 0
    out: dict[str, Any] = {
        **counts,
        "threshold": threshold,
        "steps": int(len(sv)),
        "step_accuracy": json_number(float((pred_ok == ref_ok).mean())) if len(sv) else None,
        "step_auc": json_number(roc_auc(sv, ref_ok)),
        "processbench": processbench_metric(fe_pred, fe_ref),
        # Both histograms over the same compared rows, so they can be plotted side by side.
        "first_error_reference": {"none": int((~erroneous).sum()),
                                  "histogram": _hist(fe_ref[erroneous])},
        "first_error_judge": {"none": int((fe_pred < 0).sum()), "histogram": _hist(fe_pred[fe_pred >= 0])},
        "calibration": calibration(sv, rv, threshold) if len(sv) else {"bins": [], "ece": None},
    }
    return out


def _hist(v: np.ndarray) -> dict[str, int]:
    uniq, counts = np.unique(v, return_counts=True)
    return {str(int(u)): int(c) for u, c in zip(uniq, counts, strict=True)}


def by_judge(table: pa.Table, threshold: float = 0.5) -> dict[str, Any]:
    """``versus_reference`` for each judge in the table (loop over judges, not rows)."""
    if table.column("reference_scores").null_count == table.num_rows:
        return {}
    out = {}
    for judge in sorted(pc.unique(table.column("judge")).to_pylist()):
        res = versus_reference(table.filter(pc.equal(table.column("judge"), judge)), threshold)
        if res is not None:
            out[judge] = res
    return out


# ----------------------------------------------------------------------------- judge vs judge


def join(a: pa.Table, b: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (ia, ib) of responses scored (status ok) in both tables, first row per id."""

    def firsts(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        ok = (pc.equal(t.column("status"), "ok").fill_null(False).to_numpy(zero_copy_only=False)
              & ~t.column("scores").is_null().to_numpy(zero_copy_only=False))
        rows = np.flatnonzero(ok)
        ids = t.column("response_id").to_numpy(zero_copy_only=False)[rows]
        uniq, first = np.unique(ids, return_index=True)
        return uniq, rows[first]

    a_ids, a_rows = firsts(a)
    b_ids, b_rows = firsts(b)
    where = pc.index_in(pa.array(b_ids, pa.string()), value_set=pa.array(a_ids, pa.string()))
    found = where.is_valid().to_numpy(zero_copy_only=False)
    where = where.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return a_rows[where[found]], b_rows[found]


def compare(a: pa.Table, b: pa.Table, threshold: float = 0.5, top: int = 10) -> dict[str, Any]:
    """Two judges on the same responses: step agreement, correlation, where they differ."""
    ia, ib = join(a, b)
    sa, sb = a.column("scores").take(pa.array(ia)), b.column("scores").take(pa.array(ib))
    same_len = (pc.list_value_length(sa).to_numpy(zero_copy_only=False)
                == pc.list_value_length(sb).to_numpy(zero_copy_only=False))
    keep = pa.array(same_len)
    ids = a.column("response_id").take(pa.array(ia)).filter(keep).to_pylist()
    ea, eb = explode(sa.filter(keep)), explode(sb.filter(keep))
    both = ~np.isnan(ea.values) & ~np.isnan(eb.values)
    va, vb, rows = ea.values[both], eb.values[both], ea.row[both]
    disagree = (va >= threshold) != (vb >= threshold)
    diff = np.abs(va - vb)
    n = len(ids)
    max_diff = np.zeros(n)
    np.maximum.at(max_diff, rows, diff)
    n_dis = np.bincount(rows[disagree], minlength=n)
    fa, fb = first_errors(ea, threshold), first_errors(eb, threshold)
    differs = (fa != fb) | (n_dis > 0)
    order = np.argsort(-max_diff[differs], kind="mergesort")[:top]
    picked = np.flatnonzero(differs)[order]
    judge = lambda t: (pc.unique(t.column("judge")).to_pylist() or [None])  # noqa: E731
    return {
        "judges_a": judge(a),
        "judges_b": judge(b),
        "responses_a": a.num_rows,
        "responses_b": b.num_rows,
        "joined": int(len(ia)),
        "length_mismatch": int((~same_len).sum()),
        "steps_compared": int(len(va)),
        "threshold": threshold,
        "step_agreement": json_number(float((~disagree).mean())) if len(va) else None,
        "pearson": json_number(pearson(va, vb)),
        "spearman": json_number(spearman(va, vb)),
        "mean_abs_diff": json_number(float(diff.mean())) if len(va) else None,
        "first_error_agreement": json_number(float((fa == fb).mean())) if n else None,
        "responses_disagreeing": int(differs.sum()),
        "disagreements": [
            {"response_id": ids[i], "first_error_a": int(fa[i]), "first_error_b": int(fb[i]),
             "steps_disagreeing": int(n_dis[i]), "max_abs_diff": json_number(max_diff[i])}
            for i in picked
        ],
        "scatter": scatter_sample(va, vb),
    }


def scatter_sample(va: np.ndarray, vb: np.ndarray, n: int = SCATTER_POINTS) -> dict[str, Any]:
    """Up to ``n`` (score A, score B) step pairs, evenly spaced over all of them: the same
    input always gives the same plot, and the report stays small however many steps there are."""
    idx = np.unique(np.linspace(0, len(va) - 1, n).astype(np.int64)) if len(va) > n else np.arange(len(va))
    return {"a": [round(float(x), 4) for x in va[idx]], "b": [round(float(x), 4) for x in vb[idx]],
            "of": int(len(va))}
