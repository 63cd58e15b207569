"""Grade a folder of sampled solutions (from `stepdpo generate`) against the gold answers.

One result per problem: each sample's stated answer and whether it is right (the answer checker
of :mod:`labeler.answers`: the GSM8K numeric rule, then math-verify, never raising), the
majority answer, and the counts pass@k needs. A sample the generator never wrote (an empty
answer, or a request that failed and was not retried yet) counts as wrong and is reported as
missing, so a flaky server cannot raise a model's score by dropping its hard problems.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from labeler.answers import answer_of_steps, check_answer, numeric_value
from labeler.evaluation.metrics import ks_for, majority, mean, pass_at_k


@dataclass
class ProblemResult:
    problem_id: str
    prompt: str
    gold_answer: str | None
    answers: list[str | None] = field(default_factory=list)  # by sample index; None: no answer
    correct: list[bool] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    missing: int = 0
    majority_answer: str | None = None
    majority_correct: bool = False

    def as_row(self) -> dict[str, Any]:
        return {"problem_id": self.problem_id, "prompt": self.prompt, "gold_answer": self.gold_answer,
                "n": len(self.correct), "num_correct": sum(self.correct), "answers": self.answers,
                "correct": self.correct, "finish_reasons": self.finish_reasons, "missing": self.missing,
                "majority_answer": self.majority_answer, "majority_correct": self.majority_correct}


def _answer_key(answer: str | None) -> str | None:
    """A normalised form for voting: numbers by value (so 1,000 and 1000.0 agree), text trimmed."""
    if answer is None or not answer.strip():
        return None
    value = numeric_value(answer)
    return f"#{value}" if value is not None else " ".join(answer.split())


def grade(rows: Iterable[dict[str, Any]], problems: Sequence[dict[str, Any]], n: int) -> list[ProblemResult]:
    """Per-problem results for ``problems`` (dicts with problem_id, prompt, gold_answer) from the
    sampled ``rows`` (responses dicts whose meta has ``sample_index``), ``n`` samples each."""
    by_problem: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        meta = json.loads(row.get("meta") or "{}")
        index = meta.get("sample_index")
        if index is None or not 0 <= int(index) < n:
            continue
        by_problem[row["problem_id"]][int(index)] = {**row, "_finish": meta.get("finish_reason")}
    out = []
    for p in problems:
        result = ProblemResult(p["problem_id"], p["prompt"], p.get("gold_answer"))
        samples = by_problem.get(p["problem_id"], {})
        for i in range(n):
            row = samples.get(i)
            if row is None:
                result.answers.append(None)
                result.correct.append(False)
                result.finish_reasons.append(None)
                result.missing += 1
                continue
            answer = answer_of_steps(list(row["steps"]), row.get("final_answer"))
            result.answers.append(answer)
            result.correct.append(check_answer(answer, p.get("gold_answer")).correct is True)
            result.finish_reasons.append(row["_finish"])
        best = majority(result.answers, [_answer_key(a) for a in result.answers])
        if best is not None:
            result.majority_answer = result.answers[best]
            result.majority_correct = result.correct[best]
        out.append(result)
    return out


def summarize(results: Sequence[ProblemResult], n: int) -> dict[str, Any]:
    """Accuracy (the first sample: the greedy one when sampling at temperature 0), pass@k and
    maj@k over the problems."""
    if not results:
        return {"problems": 0}
    summary: dict[str, Any] = {
        "problems": len(results), "samples_per_problem": n,
        "accuracy": mean([float(r.correct[0]) for r in results]),
        "mean_sample_accuracy": mean([sum(r.correct) / n for r in results]),
        "missing_samples": sum(r.missing for r in results),
        "cut_off_samples": sum(f == "length" for r in results for f in r.finish_reasons),
        "no_answer_samples": sum(a is None for r in results for a in r.answers),
    }
    if n > 1:
        summary["pass_at_k"] = {str(k): mean([pass_at_k(n, sum(r.correct), k) for r in results])
                                for k in ks_for(n)}
        summary["maj_at_k"] = {str(n): mean([float(r.majority_correct) for r in results])}
    return summary
