"""Conversions from our rows to the formats TRL and `datasets` users already know.

The prompt/completion text layout lives here, once, so that the pairs writer, the trainer's
step alignment and these converters cannot disagree about where one step ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from schemas.aggregate import DEFAULT_STEP_THRESHOLD

DEFAULT_SEPARATOR = "\n"


def format_prompt(prompt: str, prefix_steps: Sequence[str] = (), sep: str = DEFAULT_SEPARATOR) -> str:
    """The prompt side of a pair: the problem, then the shared prefix steps, each closed by ``sep``.

    A first-error pair moves its shared correct prefix here, so the completions start at the
    step where chosen and rejected diverge.
    """
    return prompt + sep + "".join(step + sep for step in prefix_steps)


def format_completion(steps: Sequence[str], sep: str = DEFAULT_SEPARATOR) -> str:
    """Steps joined by ``sep``; no trailing separator (the trainer decides about EOS)."""
    return sep.join(steps)


def step_char_spans(steps: Sequence[str], sep: str = DEFAULT_SEPARATOR) -> list[tuple[int, int]]:
    """Character span of each step inside :func:`format_completion`'s text.

    A separator belongs to the step it follows, so the spans tile the whole completion: every
    character maps to exactly one step.
    """
    spans = []
    pos = 0
    for k, step in enumerate(steps):
        end = pos + len(step) + (len(sep) if k < len(steps) - 1 else 0)
        spans.append((pos, end))
        pos = end
    return spans


def pair_to_preference(row: Mapping[str, Any], sep: str = DEFAULT_SEPARATOR) -> dict[str, str]:
    """A `pairs` row as TRL's explicit-prompt preference row (prompt / chosen / rejected)."""
    return {
        "prompt": format_prompt(row["prompt"], row.get("prefix_steps") or (), sep),
        "chosen": format_completion(row["chosen_steps"], sep),
        "rejected": format_completion(row["rejected_steps"], sep),
    }


def _labels(scores: Sequence[float | None] | None, n: int, threshold: float) -> list[bool | None]:
    scores = list(scores) if scores is not None else [None] * n
    return [None if s is None else bool(s >= threshold) for s in scores]


def scores_to_stepwise_supervision(
    row: Mapping[str, Any], threshold: float = DEFAULT_STEP_THRESHOLD, field: str = "scores"
) -> dict[str, Any]:
    """A `step_scores` (or `responses`, with ``field="reference_scores"``) row as TRL's
    stepwise-supervision row: prompt / completions (the steps) / labels (bool per step).

    Unscored steps get a None label; drop or fill them as your PRM trainer needs.
    """
    steps = list(row["steps"])
    return {
        "prompt": row["prompt"],
        "completions": steps,
        "labels": _labels(row.get(field), len(steps), threshold),
    }


def pair_to_stepwise_supervision(
    row: Mapping[str, Any], threshold: float = DEFAULT_STEP_THRESHOLD
) -> list[dict[str, Any]]:
    """Both sides of a `pairs` row as stepwise-supervision rows; prefix steps are labelled True
    (they are the shared correct prefix)."""
    prefix = list(row.get("prefix_steps") or [])
    out = []
    for side in ("chosen", "rejected"):
        steps = list(row[f"{side}_steps"])
        out.append(
            {
                "prompt": row["prompt"],
                "completions": prefix + steps,
                "labels": [True] * len(prefix)
                + _labels(row.get(f"{side}_scores"), len(steps), threshold),
            }
        )
    return out
