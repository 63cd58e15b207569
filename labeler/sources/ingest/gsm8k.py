"""GSM8K → `responses`: the reference solutions as step-by-step responses.

A GSM8K record is ``{"question": ..., "answer": ...}`` where the answer's last line is
``#### N``. The steps are the non-blank lines before it (the ``lines`` splitter), kept with
their ``<<expr=result>>`` calculator notes because the ``gsm8k-calc`` judge checks them. N with
its thousands commas stripped is both the final answer and the gold answer.
"""

from __future__ import annotations

from typing import Any

from labeler.sources.ingest.common import Record, RecordError, make_row, text_field
from labeler.sources.splitters import get_splitter

SOURCE = "gsm8k"
_LINES = get_splitter("lines")


def parse_answer(answer: str) -> tuple[str, str]:
    """``(solution text, final answer)`` of a GSM8K answer; the marker line must be last."""
    body, marker, final = answer.rpartition("####")
    if not marker:
        raise RecordError("field 'answer' has no '#### N' final-answer line")
    if body and not body.endswith("\n"):
        raise RecordError("field 'answer': '####' must start the last line")
    final = final.strip().replace(",", "")
    if not final:
        raise RecordError("field 'answer' has an empty final answer after '####'")
    if "\n" in final:
        raise RecordError("field 'answer' has text after the '#### N' line")
    return body, final


def to_row(record: Record) -> dict[str, Any]:
    question = text_field(record.value, "question")
    answer = text_field(record.value, "answer")
    body, final = parse_answer(answer)
    if not body.strip():
        raise RecordError("the solution is empty (no lines before '####')")
    steps = _LINES.split(body)
    return make_row(
        prompt=question,
        steps=steps,
        source=SOURCE,
        final_answer=final,
        gold_answer=final,
        meta={"origin": record.where},
    )
