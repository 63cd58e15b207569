"""`reference`: the source's own human step labels, written as a judge's scores.

PRM800K ships human ratings per step; passing them through the same engine gives a step_scores
file like any judge's, so human and model labels share one file format, one `inspect`, one
`pairs` and one trainer path. A row without labels is an error row (with the reason), not a row
of silent nulls: someone asking for human labels should see which rows have none.
"""

from __future__ import annotations

import json
import math
from typing import Any

from labeler.judges.base import Item, Judge, Verdict

REFERENCE_VERSION = 1


def check_reference(item: Item) -> Verdict:
    """The item's ``reference_scores`` as a Verdict, or a Verdict with ``error`` saying why not."""
    n = len(item.steps)
    scores = item.reference_scores
    if scores is None or len(scores) == 0:
        return Verdict(
            scores=[None] * n,
            error=f"response {item.response_id} has no reference_scores "
            "(the reference judge needs a source with human step labels, e.g. PRM800K)",
        )
    if len(scores) != n:
        return Verdict(
            scores=[None] * n,
            error=f"response {item.response_id} has {len(scores)} reference_scores for {n} steps",
        )
    out: list[float | None] = []
    for k, s in enumerate(scores):
        if s is not None and (not isinstance(s, (int, float)) or math.isnan(s) or not 0.0 <= s <= 1.0):
            return Verdict(
                scores=[None] * n,
                error=f"response {item.response_id} step {k}: reference score {s!r} is not in [0, 1]",
            )
        out.append(None if s is None else float(s))
    return Verdict(scores=out, raw=json.dumps({"source": "reference_scores"}))


class ReferenceJudge(Judge):
    """Free and instant; the engine still caches and shards its output like any judge's."""

    name = "reference"
    batch_size = 256
    price_model = None

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"version": REFERENCE_VERSION}

    def cache_inputs(self, item: Item) -> dict[str, Any] | None:
        scores = item.reference_scores
        # NaN is not JSON: keep it distinct in the key, as text (check_reference rejects it).
        return {"reference_scores": None if scores is None else
                [s if s is None or math.isfinite(s) else str(s) for s in scores]}

    async def judge(self, items: list[Item]) -> list[Verdict]:
        return [check_reference(item) for item in items]

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        return 0, 0


def make_reference(model: str, config: Any) -> ReferenceJudge:
    """Registry factory; ``reference`` takes no model and no options."""
    return ReferenceJudge()
