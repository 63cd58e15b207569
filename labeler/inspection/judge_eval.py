"""Judges scored on ProcessBench-format files: the table papers report, for any of our judges.

A ProcessBench-format file holds one split (gsm8k, math, olympiadbench, omnimath in the
release): records with ``problem``, ``steps`` (list), ``label`` (index of the earliest wrong
step, -1 if none) and ``final_answer_correct``, as JSONL, a JSON array or Parquet. Each record
becomes a ``responses`` row whose ``reference_scores`` encode the label (1 before it, 0 at it,
null after), so any judge runs on it through the ordinary engine (cached, resumable, costed)
and ``--judge reference`` reproduces the labels exactly (F1 100: a sanity check).

Reported per split, as ProcessBench's ``run_eval.py`` does: accuracy on erroneous solutions
(predicted earliest error == label), on correct ones (predicted -1), their harmonic mean F1, and
the plain mean of the split F1s; a row the judge could not answer (an unparseable critique, a
cut-off or failed request) is a miss, never dropped. Plus the step-level balanced F1 of
Hard2Verify (harmonic mean of the true-positive and true-negative rates over the labeled steps)
and the cost per 1,000 steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from labeler.inspection.agreement import harmonic, processbench_metric
from labeler.inspection.stats import explode, first_errors, json_number
from schemas.errors import UserError
from schemas.ids import sha256_hex

MISSED = -2  # the prediction of a row with no usable answer: equals no label


# -- input -----------------------------------------------------------------------------------

def _records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) pairs of a JSONL / JSON-array / Parquet file."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        return [(f"{path} row {i}", r) for i, r in enumerate(rows)]
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return [(f"{path} item {i}", r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((f"{path} line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
    return out


def reference_scores(label: int, n_steps: int) -> list[float | None]:
    """The label as step scores: 1 before the earliest error, 0 at it, null after; all 1 for -1."""
    if label < 0:
        return [1.0] * n_steps
    return [1.0] * label + [0.0] + [None] * (n_steps - label - 1)


def load_split(path: str | Path, split: str) -> list[dict[str, Any]]:
    """``responses`` rows of one ProcessBench-format file; one clear error for a bad record."""
    path = Path(path)
    rows = []
    for where, rec in _records(path):
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected an object with problem, steps, label")
        missing = [k for k in ("problem", "steps", "label") if k not in rec]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)} (ProcessBench format: problem, "
                            "steps, final_answer_correct, label)")
        problem, steps, label = rec["problem"], rec["steps"], rec["label"]
        if not isinstance(problem, str) or not problem.strip():
            raise UserError(f"{where}: 'problem' must be non-empty text")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise UserError(f"{where}: 'steps' must be a non-empty list of strings")
        if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
            raise UserError(f"{where}: 'label' must be an integer in -1..{len(steps) - 1}, not {label!r}")
        case = str(rec.get("id", where))
        meta = {"processbench": {"split": split, "id": case, "label": label,
                                 "final_answer_correct": rec.get("final_answer_correct"),
                                 "generator": rec.get("generator")}}
        rows.append({
            # The case, not only its text, is the unit: a benchmark may hold one solution twice.
            "response_id": sha256_hex({"split": split, "case": case, "problem": problem, "steps": steps})[:24],
            "problem_id": f"{split}:{case}", "source": f"processbench:{split}", "prompt": problem,
            "steps": steps, "final_answer": None, "gold_answer": None,
            "reference_scores": reference_scores(label, len(steps)),
            "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
        })
    if not rows:
        raise UserError(f"{path}: no records")
    return rows


def split_files(specs: list[str]) -> list[tuple[str, Path]]:
    """``[NAME=]PATH`` arguments → (split name, path); the name defaults to the file's stem."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or name in {n for n, _ in out}:
            raise UserError(f"split '{name}' named twice; name them NAME=PATH")
        out.append((name, Path(path)))
    return out


# -- metrics ---------------------------------------------------------------------------------

def split_metrics(inputs: list[dict[str, Any]], table: pa.Table, threshold: float = 0.5) -> dict[str, Any]:
    """The ProcessBench metric, balanced step F1 and cost of one judge on one split.

    ``inputs`` are the split's rows, ``table`` the judge's step_scores for them. A case whose row
    is missing or in error is a miss, in both metrics.
    """
    by_id = {}
    for r in table.select(["response_id", "status", "scores", "cost_usd"]).to_pylist():
        by_id[r["response_id"]] = r
    refs, preds, failed, cost, cost_known = [], [], 0, 0.0, True
    tp = tn = pos = neg = 0
    for row in inputs:
        label = json.loads(row["meta"])["processbench"]["label"]
        got = by_id.get(row["response_id"])
        ok = got is not None and got["status"] == "ok" and got["scores"] is not None \
            and len(got["scores"]) == len(row["steps"])
        if got is not None:
            if got["cost_usd"] is None and got["status"] == "ok":
                cost_known = False
            cost += got["cost_usd"] or 0.0
        scores = got["scores"] if ok else None
        refs.append(label)
        if scores is None:
            failed += 1
            preds.append(MISSED)
        else:
            ex = explode(pa.array([scores], pa.list_(pa.float64())))
            preds.append(int(first_errors(ex, threshold)[0]))
        # Step level: every labeled step (before and at the earliest error). A step the judge
        # left null counts as rejected after an error it flagged, else as accepted.
        flagged = False
        for k, ref in enumerate(row["reference_scores"]):
            s = None if scores is None else scores[k]
            if ref is not None:
                if scores is None:
                    says_ok = ref < threshold  # a miss: counted as the wrong call
                else:
                    says_ok = (not flagged) if s is None else s >= threshold
                if ref >= threshold:
                    pos += 1
                    tp += says_ok
                else:
                    neg += 1
                    tn += not says_ok
            flagged = flagged or (s is not None and s < threshold)
    pb = processbench_metric(np.array(preds), np.array(refs))
    tpr = tp / pos if pos else None
    tnr = tn / neg if neg else None
    steps = sum(len(r["steps"]) for r in inputs)
    return {
        "cases": len(inputs), **pb, "parse_failures": failed,
        "steps": steps, "step_tpr": json_number(tpr), "step_tnr": json_number(tnr),
        "balanced_accuracy": json_number(None if tpr is None or tnr is None else (tpr + tnr) / 2),
        "balanced_f1": json_number(harmonic(tpr, tnr)),
        "cost_usd": round(cost, 6) if cost_known else None,
        "cost_per_1k_steps": (round(1000 * cost / steps, 6) if steps else None) if cost_known else None,
    }


def summarize(per_split: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean of the split F1s (the papers' "Avg."), pooled step F1 and cost."""
    f1s = [m["f1"] for m in per_split.values()]
    bal = [m["balanced_f1"] for m in per_split.values()]
    costs = [m["cost_usd"] for m in per_split.values()]
    steps = sum(m["steps"] for m in per_split.values())
    known = all(c is not None for c in costs)
    return {
        "avg_f1": json_number(sum(f1s) / len(f1s)) if f1s and all(f is not None for f in f1s) else None,
        "avg_balanced_f1": json_number(sum(bal) / len(bal)) if bal and all(b is not None for b in bal) else None,
        "parse_failures": sum(m["parse_failures"] for m in per_split.values()),
        "cases": sum(m["cases"] for m in per_split.values()),
        "cost_usd": round(sum(costs), 6) if known else None,
        "cost_per_1k_steps": round(1000 * sum(costs) / steps, 6) if known and steps else None,
    }


# -- report ----------------------------------------------------------------------------------

def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The ProcessBench table (F1 per split, Avg.) with balanced F1 and cost, one row per judge;
    then each judge's per-split detail."""
    splits = report["splits"]
    judges = report["judges"]
    head = ["judge", *splits, "Avg. F1", "balanced F1", "$ / 1k steps", "failures"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, res in judges.items():
        s = res["summary"]
        cost = "–" if s["cost_per_1k_steps"] is None else f"{s['cost_per_1k_steps']:.4f}"
        cells = [name, *(pct(res["splits"][sp]["f1"]) for sp in splits), pct(s["avg_f1"]),
                 pct(s["avg_balanced_f1"]), cost, str(s["parse_failures"])]
        lines.append("| " + " | ".join(cells) + " |")
    for name, res in judges.items():
        lines += ["", f"**{name}**", "",
                  "| split | cases | error acc | correct acc | F1 | balanced F1 | failures | $ / 1k steps |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for sp in splits:
            m = res["splits"][sp]
            cost = "–" if m["cost_per_1k_steps"] is None else f"{m['cost_per_1k_steps']:.4f}"
            lines.append(f"| {sp} | {m['cases']} | {pct(m['error_accuracy'])} | {pct(m['correct_accuracy'])} | "
                         f"{pct(m['f1'])} | {pct(m['balanced_f1'])} | {m['parse_failures']} | {cost} |")
    return "\n".join(lines) + "\n"


def judge_slug(spec: str) -> str:
    """A folder name for a judge spec (``openai:gpt-4o`` → ``openai_gpt-4o``)."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in spec)[:80] + "-" + sha256_hex(spec)[:6]
