"""The numbers of an evaluation, as pure functions over per-problem results.

- accuracy: the mean of per-problem correctness of one answer per problem (greedy decoding).
- pass@k: the unbiased estimator of Chen et al. (2021, Codex): with n samples of which c are
  correct, 1 - C(n-c, k) / C(n, k), averaged over problems. Sampling k of n without replacement
  makes it exact for k <= n, unlike the plug-in (c/n)-based estimate.
- maj@k: the answer given most often among the first k samples (ties broken by the earliest
  sample, so the result is deterministic); correct when that answer is.
- paired bootstrap: resample problems with replacement and recompute the difference of two
  models' accuracies on the same problems; the percentile interval says whether the difference
  is larger than what the choice of problems alone would give.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct)
    is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i), the numerically stable form of the binomial ratio.
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: 1, powers of two below n, and n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def majority(answers: Sequence[str | None], keys: Sequence[str | None] | None = None) -> int | None:
    """Index of the first sample whose answer is the most frequent one (by ``keys``, e.g. a
    normalised form, when given); None when no sample has an answer."""
    keys = list(keys) if keys is not None else list(answers)
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    best = max(counts, key=lambda key: (counts[key], -first[key]))
    return first[best]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Difference of means ``mean(a) - mean(b)`` over the same problems, with a percentile
    interval from resampling problems (pairs kept together) and the share of resamples in
    which ``a`` is not better (a one-sided bootstrap p-value)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equally long, non-empty lists")
    n = len(a)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        stats.append(sum(diffs[rng.randrange(n)] for _ in range(n)) / n)
    stats.sort()
    lo_i = int(math.floor((1 - confidence) / 2 * resamples))
    hi_i = min(resamples - 1, int(math.ceil((1 + confidence) / 2 * resamples)) - 1)
    return {"difference": sum(diffs) / n, "low": stats[lo_i], "high": stats[hi_i], "confidence": confidence,
            "p_not_better": sum(s <= 0 for s in stats) / resamples, "problems": n, "resamples": resamples}
