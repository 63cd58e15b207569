"""Several judges' step_scores runs → one step_scores run (`stepdpo combine`).

Every input is one judge's run; a response is combined when every input scored it (status ok,
one score slot per step); the others are counted, never silently dropped. Per step, over the
inputs that gave a value:

- ``mean`` / ``min`` / ``weighted`` (``--weights``, one per input, renormalised over the inputs
  that gave a value): the usual reductions of the values.
- ``vote``: the majority of the hard labels (value ≥ threshold) → 1.0 or 0.0; a tie is null.
- ``consensus`` (the filter of Qwen's "Lessons of developing PRMs", arXiv 2501.07301): a step
  keeps the mean of the values when EVERY input gave one and all agree on the hard label;
  otherwise it is null — *disputed* when the judges gave opposite labels, *partial* when some
  gave none. Only agreed labels reach training.

Escalation (``consensus``/``vote``): the responses with a disputed step are labelled by a
further judge (say a frontier model) through the usual engine — cached, retried, resumable,
costed — and its scores settle the disputed steps; the expensive judge sees only what the cheap
ones could not settle. ``cost_usd`` of an output row is the sum of what its labels cost in every
input (plus the escalation); the cost per accepted (non-null) label divides everything the
inputs and the escalation spent — rows left out included — by the labels kept.

The output judge is ``combine:HOW``; its fingerprint hashes the method, its parameters and the
input judges' fingerprints (and the escalation judge's), so it names its inputs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import UserError
from schemas.ids import sha256_hex
from schemas.tables import RESPONSES, STEP_SCORES, read_table

HOWS = ("mean", "min", "vote", "weighted", "consensus")
COMBINE_VERSION = 1


@dataclass
class CombineOptions:
    how: str = "mean"
    threshold: float = 0.5
    weights: list[float] | None = None


@dataclass
class RunInput:
    """One judge's ok rows of one run, by response id."""

    path: str
    judge: str
    fingerprint: str
    rows: dict[str, dict[str, Any]]
    spent_usd: float | None = 0.0  # every row's cost, used or not (None: a price was unknown)


@dataclass
class Counts:
    responses: int = 0
    missing: int = 0  # responses some input did not score (ok, same number of steps)
    steps: int = 0
    kept: int = 0  # non-null output steps: accepted labels
    disputed: int = 0
    partial: int = 0
    rows_all_agreed: int = 0
    escalated_rows: int = 0
    escalation_settled: int = 0
    escalation_errors: int = 0
    per_input: dict[str, int] = field(default_factory=dict)


def read_input(path: str) -> RunInput:
    """A step_scores run holding one judge; the first ok row per response is kept."""
    table = read_table(path, STEP_SCORES)
    judges = sorted(set(zip(table.column("judge").to_pylist(), table.column("judge_fingerprint").to_pylist(),
                            strict=True)))
    if len(judges) != 1:
        names = ", ".join(f"{j} ({f})" for j, f in judges) or "none"
        raise UserError(f"{path}: combine takes one judge per input run; this one holds {names}")
    rows: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        if row["status"] == "ok" and row["scores"] is not None and row["response_id"] not in rows:
            rows[row["response_id"]] = row
    spent = _sum(table.column("cost_usd").to_pylist())
    return RunInput(path, judges[0][0], judges[0][1], rows, spent)


def _label(v: float, threshold: float) -> bool:
    return v >= threshold


def combine_step(values: Sequence[float | None], opts: CombineOptions) -> tuple[float | None, str]:
    """One step's combined value and its state: ``agreed``, ``disputed``, ``partial`` or ``ok``
    (``ok``: a method that does not judge agreement)."""
    given = [(i, v) for i, v in enumerate(values) if v is not None]
    vals = [v for _, v in given]
    if opts.how in ("consensus", "vote"):
        labels = {_label(v, opts.threshold) for v in vals}
        if opts.how == "vote":
            pos = sum(_label(v, opts.threshold) for v in vals)
            neg = len(vals) - pos
            if pos == neg:
                return None, "disputed" if vals else "partial"
            return (1.0 if pos > neg else 0.0), "agreed" if len(labels) == 1 else "ok"
        if len(labels) > 1:
            return None, "disputed"
        if len(vals) < len(values):
            return None, "partial"
        return sum(vals) / len(vals), "agreed"
    if not vals:
        return None, "partial"
    if opts.how == "mean":
        return sum(vals) / len(vals), "ok"
    if opts.how == "min":
        return min(vals), "ok"
    weights = opts.weights or []
    total = sum(weights[i] for i, _ in given)
    if total <= 0:
        return None, "partial"
    return sum(weights[i] * v for i, v in given) / total, "ok"


def fingerprint(inputs: Sequence[RunInput], opts: CombineOptions, escalation: str | None) -> str:
    return sha256_hex({"version": COMBINE_VERSION, "how": opts.how, "threshold": opts.threshold,
                       "weights": opts.weights, "inputs": [i.fingerprint for i in inputs],
                       "escalation": escalation})[:16]


def check_options(opts: CombineOptions, n_inputs: int) -> None:
    if opts.how not in HOWS:
        raise UserError(f"unknown --how '{opts.how}'; choose {', '.join(HOWS)}")
    if n_inputs < 2:
        raise UserError("combine needs at least two input runs")
    if opts.how == "weighted":
        if not opts.weights or len(opts.weights) != n_inputs:
            raise UserError(f"--how weighted needs --weights with one number per input ({n_inputs})")
        if any(w < 0 for w in opts.weights):
            raise UserError("--weights must not be negative")
    elif opts.weights:
        raise UserError("--weights applies only to --how weighted")
    if not 0.0 < opts.threshold <= 1.0:
        raise UserError("--threshold must be in (0, 1]")


def _sum(values: Sequence[float | int | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


@dataclass
class Combined:
    rows: list[dict[str, Any]]
    disputed_rows: list[dict[str, Any]]  # responses columns, for the escalation judge
    counts: Counts


def combine(inputs: Sequence[RunInput], opts: CombineOptions) -> Combined:
    """Combine the inputs (see the module docstring); rows in the first input's order."""
    check_options(opts, len(inputs))
    counts = Counts(per_input={i.path: len(i.rows) for i in inputs})
    judge = f"combine:{opts.how}"
    ids = list(inputs[0].rows)
    for other in inputs[1:]:
        ids += [r for r in other.rows if r not in inputs[0].rows]
    out, disputed_rows = [], []
    now = dt.datetime.now(dt.timezone.utc)
    for rid in dict.fromkeys(ids):
        rows = [i.rows.get(rid) for i in inputs]
        base = next(r for r in rows if r is not None)
        n = len(base["steps"])
        if any(r is None or len(r["scores"]) != n for r in rows):
            counts.missing += 1
            continue
        counts.responses += 1
        scores, disputed = [], []
        for k in range(n):
            value, state = combine_step([r["scores"][k] for r in rows], opts)  # type: ignore[index]
            scores.append(value)
            counts.disputed += state == "disputed"
            counts.partial += state == "partial"
            if state == "disputed":
                disputed.append(k)
        counts.steps += n
        counts.rows_all_agreed += all(s is not None for s in scores)
        row = {name: base.get(name) for name in RESPONSES.schema.names}
        row.update(
            judge=judge, judge_fingerprint="", scores=scores,
            raw=json.dumps({"inputs": {i.judge: r["scores"] for i, r in zip(inputs, rows, strict=True)},
                            "disputed": disputed}, sort_keys=True),
            status="ok", error=None, attempts=1,
            input_tokens=sum(r.get("input_tokens") or 0 for r in rows),  # type: ignore[union-attr]
            output_tokens=sum(r.get("output_tokens") or 0 for r in rows),  # type: ignore[union-attr]
            cached_tokens=sum(r.get("cached_tokens") or 0 for r in rows),  # type: ignore[union-attr]
            cost_usd=_sum([r.get("cost_usd") for r in rows]),  # type: ignore[union-attr]
            latency_s=None, created_at=now,
        )
        out.append(row)
        if disputed:
            disputed_rows.append({name: base.get(name) for name in RESPONSES.schema.names})
    return Combined(out, disputed_rows, counts)


def settle(combined: Combined, escalated: dict[str, dict[str, Any]]) -> None:
    """Merge the escalation judge's ok rows into the disputed steps (in place)."""
    wanted = {r["response_id"] for r in combined.disputed_rows}
    counts = combined.counts
    counts.escalated_rows = len(wanted)
    for row in combined.rows:
        rid = row["response_id"]
        if rid not in wanted:
            continue
        raw = json.loads(row["raw"])
        esc = escalated.get(rid)
        if esc is None or esc.get("scores") is None or len(esc["scores"]) != len(row["scores"]):
            counts.escalation_errors += 1
            raw["escalation"] = {"error": (esc or {}).get("error") or "not labelled"}
            row["raw"] = json.dumps(raw, sort_keys=True)
            continue
        for k in raw["disputed"]:
            if esc["scores"][k] is not None:
                row["scores"][k] = float(esc["scores"][k])
                counts.escalation_settled += 1
        raw["escalation"] = {"judge": esc["judge"], "scores": esc["scores"]}
        row["raw"] = json.dumps(raw, sort_keys=True)
        for col in ("input_tokens", "output_tokens", "cached_tokens"):
            row[col] = (row[col] or 0) + (esc.get(col) or 0)
        row["cost_usd"] = _sum([row["cost_usd"], esc.get("cost_usd")])


def finish(combined: Combined, fp: str, inputs: Sequence[RunInput],
           escalation_cost: float | None = 0.0) -> dict[str, Any]:
    """Stamp the fingerprint, count the accepted labels; the summary for run.json."""
    for row in combined.rows:
        row["judge_fingerprint"] = fp
    counts = combined.counts
    counts.kept = sum(s is not None for r in combined.rows for s in r["scores"])
    spent = _sum([i.spent_usd for i in inputs] + [escalation_cost])
    summary = {**vars(counts), "spent_usd": None if spent is None else round(spent, 6)}
    summary["cost_per_accepted_label"] = (None if spent is None or not counts.kept
                                          else round(spent / counts.kept, 8))
    return summary
