"""``--max-cost USD``: a labeling run that stops before its spend passes a cap.

The cap is on the run folder's spend: what earlier runs in the folder spent (their ``cost_usd``
in ``run.json``) plus what this run has spent, plus what the requests now in flight may cost.
Before each request the engine asks :meth:`Budget.reserve` for that request's share: an upper
estimate from the judge's token estimate, or the dearest request seen so far if that is more.
If granting it could pass the cap, the run stops cleanly: no new request starts, those in flight
finish and are written, and the rows not reached stay to do. A rerun with a higher cap continues
where this one stopped; a rerun with the same cap stops at once, having nothing left to spend.

Overshoot is bounded by how far one request's real cost exceeds its reservation (which, after
the first answers, is the dearest request seen).
"""

from __future__ import annotations

from labeler.engine.pricing import Price
from schemas.errors import UserError


class BudgetReached(Exception):
    """Raised instead of sending a request that the budget cannot cover."""


class Budget:
    def __init__(self, cap: float, price: Price | None, spent_before: float = 0.0, *, model: str | None = None) -> None:
        if cap <= 0:
            raise UserError("--max-cost must be a positive amount in USD")
        if price is None:
            raise UserError(f"--max-cost needs the price of {model or 'the judge model'}: pass --prices FILE")
        self.cap = cap
        self.price = price
        self.spent_before = spent_before
        self.in_flight = 0.0
        self.dearest = 0.0
        self.reason: str | None = None

    def reserve(self, input_tokens: int, output_tokens: int, spent_now: float) -> float:
        """The amount held for one request; BudgetReached if the cap cannot cover it."""
        if self.reason is not None:
            raise BudgetReached(self.reason)
        hold = max(self.price.cost(input_tokens, 0, output_tokens), self.dearest)
        spent = self.spent_before + spent_now
        if spent + self.in_flight + hold > self.cap:
            self.reason = (f"--max-cost ${self.cap:.4f} reached: ${spent:.4f} spent in this folder, "
                           f"${self.in_flight:.4f} in flight, the next request ~${hold:.4f}")
            raise BudgetReached(self.reason)
        self.in_flight += hold
        return hold

    def release(self, hold: float, actual: float | None = None) -> None:
        """A request ended; ``actual`` is what it cost when it answered."""
        self.in_flight = max(0.0, self.in_flight - hold)
        if actual is not None:
            self.dearest = max(self.dearest, actual)


def folder_spend(manifest: dict | None) -> float:
    """What earlier runs of a folder spent, from its ``run.json``."""
    return sum(run.get("cost_usd") or 0.0 for run in (manifest or {}).get("runs", []))
