"""Self-consistency: N sampled critiques of one solution combined into one set of step scores.

A majority over 4–8 sampled critiques adds about 5 F1 to a critic (GenPRM, R-PRM; ProcessBench's
own voting mode samples 8). Here each sample is one ordinary request whose answer is kept (and
cached) on its own; this module only combines the answers:

* step judges (JSON answer): ``majority`` gives each step the score of its most common verdict
  (correct 1, neutral 0.5, incorrect 0; a tie goes to the LOWER score, so an error flagged by
  half the critics stays flagged), ``mean`` the mean of the stated (or logprob-calibrated)
  scores;
* the ProcessBench critic: the official rule, majority of the boxed strings
  (:func:`labeler.judges.processbench.majority_boxed`).

The combined ``raw`` keeps every sample's answer and its vote, for audit.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from labeler.judges.base import Verdict
from labeler.judges.processbench import (
    check_index,
    extract_boxed,
    majority_boxed,
    scores_from_index,
    to_index,
)
from labeler.judges.prompting import VERDICT_SCORE, AnswerError, parse_answer

VOTES = ("majority", "mean")


def majority_score(verdicts: list[str]) -> float:
    """The score of the most common verdict; ties go to the lower score."""
    counts = Counter(verdicts)
    top = max(counts.values())
    return min(VERDICT_SCORE[v] for v, c in counts.items() if c == top)


def vote_steps(samples: list[tuple[list[float], list[str]]], how: str) -> list[float]:
    """Per-step combination of (scores, verdicts) of each sample."""
    n = len(samples[0][0])
    if how == "mean":
        return [sum(s[k] for s, _ in samples) / len(samples) for k in range(n)]
    return [majority_score([v[k] for _, v in samples]) for k in range(n)]


def _record(i: int, v: Verdict, cached: bool, **extra: Any) -> dict[str, Any]:
    return {"sample": i, "cached": cached, "scores": v.scores, "error": v.error, **extra, "raw": v.raw}


def combine(samples: list[Verdict], cached: list[bool], n_steps: int, kind: str, how: str) -> Verdict:
    """One Verdict from the sample verdicts (already free of cut-off answers).

    Tokens are those of the samples asked now (cached samples cost nothing this time).
    """
    tokens = {k: sum(getattr(v, k) for v, c in zip(samples, cached, strict=True) if not c)
              for k in ("input_tokens", "output_tokens", "cached_tokens")}
    if kind == "first-error-index":
        boxed = [extract_boxed(v.raw) for v in samples]
        winner = majority_boxed(boxed)
        index = to_index(winner)
        records = [_record(i, v, c, boxed=b) for i, (v, c, b) in enumerate(zip(samples, cached, boxed, strict=True))]
        raw = json.dumps({"vote": "majority-boxed", "boxed": winner, "index": index, "samples": records},
                         ensure_ascii=False)
        why = check_index(index, winner, n_steps)
        if why is not None:
            return Verdict(scores=[None] * n_steps, raw=raw, error=f"{why} (majority of {len(samples)} samples)",
                           **tokens)
        return Verdict(scores=scores_from_index(index, n_steps), raw=raw, **tokens)
    parsed, records = [], []
    for i, (v, c) in enumerate(zip(samples, cached, strict=True)):
        try:
            _, verdicts = parse_answer(json.loads(v.raw), n_steps)
        except (AnswerError, ValueError) as exc:  # cannot happen for an answer that parsed once
            return Verdict(scores=[None] * n_steps, raw=v.raw, error=f"sample {i}: {exc}", **tokens)
        parsed.append((list(v.scores), verdicts))
        records.append(_record(i, v, c, verdicts=verdicts))
    scores = vote_steps(parsed, how)
    raw = json.dumps({"vote": how, "scores": scores, "samples": records}, ensure_ascii=False)
    return Verdict(scores=scores, raw=raw, **tokens)
