"""`--show N`: look at solutions step by step, each step coloured by its score.

Selection (``--where``) is vectorised over the score columns; only the N chosen rows are turned
into Python objects. The same example dicts feed the terminal view, ``--json`` and the HTML
report, so all three show the same thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labeler.inspection.agreement import join
from labeler.inspection.stats import COLUMNS, explode, first_errors
from schemas.aggregate import first_error
from schemas.errors import UserError

WHERE = ("all", "ok", "errors", "flagged", "clean", "disagree")
WHERE_HELP = (
    "which rows --show/--html pick: all; ok / errors (status); flagged (the judge found an "
    "error step) / clean (it found none); disagree (the judge's first error differs from the "
    "reference label's, or from the second file's judge)"
)

SHOW_COLUMNS: dict[str, list[str]] = {
    "responses": COLUMNS["responses"] + ["prompt", "final_answer", "gold_answer"],
    "step_scores": COLUMNS["step_scores"] + ["prompt", "steps", "final_answer", "gold_answer"],
    "pairs": COLUMNS["pairs"] + ["prompt", "prefix_steps", "chosen_steps", "rejected_steps"],
}


def _np(col: pa.ChunkedArray) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False)


def _status_ok(t: pa.Table) -> np.ndarray:
    return _np(pc.equal(t.column("status"), "ok").fill_null(False))


def select_rows(t: pa.Table, kind: str, where: str, threshold: float, n: int) -> np.ndarray:
    """Indices of the first ``n`` rows of one file matching ``where``."""
    if where not in WHERE:
        raise UserError(f"--where must be one of {', '.join(WHERE)}, not '{where}'")
    if kind == "pairs":
        if where != "all":
            raise UserError(f"--where {where} does not apply to a pairs file; use --where all")
        return np.arange(min(n, t.num_rows))
    score_col = "reference_scores" if kind == "responses" else "scores"
    mask = np.ones(t.num_rows, dtype=bool)
    if kind == "step_scores":
        ok = _status_ok(t)
        if where == "ok":
            mask = ok
        elif where == "errors":
            mask = ~ok
        elif where in ("flagged", "clean", "disagree"):
            mask = ok & ~_np(t.column("scores").is_null())
    elif where in ("ok", "errors", "disagree"):
        raise UserError(f"--where {where} needs a step_scores file; this is a responses file")
    if where in ("flagged", "clean", "disagree"):
        ex = explode(t.column(score_col))
        fe = first_errors(ex, threshold)
        has = ex.lengths >= 0
        if where == "flagged":
            mask &= has & (fe >= 0)
        elif where == "clean":
            mask &= has & (fe < 0)
        else:
            ref = explode(t.column("reference_scores"))
            if not (ref.lengths >= 0).any():
                raise UserError("--where disagree needs reference_scores or a second file to compare with")
            mask &= (ref.lengths >= 0) & (first_errors(ref, threshold) != fe)
    return np.flatnonzero(mask)[:n]


def _floats(v: list | None) -> list:
    return list(v) if v is not None else []


def _steps(texts: list[str], scores: list | None, refs: list | None, other: list | None = None) -> list[dict]:
    scores, refs, other = _floats(scores), _floats(refs), _floats(other)
    at = lambda xs, i: xs[i] if i < len(xs) else None  # noqa: E731
    out = []
    for i, text in enumerate(texts):
        step = {"text": text, "score": at(scores, i), "reference": at(refs, i)}
        if other:
            step["other"] = at(other, i)
        out.append(step)
    return out


def examples(t: pa.Table, kind: str, rows: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """JSON-able examples for the chosen rows of one file."""
    sub = t.take(pa.array(rows, pa.int64())).to_pylist()
    out = []
    for r in sub:
        if kind == "pairs":
            out.append({
                "pair_id": r["pair_id"], "strategy": r["strategy"], "prompt": r["prompt"],
                "prefix_steps": r["prefix_steps"],
                "chosen": _steps(r["chosen_steps"], r["chosen_scores"], None),
                "rejected": _steps(r["rejected_steps"], r["rejected_scores"], None),
                "chosen_reward": r["chosen_reward"], "rejected_reward": r["rejected_reward"],
            })
            continue
        scores = r.get("scores") if kind == "step_scores" else None
        ex: dict[str, Any] = {
            "response_id": r["response_id"], "prompt": r["prompt"],
            "final_answer": r.get("final_answer"), "gold_answer": r.get("gold_answer"),
            "steps": _steps(r["steps"], scores, r["reference_scores"]),
        }
        if kind == "step_scores":
            ex.update(judge=r["judge"], status=r["status"], error=r["error"])
            if scores is not None:
                ex["first_error"] = first_error(scores, threshold)
        if r["reference_scores"] is not None:
            ex["reference_first_error"] = first_error(r["reference_scores"], threshold)
        out.append(ex)
    return out


def select_compare(a: pa.Table, b: pa.Table, where: str, threshold: float, n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rows (in A, in B) of up to ``n`` responses scored by both files that match ``where``.

    ``disagree`` counts like ``agreement.compare``: same number of steps, and a different first
    error or a step where both judges gave a score on opposite sides of the threshold.
    """
    if where not in ("all", "disagree"):
        raise UserError(f"with two files --where must be 'all' or 'disagree', not '{where}'")
    ia, ib = join(a, b)
    if where == "all":
        keep = np.arange(min(n, len(ia)))
        return ia[keep], ib[keep]
    sa, sb = a.column("scores").take(pa.array(ia)), b.column("scores").take(pa.array(ib))
    ea, eb = explode(sa), explode(sb)
    same = ea.lengths == eb.lengths
    differs = first_errors(ea, threshold) != first_errors(eb, threshold)
    same_idx = np.flatnonzero(same)
    if len(same_idx):
        fa, fb = explode(sa.filter(pa.array(same))), explode(sb.filter(pa.array(same)))
        both = ~np.isnan(fa.values) & ~np.isnan(fb.values)
        bad = both & ((fa.values >= threshold) != (fb.values >= threshold))
        differs[same_idx] |= np.bincount(fa.row[bad], minlength=len(same_idx)) > 0
    keep = np.flatnonzero(differs & same)[:n]
    return ia[keep], ib[keep]


def add_other(exs: list[dict[str, Any]], b: pa.Table, ib: np.ndarray) -> list[dict[str, Any]]:
    """Put the second judge's score beside each step of the examples (rows ``ib`` of ``b``)."""
    other = b.take(pa.array(ib, pa.int64())).select(["judge", "scores"]).to_pylist()
    for ex, o in zip(exs, other, strict=True):
        ex["other_judge"] = o["judge"]
        for i, step in enumerate(ex["steps"]):
            step["other"] = o["scores"][i] if i < len(o["scores"] or []) else None
    return exs


def style_for(score: float | None, threshold: float) -> str:
    if score is None:
        return "dim"
    if score < threshold:
        return "bold red"
    return "yellow" if score < max(threshold, 0.8) else "green"


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.2f}"


def cut(text: str, max_chars: int) -> str:
    """``text`` shortened to about ``max_chars`` characters, saying how much was left out: one
    runaway step (a model looping for 50k characters) must not bury the rest of the output."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    head = text[: max(max_chars - 40, max_chars // 2)]
    return f"{head} … [{len(text) - len(head):,} more characters]"


def render(console: Any, exs: list[dict[str, Any]], threshold: float, max_chars: int = 0) -> None:
    """Print examples with rich: score, reference label (and second judge) beside each step.
    Steps and problems longer than ``max_chars`` are cut (0: never)."""
    from rich.markup import escape
    from rich.text import Text

    for n, ex in enumerate(exs, 1):
        head = ex.get("response_id") or ex.get("pair_id")
        extra = f"  judge={ex['judge']} status={ex['status']}" if "judge" in ex else ""
        for key, name in (("first_error", "first error"), ("reference_first_error", "reference")):
            if key in ex:
                extra += f"  {name}={ex[key]}"
        if ex.get("other_judge"):
            extra += f"  vs {ex['other_judge']}"
        console.rule(f"[bold]#{n} {escape(str(head))}[/]{escape(extra)}")
        console.print(Text(cut(ex["prompt"].strip(), max_chars), style="italic"))
        if ex.get("error"):
            console.print(Text(f"error: {ex['error']}", style="red"))
        blocks = [("", ex["steps"])] if "steps" in ex else [
            ("prefix", [{"text": s, "score": None, "reference": None} for s in ex["prefix_steps"]]),
            (f"chosen (reward {_fmt(ex['chosen_reward'])})", ex["chosen"]),
            (f"rejected (reward {_fmt(ex['rejected_reward'])})", ex["rejected"]),
        ]
        for title, steps in blocks:
            if title:
                console.print(Text(title, style="bold"))
            for i, step in enumerate(steps):
                line = Text(f"{i + 1:>3}. ")
                line.append(f"[{_fmt(step['score'])}]", style=style_for(step["score"], threshold))
                if "other" in step:
                    line.append(f"[{_fmt(step['other'])}]", style=style_for(step["other"], threshold))
                if step.get("reference") is not None:
                    line.append(f" ref {_fmt(step['reference'])}",
                                style=style_for(step["reference"], threshold))
                line.append("  ")
                line.append(cut(step["text"], max_chars), style=style_for(step["score"], threshold))
                console.print(line)
        if ex.get("gold_answer") is not None or ex.get("final_answer") is not None:
            console.print(Text(f"final answer: {ex.get('final_answer')}   gold: {ex.get('gold_answer')}",
                               style="dim"))
