"""The run folder side of batch mode, built from the online engine's own pieces.

Rows go into the same ``step_scores`` shards through :class:`labeler.rundir.RunDir` (so its
resume rule and compaction cover batch rows too), answers into the same
:class:`labeler.cache.JudgeCache` under the same keys, costs from the same price table.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from labeler.cache import JudgeCache, cache_key
from labeler.judges.base import Judge, Verdict
from labeler.pricing import Price
from labeler.rundir import RunDir

_RESPONSE_KEYS = ("response_id", "problem_id", "source", "prompt", "steps", "final_answer",
                  "gold_answer", "reference_scores", "meta")


class RunSink:
    """Implements :class:`labeler.batch.runner.Sink` on a run folder and a judge cache."""

    def __init__(self, run: RunDir, judge: Judge, cache: JudgeCache | None, price: Price | None) -> None:
        self.run = run
        self.judge = judge
        self.fingerprint = judge.fingerprint()
        self.cache = cache
        self.price = price
        self.shards: list[str] = []

    def row(self, response: Mapping[str, Any], verdict: Verdict | None, error: str | None,
            cost_usd: float | None, latency_s: float) -> dict[str, Any]:
        row = {k: response.get(k) for k in _RESPONSE_KEYS}
        ok = verdict is not None and error is None
        n = len(row["steps"] or [])
        row.update(
            judge=self.judge.name,
            judge_fingerprint=self.fingerprint,
            scores=list(verdict.scores) if ok and verdict else [None] * n if not ok else None,
            raw=verdict.raw if verdict else None,
            status="ok" if ok else "error",
            error=None if ok else (error or "no answer"),
            attempts=1,
            input_tokens=verdict.input_tokens if verdict else 0,
            output_tokens=verdict.output_tokens if verdict else 0,
            cached_tokens=verdict.cached_tokens if verdict else 0,
            cost_usd=cost_usd,
            latency_s=latency_s,
            created_at=_dt.datetime.now(_dt.timezone.utc),
        )
        return row

    def write(self, rows: list[dict[str, Any]], name: str) -> None:
        path = self.run.write_shard(rows)
        if path is not None:
            self.shards.append(path.name)

    def cache_put(self, response: Mapping[str, Any], verdict: Verdict) -> None:
        if self.cache is not None:
            self.cache.put(cache_key(self.fingerprint, response["prompt"], list(response["steps"])), verdict)

    def cost(self, verdict: Verdict) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(verdict.input_tokens, verdict.cached_tokens, verdict.output_tokens)
