"""`answer-match`: a free outcome judge — is the response's final answer the gold one?

Policy samples and continuations come with their problem's gold answer, so whether they end
right is known without a model: this judge labels them for nothing, through the same engine,
cache and shards as every other judge. It knows only the outcome, so it scores the final step
(1 right, 0 wrong or no answer stated, e.g. cut off) and leaves the others null; ``--fill all``
writes the outcome on every step (an outcome-reward view for pairs and reward models).

Because it cannot say *where* a wrong solution goes wrong, its runs locate no first error:
``stepdpo generate --continue-from`` refuses them. Answers are checked by
:mod:`labeler.answers` (GSM8K numeric rule, then math-verify); ``raw`` records the answer, the
gold one, the rule that decided and why. A response without a gold answer is an error row.
"""

from __future__ import annotations

import json
from typing import Any

from labeler.answers import ANSWERS_VERSION, answer_of_steps, check_answer, math_verify_version
from labeler.judges.base import Item, Judge, Verdict
from schemas.errors import UserError

ANSWER_MATCH_VERSION = 1
FILL_CHOICES = ("last", "all")


def match_verdict(item: Item, fill: str = "last") -> Verdict:
    """The outcome of ``item`` as per-step scores (see the module docstring)."""
    n = len(item.steps)
    answer = answer_of_steps(item.steps, item.final_answer)
    check = check_answer(answer, item.gold_answer)
    raw = json.dumps({"answer": answer, "gold": item.gold_answer, "correct": check.correct,
                      "method": check.method, "detail": check.detail}, ensure_ascii=False)
    if check.correct is None:
        return Verdict(scores=[None] * n, raw=raw,
                       error=f"response {item.response_id} has no gold_answer (answer-match needs one)")
    score = 1.0 if check.correct else 0.0
    scores: list[float | None] = [score] * n if fill == "all" else [None] * (n - 1) + [score]
    return Verdict(scores=scores, raw=raw)


class AnswerMatchJudge(Judge):
    """Rule-based and instant; batches are large and the engine caches it like any judge."""

    name = "answer-match"
    batch_size = 64
    price_model = None
    #: Knows only whether the final answer is right, not which step went wrong.
    outcome_only = True

    def __init__(self, fill: str = "last") -> None:
        if fill not in FILL_CHOICES:
            raise UserError(f"--fill must be one of {', '.join(FILL_CHOICES)}, not {fill!r}")
        self.fill = fill

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"version": ANSWER_MATCH_VERSION, "answers_version": ANSWERS_VERSION,
                "math_verify": math_verify_version(), "fill": self.fill}

    def cache_inputs(self, item: Item) -> dict[str, Any] | None:
        return {"gold_answer": item.gold_answer, "final_answer": item.final_answer}

    async def judge(self, items: list[Item]) -> list[Verdict]:
        return [match_verdict(item, self.fill) for item in items]

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        return 0, 0


def make_answer_match(model: str, config: Any) -> AnswerMatchJudge:
    """Registry factory; ``answer-match`` takes no model; ``--fill last|all``."""
    if model:
        raise UserError(f"judge 'answer-match' takes no model (got 'answer-match:{model}')")
    return AnswerMatchJudge(getattr(config, "fill", "last"))
