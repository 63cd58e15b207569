"""Any JSONL / JSON array / Parquet file → `responses`, through a column mapping.

The mapping names the fields (dotted names reach into nested objects, e.g.
``question.problem``): the problem text, and either a list of steps (``--steps-field``, kept as
the source's own steps) or one solution text and a splitter (``--response-field`` +
``--split``). Human labels can ride along into ``reference_scores``:

* ``first-error``: an integer, the index of the earliest wrong step, -1 when every step is
  right (the ProcessBench convention). Steps before it score 1, the step itself 0, and later
  steps null: after the first error the label says nothing about them.
* ``per-step``: a list with one value per step: a number in [0, 1], true/false, or null.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labeler.sources.ingest.common import (
    Record,
    RecordError,
    check_scores,
    get_field,
    make_row,
    stable_problem_id,
    text_field,
)
from labeler.sources.splitters import SplitError, get_splitter, native_steps
from schemas.errors import UserError

LABEL_KINDS = ("first-error", "per-step")


@dataclass
class FieldMapping:
    """Which field of each record holds what (every option of `stepdpo ingest jsonl`)."""

    prompt_field: str = field(
        default="", metadata={"help": "field with the problem text (required), e.g. "
                                      "--prompt-field problem or --prompt-field question.problem",
                              "metavar": "F"}
    )
    steps_field: str | None = field(
        default=None, metadata={"help": "field with the solution as a list of step strings, kept as "
                                        "they are, e.g. --steps-field steps", "metavar": "F"}
    )
    response_field: str | None = field(
        default=None, metadata={"help": "field with the solution as one text, split by --split, "
                                        "e.g. --response-field solution --split blank-lines",
                                "metavar": "F"}
    )
    split: str = field(
        default="lines", metadata={"help": "splitter for --response-field: lines, blank-lines, "
                                           "step-markers, regex:PATTERN (e.g. --split 'regex:\\n-{3,}\\n')",
                                   "metavar": "S"}
    )
    id_field: str | None = field(
        default=None, metadata={"help": "field with the problem id (default: a hash of the problem "
                                        "text), e.g. --id-field id", "metavar": "F"}
    )
    answer_field: str | None = field(
        default=None, metadata={"help": "field with the solution's own final answer, e.g. "
                                        "--answer-field final_answer", "metavar": "F"}
    )
    gold_field: str | None = field(
        default=None, metadata={"help": "field with the correct answer, e.g. --gold-field answer",
                                "metavar": "F"}
    )
    label_field: str | None = field(
        default=None, metadata={"help": "field with human step labels for reference_scores, e.g. "
                                        "--label-field label --label-kind first-error", "metavar": "F"}
    )
    label_kind: str = field(
        default="first-error",
        metadata={"help": "how --label-field is written: first-error (index of the earliest wrong "
                          "step, -1 if none) or per-step (one value in [0, 1]/true/false/null per "
                          "step), e.g. --label-kind per-step", "choices": list(LABEL_KINDS)},
    )
    source: str = field(
        default="jsonl", metadata={"help": "value of the source column, e.g. --source processbench"}
    )
    meta_fields: list[str] = field(
        default_factory=list,
        metadata={"help": "extra fields copied into the meta JSON, e.g. --meta-fields model "
                          "temperature", "metavar": "F"},
    )

    def check(self) -> None:
        """Option combinations argparse cannot express, as one clear sentence."""
        if not self.prompt_field:
            raise UserError("--prompt-field is required (the field with the problem text)")
        if (self.steps_field is None) == (self.response_field is None):
            raise UserError("give exactly one of --steps-field (a list of steps) or "
                            "--response-field (one text, split by --split)")
        if self.steps_field is not None and self.split not in ("lines", "native"):
            raise UserError("--split applies to --response-field only; --steps-field is kept as given")
        if self.label_kind not in LABEL_KINDS:
            raise UserError(f"--label-kind must be one of {', '.join(LABEL_KINDS)}")
        if self.response_field is not None:
            if self.split == "native":
                raise UserError("--split native needs --steps-field (a list); pick a text splitter")
            try:
                get_splitter(self.split)
            except SplitError as exc:
                raise UserError(f"--split: {exc}") from exc


def first_error_scores(label: Any, n_steps: int) -> list[float | None]:
    """Scores from the index of the earliest wrong step (-1: all right)."""
    if isinstance(label, bool) or not isinstance(label, int):
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        else:
            raise RecordError(f"first-error label must be an integer step index or -1, got {label!r}")
    if not -1 <= label < n_steps:
        raise RecordError(f"first-error label {label} is out of range for {n_steps} step(s) (use -1 when all are right)")
    if label == -1:
        return [1.0] * n_steps
    return [1.0] * label + [0.0] + [None] * (n_steps - label - 1)


def per_step_scores(label: Any, n_steps: int) -> list[Any]:
    if not isinstance(label, list):
        raise RecordError(f"per-step label must be a list with one value per step, got {type(label).__name__}")
    return label  # values and length are checked by make_row


def row_builder(mapping: FieldMapping) -> Callable[[Record], dict[str, Any]]:
    """A function from one record to one `responses` row under ``mapping``."""
    mapping.check()
    splitter = get_splitter(mapping.split) if mapping.response_field else None
    to_scores = first_error_scores if mapping.label_kind == "first-error" else per_step_scores

    def to_row(record: Record) -> dict[str, Any]:
        obj = record.value
        prompt = text_field(obj, mapping.prompt_field)
        if splitter is not None:
            text = text_field(obj, mapping.response_field)
            steps = splitter.split(text)
        else:
            raw = get_field(obj, mapping.steps_field)
            try:
                steps = native_steps(raw)
            except SplitError as exc:
                raise RecordError(f"field '{mapping.steps_field}': {exc}") from exc
        problem_id = None
        if mapping.id_field:
            pid = get_field(obj, mapping.id_field)
            if pid is None or isinstance(pid, (bool, dict, list)):
                raise RecordError(f"field '{mapping.id_field}' must be a string or a number")
            problem_id = str(pid)
        scores = None
        if mapping.label_field:
            label = get_field(obj, mapping.label_field)
            if label is not None:
                scores = check_scores(
                    to_scores(label, len(steps)), len(steps), what=f"field '{mapping.label_field}'"
                )
        meta: dict[str, Any] = {"origin": record.where}
        for name in mapping.meta_fields:
            # Parquet cells may be dates or bytes: keep them as their text.
            meta[name] = json.loads(json.dumps(get_field(obj, name), default=str))
        return make_row(
            prompt=prompt,
            steps=steps,
            source=mapping.source,
            problem_id=problem_id if problem_id is not None else stable_problem_id(mapping.source, prompt),
            final_answer=text_field(obj, mapping.answer_field, required=False) if mapping.answer_field else None,
            gold_answer=text_field(obj, mapping.gold_field, required=False) if mapping.gold_field else None,
            reference_scores=scores,
            meta=meta,
        )

    return to_row
