"""Step-DPO's rectify pairs: a wrong step against the policy's own correct version of it.

``stepdpo generate --continue-from RUN --at first-error`` samples continuations of each wrong
solution's correct prefix (the steps before its first error k) and records, in each new row's
meta, ``continues`` (the wrong solution's response_id) and ``prefix_len`` (k). Once those
continuations are labeled (``answer-match`` checks the final answer for free), this module pairs
each wrong solution B with a continuation C that reached the right answer:

* ``prefix_steps`` = B's first k steps (C starts with the very same steps),
* ``chosen`` = C's step k, ``rejected`` = B's step k (``continuation=rest``: C's and B's whole
  remainders from step k on).

C counts as correct when its own scores show no error (no step below ``threshold``) and at least
one step was scored — with ``answer-match``, its final step scored 1. Its unscored steps get
score 1 in the pair (the outcome vouches for them); B's scores are its judge's. Among several
correct continuations the one with the lowest sample index whose step k differs from B's is
taken, so reruns build the same pairs. B's run must locate errors step by step; the inputs may
therefore mix B's judge and the continuations' judge (each side is checked to be one judge).

A continuation of another wrong solution B' with the very same prefix (same k, same first k
steps) is a continuation of B's prefix too, and serves B when B has no correct one of its own
(B's own are tried first). This is not only a bonus: two continuations with the same text have
the same response_id (a hash of problem + steps), and ``label`` keeps one row per response_id,
so when B and B' share a prefix the labeled run often holds B's correct continuation only as
a continuation of B' (B then lost its pair).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from schemas.aggregate import first_error


def continuation_of(row: dict[str, Any]) -> tuple[str, int, int] | None:
    """(continued response_id, prefix length, sample index) of a continuation row, else None."""
    try:
        meta = json.loads(row.get("meta") or "{}")
    except (TypeError, ValueError):
        return None
    if not isinstance(meta, dict) or not meta.get("continues"):
        return None
    return str(meta["continues"]), int(meta.get("prefix_len") or 0), int(meta.get("sample_index") or 0)


def is_continuation(row: dict[str, Any]) -> bool:
    return continuation_of(row) is not None


def reached_answer(scores: Sequence[float | None] | None, threshold: float) -> bool:
    """No step scored below ``threshold`` and at least one step scored."""
    scores = list(scores or [])
    return any(s is not None for s in scores) and first_error(scores, threshold) == -1


def rectify_pairs(group: list[dict[str, Any]], cfg: Any, stats: Counter,
                  make_pair: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs of one problem's rows (wrong solutions + labeled continuations of their prefixes).

    ``make_pair(strategy, chosen_row, rejected_row, prefix, c_steps, r_steps, c_scores, r_scores,
    cfg, fingerprint)`` builds the pair row (labeler.pairs.build's layout).
    """
    conts: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    by_prefix: dict[tuple[int, tuple[str, ...]], list[tuple[int, dict[str, Any]]]] = {}
    for row in group:
        info = continuation_of(row)
        if info is not None:
            conts.setdefault(info[0], []).append((info[2], row))
            k = info[1]
            if len(row["steps"]) > k:
                by_prefix.setdefault((k, tuple(row["steps"][:k])), []).append((info[2], row))
    if not conts:
        return []
    out = []
    for bad in group:
        if is_continuation(bad):
            continue
        b_scores = list(bad["scores"] or [])
        e = first_error(b_scores, cfg.threshold)
        own = conts.get(bad["response_id"], [])
        mine = {id(row) for _, row in own}
        shared = [x for x in by_prefix.get((e, tuple(bad["steps"][:e])), []) if id(x[1]) not in mine] if e >= 0 else []
        if not own and not shared:
            continue
        if e < 0 or len(b_scores) != len(bad["steps"]):
            continue
        stats["rectify_wrong_solutions"] += 1
        end = e + 1 if cfg.continuation == "step" else None
        chosen = None
        # B's own continuations first, then those of other wrong solutions with B's exact prefix.
        candidates = sorted(own, key=lambda x: (x[0], x[1]["response_id"])) + \
            sorted(shared, key=lambda x: (x[0], x[1]["response_id"]))
        for _, c in candidates:
            info = continuation_of(c)
            if info is None or info[1] != e or list(c["steps"][:e]) != list(bad["steps"][:e]) or len(c["steps"]) <= e:
                stats["rectify_other_prefix"] += 1
                continue
            if not reached_answer(c["scores"], cfg.threshold):
                stats["rectify_wrong_continuations"] += 1
                continue
            if list(c["steps"][e:end]) == list(bad["steps"][e:end]):
                stats["rectify_same_step"] += 1
                continue
            chosen = c
            break
        if chosen is None:
            stats["rectify_no_correct_continuation"] += 1
            continue
        c_scores = [1.0 if s is None else s for s in list(chosen["scores"])[e:end]]
        fa, fb = chosen.get("judge_fingerprint"), bad.get("judge_fingerprint")
        out.append(make_pair("first-error", chosen, bad, list(bad["steps"][:e]), list(chosen["steps"][e:end]),
                             list(bad["steps"][e:end]), c_scores, b_scores[e:end], cfg,
                             fa if fa == fb else f"{fb}|{fa}"))
        stats["rectify_pairs"] += 1
    return out
