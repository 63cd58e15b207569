"""Synthetic step tasks for reward-model tests, designed so that correctness IS visible to a
tiny model (see `digit_task`).

A tiny randomly initialised transformer cannot check real arithmetic in a few hundred steps
(we tried: ``a + b = c`` over single digits stays at the base rate after 200 steps), so a test
that asked it to would prove nothing but its own flakiness. What the tests must prove is that
the pipeline is right: the label of step k reaches the separator after step k (not k±1), the
loss is read there, the head is saved in the released layout and read back by the judge.
"""

from __future__ import annotations

import random
from pathlib import Path

from schemas.ids import response_id
from schemas.tables import RESPONSES, from_rows, write_table

ALLOWED = set(range(5))  # a step is correct iff its digit is one of these


def digit_task(n: int, seed: int = 0, p_correct: float = 0.6) -> list[dict]:
    """``n`` responses of 2-4 steps "use D" with D a digit; a step is correct iff D < 5.

    Why a 2-layer, 64-wide model learns it: the label is a function of ONE token of the step,
    four tokens before its separator (one attention hop). Why it still tests the pipeline:
    steps are drawn independently, so a label attached one step off, or read at any position
    but the step's own separator, is uncorrelated with what the model sees and the held-out
    AUC stays near 0.5. The outcome label (every step correct) needs the model to look at
    all the steps of the solution, as an ORM must.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = [], []
        for _ in range(rng.randint(2, 4)):
            ok = rng.random() < p_correct
            digit = rng.choice(sorted(ALLOWED) if ok else sorted(set(range(10)) - ALLOWED))
            steps.append(f"use {digit}")
            labels.append(1.0 if ok else 0.0)
        prompt = f"Problem {i}: pick small digits."
        rows.append({"response_id": response_id(prompt, steps), "problem_id": f"p{i}",
                     "source": "synthetic", "prompt": prompt, "steps": steps, "final_answer": None,
                     "gold_answer": None, "reference_scores": labels, "meta": None})
    return rows


def write_responses(rows: list[dict], path: Path) -> Path:
    write_table(from_rows(rows, RESPONSES), path, RESPONSES)
    return path
