"""The pair strategies: rows of one problem → candidate pairs. One function per strategy,
registered by name in :data:`STRATEGIES` (a new strategy is one function and one line there).

Every function takes the rows of ONE problem (same ``problem_id`` and the same problem text),
the config and a stats counter, and returns pair rows built with :func:`make_pair`.
``build.build_pairs`` then moves the leading steps both sides share into ``prefix_steps``,
filters by margin and deduplicates, for every strategy alike.

``best-worst``
    The solution with the highest aggregated reward vs the one with the lowest. The steps both
    start with become ``prefix_steps``; chosen/rejected hold the rest.

``first-error`` (Step-DPO, Lai et al. 2024)
    A wrong solution B whose first error (first step scored below ``threshold``) is step e, and
    a solution G of the same problem whose first e steps are exactly B's and whose step e is
    scored correct. The shared steps go into ``prefix_steps`` (the prompt side). With
    ``continuation=step`` (the default, as in Step-DPO) chosen and rejected hold ONE step each:
    G's step e and B's step e, so the loss compares exactly the step where they diverge. With
    ``continuation=rest`` they hold everything from step e on, and G must be wholly correct.
    Rows where B's prefix does not match any G are counted (``no_partner``), never forced.
    Rectify pairs (:mod:`labeler.pairs.rectify`): when the inputs also hold labeled
    continuations of B's prefix (``stepdpo generate --continue-from``), B's step e is paired with
    step e of a continuation that reached the answer.

``prm800k-alternatives``
    PRM800K rates several alternative steps at the same prefix; each alternative rated 1 is
    paired with each rated -1 at that step, the response's steps before it being the prefix.
    The step the response took counts as one of the options (its rating is its reference
    score). Read from ``meta.alternatives`` of ingested rows (see :func:`alternatives_of`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from labeler.pairs.rectify import is_continuation, rectify_pairs
from schemas.aggregate import aggregate, first_error
from schemas.errors import UserError
from schemas.ids import pair_id

if TYPE_CHECKING:
    from labeler.pairs.build import PairsConfig

# PRM800K's human ratings on the [0, 1] scale of step scores (as ingest maps them).
RATING_SCORE = {-1: 0.0, 0: 0.5, 1: 1.0}
SCORE_RATING = {v: k for k, v in RATING_SCORE.items()}

Strategy = Callable[[list[dict[str, Any]], "PairsConfig", Counter], list[dict[str, Any]]]


def reward(scores: Sequence[float | None] | None, cfg: PairsConfig) -> float | None:
    """One side's reward: its stored step scores aggregated as ``cfg.aggregate`` says."""
    return aggregate(scores, cfg.aggregate, cfg.score_floor)


def _ok_score(s: float | None) -> bool:
    return s is not None and not math.isnan(s)


def _fingerprint(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    fa, fb = a.get("judge_fingerprint"), b.get("judge_fingerprint")
    return fa if fa == fb else f"{fa}|{fb}"


def make_pair(
    strategy: str,
    chosen: dict[str, Any],
    rejected: dict[str, Any],
    prefix: list[str],
    c_steps: list[str],
    r_steps: list[str],
    c_scores: list[float | None],
    r_scores: list[float | None],
    cfg: PairsConfig,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """A `pairs` row from the chosen and rejected source rows and the parts of each side.

    Both rows must be of one problem text: a pair across two problems teaches nonsense (the
    ingest of an id reused for two problems once paired "What is 1+1?" with a 7×8 solution).
    """
    if chosen["prompt"] != rejected["prompt"]:
        raise UserError(
            f"problem {chosen.get('problem_id')!r}: a '{strategy}' pair would join two different "
            f"problem texts ({chosen['prompt'][:40]!r} and {rejected['prompt'][:40]!r}); fix the "
            "problem ids of the input"
        )
    if fingerprint is None:
        fingerprint = _fingerprint(chosen, rejected)
    return {
        "pair_id": pair_id(chosen["prompt"], prefix, c_steps, r_steps),
        "problem_id": chosen.get("problem_id"),
        "prompt": chosen["prompt"],
        "prefix_steps": prefix,
        "chosen_steps": c_steps,
        "rejected_steps": r_steps,
        "chosen_scores": c_scores,
        "rejected_scores": r_scores,
        "chosen_reward": reward(c_scores, cfg),
        "rejected_reward": reward(r_scores, cfg),
        "strategy": strategy,
        "judge_fingerprint": fingerprint,
        "chosen_response_id": chosen["response_id"],
        "rejected_response_id": rejected["response_id"],
    }


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):  # noqa: B905 - lengths differ on purpose
        if x != y:
            break
        n += 1
    return n


def share_prefix(p: dict[str, Any], cfg: PairsConfig) -> dict[str, Any]:
    """Move the leading steps chosen and rejected share verbatim into ``prefix_steps``.

    In DPO a token both sides share cancels; under per-step weights it does not (the two sides
    weigh it differently), so a step both sides share would be trained on. In the prompt it is
    context only. Each side keeps at least one step. The shared steps' scores are dropped and
    the rewards re-aggregated from the stored scores, so a row stays self-consistent: its
    rewards are its scores aggregated with pairs.json's ``aggregation``.
    """
    c, r = p["chosen_steps"], p["rejected_steps"]
    k = min(common_prefix(c, r), len(c) - 1, len(r) - 1)
    if k <= 0:
        return p
    c_scores, r_scores = list(p["chosen_scores"] or [])[k:], list(p["rejected_scores"] or [])[k:]
    prefix = list(p["prefix_steps"]) + list(c[:k])
    return {
        **p,
        "pair_id": pair_id(p["prompt"], prefix, c[k:], r[k:]),
        "prefix_steps": prefix,
        "chosen_steps": list(c[k:]),
        "rejected_steps": list(r[k:]),
        "chosen_scores": c_scores,
        "rejected_scores": r_scores,
        "chosen_reward": reward(c_scores, cfg),
        "rejected_reward": reward(r_scores, cfg),
    }


def best_worst(group: list[dict[str, Any]], cfg: PairsConfig, stats: Counter) -> list[dict[str, Any]]:
    scored = []
    for r in group:
        value = reward(r["scores"] or [], cfg)
        if value is None:
            stats["skipped_no_reward"] += 1
            continue
        scored.append((value, r))
    if len(scored) < 2:
        return []
    # Ties broken by response_id so the choice never depends on input order.
    best = max(scored, key=lambda x: (x[0], x[1]["response_id"]))[1]
    worst = min(scored, key=lambda x: (x[0], x[1]["response_id"]))[1]
    if list(best["steps"]) == list(worst["steps"]):  # one solution scored by two judges
        return []
    return [
        make_pair(
            "best-worst", best, worst, [], list(best["steps"]), list(worst["steps"]),
            list(best["scores"] or []), list(worst["scores"] or []), cfg, _fingerprint(best, worst),
        )
    ]


def first_error_pairs(
    group: list[dict[str, Any]], cfg: PairsConfig, stats: Counter
) -> list[dict[str, Any]]:
    """One pair per wrong solution that has a partner sharing its prefix up to the error."""
    info = []
    for r in group:
        scores = list(r["scores"] or [])
        if len(scores) != len(r["steps"]):
            stats["skipped_score_count_mismatch"] += 1
            continue
        info.append((r, scores, first_error(scores, cfg.threshold)))
    out = []
    for bad, b_scores, e in info:
        if e < 0:
            continue
        stats["wrong_solutions"] += 1
        candidates = []
        for good, g_scores, g_err in info:
            if good is bad or len(good["steps"]) <= e:
                continue
            if cfg.continuation == "rest" and g_err != -1:
                continue
            if not _ok_score(g_scores[e]) or g_scores[e] < cfg.threshold:
                continue
            if common_prefix(good["steps"], bad["steps"]) != e:
                continue
            # Prefer a wholly correct partner, then the best rewarded one, then a fixed order.
            value = reward(g_scores, cfg)
            key = (g_err != -1, -(value if value is not None else -1.0), good["response_id"])
            candidates.append((key, good, g_scores))
        if not candidates:
            stats["no_partner"] += 1
            continue
        _, good, g_scores = min(candidates, key=lambda c: c[0])
        end = e + 1 if cfg.continuation == "step" else None
        out.append(
            make_pair(
                "first-error", good, bad, list(bad["steps"][:e]),
                list(good["steps"][e:end]), list(bad["steps"][e:end]),
                g_scores[e:end], b_scores[e:end], cfg, _fingerprint(good, bad),
            )
        )
    return out


def alternatives_of(row: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Every rated option at each step: the step the response took plus its alternatives.

    `stepdpo ingest prm800k` stores the completions NOT taken at step k as
    ``meta["alternatives"] = [{"step": k, "text": ..., "rating": -1|0|1|null, "flagged": ...}]``
    (PRM800K's own field names); the taken step is ``steps[k]`` with its rating in
    ``reference_scores[k]`` (1.0 / 0.5 / 0.0). A per-step list of lists is accepted too.
    Flagged completions are left out: PRM800K's labelers marked them as questionable.
    """
    steps = list(row["steps"])
    per_step: list[list[dict[str, Any]]] = [[] for _ in steps]
    refs = list(row.get("reference_scores") or [])
    for k, step in enumerate(steps):
        rating = SCORE_RATING.get(refs[k]) if k < len(refs) else None
        if rating is not None:
            per_step[k].append({"text": step, "rating": rating})
    try:
        meta = json.loads(row.get("meta") or "{}")
    except json.JSONDecodeError:
        return per_step
    alts = meta.get("alternatives") if isinstance(meta, dict) else None
    if not isinstance(alts, list):
        return per_step
    for k, item in enumerate(alts):
        options = item if isinstance(item, list) else [item]
        for a in options:
            if not isinstance(a, dict) or a.get("flagged"):
                continue
            step = a.get("step", k if isinstance(item, list) else None)
            if isinstance(step, int) and 0 <= step < len(steps):
                per_step[step].append(a)
    return per_step


def prm800k_pairs(group: list[dict[str, Any]], cfg: PairsConfig, stats: Counter) -> list[dict[str, Any]]:
    """Rating 1 vs rating -1 among the options at the same step of the same response."""
    out = []
    for row in group:
        made = 0
        for i, options in enumerate(alternatives_of(row)):
            good = [a for a in options if a.get("rating") == 1 and isinstance(a.get("text"), str)]
            bad = [a for a in options if a.get("rating") == -1 and isinstance(a.get("text"), str)]
            for g in good:
                for b in bad:
                    if g["text"] == b["text"]:
                        continue
                    made += 1
                    out.append(
                        make_pair(
                            "prm800k-alternatives", row, row, list(row["steps"][:i]),
                            [g["text"]], [b["text"]], [RATING_SCORE[1]], [RATING_SCORE[-1]],
                            cfg, row.get("judge_fingerprint"),
                        )
                    )
        if not made:
            stats["no_rated_alternatives"] += 1
    return out


def first_error_with_rectify(group: list[dict[str, Any]], cfg: PairsConfig, stats: Counter) -> list[dict[str, Any]]:
    """Step-DPO's rectify pairs (a wrong solution vs a correct continuation of its prefix, see
    :mod:`labeler.pairs.rectify`), then first-error pairs among the other rows."""
    return rectify_pairs(group, cfg, stats, make_pair) + first_error_pairs(
        [r for r in group if not is_continuation(r)], cfg, stats)


STRATEGIES: dict[str, Strategy] = {
    "first-error": first_error_with_rectify,
    "best-worst": best_worst,
    "prm800k-alternatives": prm800k_pairs,
}
