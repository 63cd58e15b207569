"""The ProcessBench critic's answer: the earliest wrong paragraph's index in ``\\boxed{}``.

Read exactly as the official ``code/run_eval.py`` of QwenLM/ProcessBench reads it: the LAST
``\\boxed{...}`` (no nested braces), stripped, then ``int()``; anything else is no prediction.
Voting (``--samples N``) takes the most common boxed string among the samples that have one
(ties go to the one seen first, as ``Counter.most_common`` does) and only then converts it to
an int, as the official voting mode does.

The index becomes step scores: 1 before it, 0 at it, None after (the critic says nothing about
later paragraphs); -1 ("no error") gives 1 everywhere. An index outside ``-1..n-1`` is no
prediction: it cannot be a step of this solution.
"""

from __future__ import annotations

import re
from collections import Counter

_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (stripped), or None."""
    found = _BOXED.findall(text or "")
    return found[-1].strip() if found else None


def to_index(boxed: str | None) -> int | None:
    """``int(boxed)`` as Python reads it, or None."""
    if boxed is None:
        return None
    try:
        return int(boxed)
    except ValueError:
        return None


def scores_from_index(index: int, n_steps: int) -> list[float | None]:
    """1 before the earliest error, 0 at it, None after; all 1 for -1."""
    if index < 0:
        return [1.0] * n_steps
    return [1.0] * index + [0.0] + [None] * (n_steps - index - 1)


def check_index(index: int | None, boxed: str | None, n_steps: int) -> str | None:
    """Why ``index`` is no usable prediction for a solution of ``n_steps`` steps, or None."""
    if boxed is None:
        return "unparseable critique: no \\boxed{...} in the answer"
    if index is None:
        return f"unparseable critique: \\boxed{{{boxed[:40]}}} is not an integer"
    if not -1 <= index < n_steps:
        return f"unparseable critique: \\boxed{{{index}}} is outside -1..{n_steps - 1}"
    return None


def majority_boxed(boxed: list[str | None]) -> str | None:
    """The official voting rule: most common boxed string among the samples that have one."""
    present = [b for b in boxed if b is not None]
    return Counter(present).most_common(1)[0][0] if present else None
