"""What `stepdpo generate` samples for: problems with their gold answers.

Input is either a ``responses`` file/folder (stepdpo ingest or generate; one problem per
``problem_id``) or a problems-only JSONL / JSON / Parquet file. For the latter the fields are
found by name — prompt from ``prompt`` | ``problem`` | ``question``, gold from ``gold_answer`` |
``answer`` | ``solution`` — or named with ``--prompt-field`` / ``--answer-field`` / ``--id-field``
(dotted paths for nested fields). A gold field holding a whole solution (GSM8K's ``#### 72``,
MATH's ``\\boxed{}``) gives its final answer as the gold answer and the solution itself as the
problem's reference solution.

The reference solution travels in each generated row's meta as ``gold_solution`` (a list of
steps), so a judge with a reference-solution rubric (Step-DPO's GPT-4 locator) can show it.
From a responses file it is the first row of the problem whose answer is right and that was
not itself generated. A problem without a gold answer is refused: nothing could check it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeler.answers import check_answer, extract_answer
from labeler.sources.ingest.common import (
    Record,
    RecordError,
    get_field,
    iter_records,
    stable_problem_id,
    text_field,
)
from schemas.errors import UserError
from schemas.tables import RESPONSES, read_kind, read_table

PROMPT_FIELDS = ("prompt", "problem", "question")
ANSWER_FIELDS = ("gold_answer", "answer", "solution")
ID_FIELDS = ("problem_id", "id", "unique_id")


@dataclass
class Problem:
    problem_id: str
    prompt: str
    gold_answer: str
    source: str
    gold_solution: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _is_responses(path: Path) -> bool:
    if path.is_dir() or path.suffix.lower() == ".parquet":
        try:
            return read_kind(path) == RESPONSES.name
        except UserError:
            return False
    return False


def from_responses(path: str | Path) -> list[Problem]:
    table = read_table(path, RESPONSES).to_pylist()
    by_id: dict[str, Problem] = {}
    for row in table:
        pid = row["problem_id"] or stable_problem_id(row["source"] or "responses", row["prompt"])
        gold = row.get("gold_answer")
        problem = by_id.get(pid)
        if problem is None:
            if gold is None or not str(gold).strip():
                continue
            problem = by_id[pid] = Problem(pid, row["prompt"], str(gold), row["source"] or "responses")
        if problem.gold_solution is None and row["source"] != "generate" and \
                check_answer(row.get("final_answer") or extract_answer("\n".join(row["steps"])), gold).correct:
            problem.gold_solution = list(row["steps"])
    if not by_id:
        raise UserError(f"{path}: no row has a gold_answer; generate needs one per problem to check samples")
    return list(by_id.values())


def _pick(value: Any, names: tuple[str, ...], given: str | None, what: str) -> str:
    if given:
        return given
    if isinstance(value, dict):
        for name in names:
            if name in value:
                return name
    raise RecordError(f"no {what} field (looked for {', '.join(names)}; name it with --{what}-field)")


def from_records(path: str | Path, prompt_field: str | None = None, answer_field: str | None = None,
                 id_field: str | None = None) -> list[Problem]:
    source = Path(path).stem
    out: list[Problem] = []
    seen: set[str] = set()
    for rec in iter_records(path):
        if not isinstance(rec, Record):
            where, error = rec
            raise UserError(f"{where}: {error}")
        try:
            p_name = _pick(rec.value, PROMPT_FIELDS, prompt_field, "prompt")
            a_name = _pick(rec.value, ANSWER_FIELDS, answer_field, "answer")
            prompt = text_field(rec.value, p_name)
            gold_text = text_field(rec.value, a_name, required=False)
            if gold_text is None or not gold_text.strip():
                raise RecordError(f"field '{a_name}' is empty: a gold answer is needed to check samples")
            i_name = id_field or next((n for n in ID_FIELDS if isinstance(rec.value, dict) and n in rec.value), None)
            pid = str(get_field(rec.value, i_name)) if i_name else stable_problem_id(source, prompt or "")
        except RecordError as exc:
            raise UserError(f"{rec.where}: {exc}") from None
        solution = None
        gold = gold_text.strip()
        if "####" in gold_text or "\\boxed" in gold_text:
            gold = extract_answer(gold_text) or gold
            solution = [s.strip() for s in gold_text.split("####")[0].splitlines() if s.strip()] or None
        if pid in seen:
            continue
        seen.add(pid)
        out.append(Problem(pid, prompt or "", gold, source, solution, {"where": rec.where}))
    if not out:
        raise UserError(f"{path}: no problems")
    return out


def load_problems(path: str | Path, prompt_field: str | None = None, answer_field: str | None = None,
                  id_field: str | None = None, limit: int | None = None) -> list[Problem]:
    """The problems of ``path`` (see the module docstring), the first ``limit`` of them."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if not _is_responses(path) and (path.is_dir() or path.suffix.lower() == ".parquet"):
        try:
            kind = read_kind(path)
        except UserError:
            kind = None
        if kind is not None:  # one of our other files: name it instead of reading it as problems
            hint = "; to continue its wrong solutions use --continue-from" if kind == "step_scores" else ""
            raise UserError(f"{path}: a '{kind}' file; generate reads problems or responses{hint}")
    problems = from_responses(path) if _is_responses(path) else from_records(path, prompt_field, answer_field,
                                                                             id_field)
    return problems[:limit] if limit else problems


def problem_meta(problem: Problem) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if problem.gold_solution:
        meta["gold_solution"] = problem.gold_solution
    return meta

