"""A job's rows: the responses it owns, the ``step_scores`` row of an answer or a failure, the
price of an answer, the run header, and the ``--dry-run`` estimate.

Pure functions shared by every way of labeling (the async engine, provider batches, Ray), split
from :mod:`labeler.engine.runner` so that the engine module holds only the engine.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labeler.engine.pricing import Price, price_for
from labeler.judges.base import Item, Judge, Verdict
from schemas.ids import shard_of
from schemas.tables import RESPONSES, read_table

__all__ = ["FREE", "build_row", "estimate", "load_rows", "price_of", "run_header", "verdict_cost"]


def load_rows(path: str | Path, limit: int | None = None, num_shards: int = 1,
              shard_index: int = 0, counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The responses this job owns: this machine's hash shard, the first ``limit``, no duplicates.

    Two rows with one response_id are the same solution (the id hashes problem + steps) and are
    labeled once; ``counts["duplicates"]`` (when given) says how many rows were left out for it,
    so the command can tell a user why it labels fewer rows than the input holds (several samples
    of a `generate` folder often repeat one text).
    """
    rows = read_table(path, RESPONSES).to_pylist()
    seen: set[str] = set()
    out = []
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        rid = row["response_id"]
        if num_shards > 1 and shard_of(rid, num_shards) != shard_index:
            continue
        if rid in seen:
            if counts is not None:
                counts["duplicates"] = counts.get("duplicates", 0) + 1
            continue
        seen.add(rid)
        out.append(row)
    return out


FREE = Price(0.0, 0.0, 0.0)


def price_of(judge: Judge, prices: dict[str, Price]) -> Price | None:
    """The judge's price; free judges (rule-based, reference, local PRM) cost 0, an API model
    missing from the table is unknown (None)."""
    return FREE if judge.price_model is None else price_for(judge.price_model, prices)


def verdict_cost(verdict: Verdict, price: Price | None) -> float | None:
    if price is None:
        return None
    return price.cost(verdict.input_tokens, verdict.cached_tokens, verdict.output_tokens)


def build_row(row: dict[str, Any], judge: Judge, *, verdict: Verdict | None = None,
              error: str | None = None, attempts: int = 1, cost: float | None = None,
              latency: float | None = None, fingerprint: str | None = None) -> dict[str, Any]:
    """A ``step_scores`` row: the response's columns plus the judge's answer or the error
    (``fingerprint``: the judge's, when the caller has it at hand; else computed)."""
    out = {name: row.get(name) for name in RESPONSES.schema.names}
    ok = verdict is not None and error is None and verdict.error is None
    v = verdict or Verdict(scores=[])
    out.update(
        judge=judge.name,
        judge_fingerprint=fingerprint or judge.fingerprint(),
        scores=[None if s is None else float(s) for s in v.scores] if ok else None,
        raw=v.raw or None,
        status="ok" if ok else "error",
        error=None if ok else (error or v.error),
        attempts=attempts,
        input_tokens=v.input_tokens,
        output_tokens=v.output_tokens,
        cached_tokens=v.cached_tokens,
        cost_usd=cost,
        latency_s=latency,
        created_at=dt.datetime.now(dt.timezone.utc),
    )
    return out


def run_header(judge: Judge, price: Price | None, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``run.json`` says about a job besides its runs and totals: the caller's ``info``
    (input, config, mode), the judge, its fingerprint and the price per million tokens."""
    return {
        **dict(info or {}),
        "judge": judge.name,
        "judge_fingerprint": judge.fingerprint(),
        "judge_parts": judge.fingerprint_parts(),
        "price_per_mtok": None if price is None else vars(price),
    }


def estimate(rows: Sequence[dict[str, Any]], judge: Judge, price: Price | None) -> dict[str, Any]:
    """``--dry-run``: tokens and dollars to label ``rows``, without a single request.

    An upper bound: provider prompt caching of the shared rubric + problem prefix lowers it.
    """
    if judge.price_model is None:
        price = FREE
    inp = out = 0
    steps = 0
    for row in rows:
        i, o = judge.estimate_tokens(Item.from_row(row))
        inp, out, steps = inp + i, out + o, steps + len(row["steps"])
    cost = None if price is None else price.cost(inp, 0, out)
    return {"rows": len(rows), "steps": steps, "requests": -(-len(rows) // max(1, judge.batch_size)),
            "input_tokens": inp, "output_tokens": out, "cost_usd": None if cost is None else round(cost, 4),
            "judge": judge.name, "judge_fingerprint": judge.fingerprint(),
            "price_per_mtok": None if price is None else vars(price)}
