"""Step scores → one solution reward.

Pure Python on purpose: the labeler (pairs) and the trainer (margins, soft labels) must agree
on these numbers, and the trainer may not import the labeler. Null scores (steps the judge did
not score) are skipped; a solution with no scored step has no reward (None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

AGGREGATIONS = (
    "product",
    "min",
    "last",
    "mean",
    "weighted_sum",
    "harmonic_mean",
    "geometric_mean",
)

DEFAULT_FLOOR = 1e-6

# A step scored below this is an error: the one default shared by `pairs` (first-error),
# `inspect`, the stepwise-supervision conversion and the trainer's first-error metric.
# `stepdpo pairs` records the value it used in pairs.json ("step_threshold").
DEFAULT_STEP_THRESHOLD = 0.5


def _clip(x: float, floor: float) -> float:
    return min(max(x, floor), 1.0 - floor) if floor > 0 else x


def _product(xs: list[float], floor: float) -> float:
    # Lightman et al.: P(every step correct) under independence.
    return math.prod(xs)


def _weighted_sum(xs: list[float], floor: float) -> float:
    # Later steps weigh more (w_k ∝ k+1): an error late in a long solution still ruins it,
    # while early steps are usually the easy restatements of the problem.
    weights = [k + 1 for k in range(len(xs))]
    return sum(w * x for w, x in zip(weights, xs, strict=True)) / sum(weights)


def _harmonic(xs: list[float], floor: float) -> float:
    return len(xs) / sum(1.0 / _clip(x, floor) for x in xs)


def _geometric(xs: list[float], floor: float) -> float:
    return math.exp(sum(math.log(_clip(x, floor)) for x in xs) / len(xs))


_FUNCS: dict[str, Callable[[list[float], float], float]] = {
    "product": _product,
    "min": lambda xs, f: min(xs),
    "last": lambda xs, f: xs[-1],
    "mean": lambda xs, f: sum(xs) / len(xs),
    "weighted_sum": _weighted_sum,
    "harmonic_mean": _harmonic,
    "geometric_mean": _geometric,
}


def aggregate(
    scores: Sequence[float | None] | None, how: str = "product", floor: float = DEFAULT_FLOOR
) -> float | None:
    """Aggregate per-step scores in [0, 1] into a solution reward in [0, 1].

    ``floor`` keeps logs and reciprocals finite for harmonic and geometric means; it does not
    change ``product``, ``min``, ``last``, ``mean`` or ``weighted_sum``.
    """
    if how not in _FUNCS:
        raise ValueError(f"unknown aggregation '{how}'; choose one of {', '.join(AGGREGATIONS)}")
    if scores is None:
        return None
    xs = [float(x) for x in scores if x is not None and not math.isnan(x)]
    if not xs:
        return None
    return float(_FUNCS[how](xs, floor))


def first_error(
    scores: Sequence[float | None] | None, threshold: float = DEFAULT_STEP_THRESHOLD
) -> int:
    """Index of the first step scored below ``threshold``; -1 if none (ProcessBench convention).

    Null scores are not errors: the judge said nothing about that step.
    """
    for i, s in enumerate(scores or []):
        if s is not None and not math.isnan(s) and s < threshold:
            return i
    return -1
