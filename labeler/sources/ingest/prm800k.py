"""PRM800K phase 1 / phase 2 label files → `responses` with human step labels.

Format: the README of github.com/openai/prm800k. Each line is one labeled solution:
``question{problem, ground_truth_answer, pre_generated_answer, ...}`` and
``label{steps[{completions[{text, rating, flagged}], human_completion, chosen_completion}],
total_time, finish_reason}`` plus ``labeler``, ``timestamp``, ``generation``,
``is_quality_control_question`` and ``is_initial_screening_question``.

The trajectory follows ``chosen_completion``, or ``human_completion`` where a phase-1 labeler
wrote their own step (by design a +1 step). In phase 2 labeling stops at the first error, and
that step has ``chosen_completion: null`` and no human completion: we take its rated completion
(the first one rated -1, else the first one) so that the erroneous step is kept — dropping it
would turn a solution with a known error into one that looks correct.

Ratings -1/0/+1 become reference scores 0/0.5/1 (a missing rating stays null). Every line is
one human annotation and stays its own row: its response id covers the labeler, the timestamp
and the labels, so two labelers rating one solution give two rows (the summary counts them). The rated
alternatives at each step (same prefix, different next step: natural step-level pairs), the
finish reason, the QC/screening flags and the generator's own answer go into ``meta``.
"""

from __future__ import annotations

from typing import Any

from labeler.sources.ingest.common import Record, RecordError, get_field, make_row, text_field

SOURCE = "prm800k"
RATING_TO_SCORE = {-1: 0.0, 0: 0.5, 1: 1.0}
HUMAN_STEP_SCORE = 1.0  # phase-1 labelers wrote their own step only as a correct (+1) step
ANSWER_MARKER = "# Answer"


def rating_score(rating: Any, where: str) -> float | None:
    if rating is None:
        return None
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or rating not in RATING_TO_SCORE:
        raise RecordError(f"{where}: rating {rating!r} is not -1, 0, 1 or null")
    return RATING_TO_SCORE[int(rating)]


def _completion(c: Any, where: str) -> dict[str, Any]:
    if not isinstance(c, dict):
        raise RecordError(f"{where} must be an object")
    text = c.get("text")
    if not isinstance(text, str):
        raise RecordError(f"{where}.text must be a string")
    return {"text": text, "rating": c.get("rating"), "flagged": c.get("flagged")}


def answer_of(step_text: str) -> str | None:
    """The generator's final answer: the text after a ``# Answer`` heading in the last step."""
    head, marker, tail = step_text.rpartition(ANSWER_MARKER)
    if not marker or (head and not head.endswith("\n")):
        return None
    return tail.strip() or None


def to_row(record: Record) -> dict[str, Any]:
    obj = record.value
    problem = text_field(obj, "question.problem")
    gold = text_field(obj, "question.ground_truth_answer", required=False)
    label = get_field(obj, "label")
    if not isinstance(label, dict):
        raise RecordError("field 'label' must be an object")
    raw_steps = get_field(label, "steps")
    if not isinstance(raw_steps, list):
        raise RecordError("field 'label.steps' must be a list")
    if not raw_steps:
        reason = label.get("finish_reason")
        raise RecordError(f"the solution is empty (label.steps is empty; finish_reason={reason!r})")

    steps: list[str] = []
    scores: list[float | None] = []
    origins: list[str] = []
    alternatives: list[dict[str, Any]] = []
    flagged: list[int] = []
    for k, st in enumerate(raw_steps):
        where = f"label.steps[{k}]"
        if not isinstance(st, dict):
            raise RecordError(f"{where} must be an object")
        comps = st.get("completions") or []
        if not isinstance(comps, list):
            raise RecordError(f"{where}.completions must be a list")
        comps = [_completion(c, f"{where}.completions[{i}]") for i, c in enumerate(comps)]
        chosen = st.get("chosen_completion")
        human = st.get("human_completion")
        taken: int | None = None
        if chosen is not None:
            if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(comps):
                raise RecordError(f"{where}.chosen_completion {chosen!r} is not an index into its {len(comps)} completion(s)")
            taken = chosen
            text, score = comps[chosen]["text"], rating_score(comps[chosen]["rating"], where)
            origins.append(f"completion:{chosen}")
        elif human is not None:
            text = human.get("text") if isinstance(human, dict) else human
            if not isinstance(text, str):
                raise RecordError(f"{where}.human_completion has no text")
            rated = human.get("rating") if isinstance(human, dict) else None
            score = rating_score(rated, where) if rated is not None else HUMAN_STEP_SCORE
            origins.append("human")
        elif comps:
            # Phase 2's found-error step: keep the step the labeler rated wrong.
            wrong = [i for i, c in enumerate(comps) if c["rating"] == -1]
            taken = wrong[0] if wrong else 0
            text, score = comps[taken]["text"], rating_score(comps[taken]["rating"], where)
            origins.append(f"unchosen:{taken}")
        else:
            raise RecordError(f"{where} has no completions, no chosen and no human completion")
        if not text.strip():
            raise RecordError(f"step {k + 1} of {len(raw_steps)} is empty")
        steps.append(text)
        scores.append(score)
        for i, c in enumerate(comps):
            if c["flagged"] and i == taken:
                flagged.append(k)
            if i != taken:
                alternatives.append(
                    {"step": k, "text": c["text"], "rating": c["rating"],
                     "score": rating_score(c["rating"], where), "flagged": c["flagged"]}
                )

    question = obj.get("question") or {}
    meta = {
        "origin": record.where,
        "labeler": obj.get("labeler"),
        "timestamp": obj.get("timestamp"),
        "generation": obj.get("generation"),
        "phase": 1 if obj.get("generation") is None else 2,
        "is_quality_control_question": obj.get("is_quality_control_question"),
        "is_initial_screening_question": obj.get("is_initial_screening_question"),
        "finish_reason": label.get("finish_reason"),
        "total_time": label.get("total_time"),
        "pre_generated_answer": question.get("pre_generated_answer"),
        "pre_generated_verifier_score": question.get("pre_generated_verifier_score"),
        "step_origin": origins,
        "flagged_steps": flagged,
        "alternatives": alternatives,
    }
    return make_row(
        prompt=problem,
        steps=steps,
        source=SOURCE,
        final_answer=answer_of(steps[-1]),
        gold_answer=gold,
        reference_scores=scores,
        meta=meta,
        # Two labelers (quality-control questions) rate one solution: two rows, two ids.
        annotation={"labeler": obj.get("labeler"), "timestamp": obj.get("timestamp")},
    )
