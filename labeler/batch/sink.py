"""The run folder side of batch mode, built from the online engine's own pieces.

Rows are made by :func:`labeler.engine.runner.build_row` and go into the same ``step_scores`` shards
through :class:`labeler.engine.rundir.RunDir` (so its resume rule and compaction cover batch rows
too); answers go into the same :class:`labeler.engine.cache.JudgeCache` under the same keys; costs
come from the same price table (the runner applies the batch discount).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labeler.engine.cache import JudgeCache, cache_key
from labeler.engine.pricing import Price
from labeler.engine.rundir import RunDir
from labeler.engine.runner import build_row, verdict_cost
from labeler.judges.base import Item, Judge, Verdict


class RunSink:
    """Implements :class:`labeler.batch.collect.Sink` on a run folder and a judge cache."""

    def __init__(self, run: RunDir, judge: Judge, cache: JudgeCache | None, price: Price | None) -> None:
        self.run = run
        self.judge = judge
        self.fingerprint = judge.fingerprint()
        self.cache = cache
        self.price = price
        self.shards: list[str] = []

    @property
    def priced(self) -> bool:
        return self.price is not None

    def row(self, response: Mapping[str, Any], verdict: Verdict | None, error: str | None,
            cost_usd: float | None, latency_s: float) -> dict[str, Any]:
        return build_row(dict(response), self.judge, verdict=verdict, error=error, attempts=1,
                         cost=cost_usd, latency=latency_s)

    def write(self, rows: list[dict[str, Any]], name: str) -> None:
        path = self.run.write_shard(rows)
        if path is not None:
            self.shards.append(path.name)

    def cache_put(self, response: Mapping[str, Any], verdict: Verdict) -> None:
        if self.cache is not None:
            inputs = self.judge.cache_inputs(Item.from_row(response))
            self.cache.put(cache_key(self.fingerprint, response["prompt"], list(response["steps"]), inputs), verdict)

    def cost(self, verdict: Verdict) -> float | None:
        return verdict_cost(verdict, self.price)
