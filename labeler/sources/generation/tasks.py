"""What to sample: fresh solutions of problems, or continuations of labeled solutions.

``sample_tasks``: ``n`` samples of each problem (sample indices 0..n-1; a rerun with a larger
``n`` adds only the new indices).

``continuation_tasks`` (``--continue-from RUN_DIR --at first-error``): for each ok row of a
labeled run whose first error (first step scored below ``threshold``) is step k, ``n``
continuations of its correct prefix (steps 0..k-1, kept verbatim in each new row's ``steps``);
each row records the id of the row it continues (``meta.continues``) and ``prefix_len`` = k.
A solution wrong at step 0 has an empty prefix: its continuations are fresh samples that still
pair against its first step. The run must come from a step-level judge: an ``answer-match`` run
knows only whether the final answer is right, so it is refused.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labeler.sources.generation.base import GenRequest, Sampling
from labeler.sources.generation.problems import Problem, problem_meta
from labeler.sources.generation.prompts import Template, answer_start, render_user
from labeler.sources.generation.runner import Task, request_seed, task_id
from schemas.aggregate import first_error
from schemas.errors import UserError
from schemas.tables import STEP_SCORES, read_kind, read_table

#: Judges that know only the outcome: their runs locate no first error.
OUTCOME_ONLY_JUDGES = ("answer-match",)


def _request(template: Template, problem_text: str, gid: str, index: int, sampling: Sampling,
             prefix: Sequence[str], separator: str) -> tuple[GenRequest, str]:
    prefill = answer_start(template, prefix, separator)
    marker = prefill[len(separator.join(prefix) + separator):] if prefix else prefill
    return GenRequest(key=gid, prompt=render_user(template, problem_text), system=template.system,
                      chat=template.chat, prefill=prefill, sample_index=index,
                      seed=request_seed(sampling.seed, gid), continuation=bool(prefix)), marker


def sample_tasks(problems: Sequence[Problem], template: Template, n: int, sampling: Sampling,
                 separator: str = "\n") -> list[Task]:
    tasks = []
    for p in problems:
        for k in range(n):
            gid = task_id(p.problem_id, p.prompt, k)
            request, marker = _request(template, p.prompt, gid, k, sampling, [], separator)
            tasks.append(Task(generation_id=gid, request=request, problem_id=p.problem_id, prompt=p.prompt,
                              gold_answer=p.gold_answer, source_meta=problem_meta(p), marker=marker))
    return tasks


def refuse_outcome_only(run: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    judges = sorted({r.get("judge") or "" for r in rows})
    outcome = [j for j in judges if j.partition(":")[0] in OUTCOME_ONLY_JUDGES]
    if outcome:
        raise UserError(f"--continue-from {run}: labeled by {outcome[0]}, which knows only whether the final "
                        "answer is right, not which step went wrong; label with a step-level judge (an API judge, "
                        "prm:, gsm8k-calc) to locate first errors")


def continuation_tasks(run: str | Path, template: Template, n: int, sampling: Sampling,
                       threshold: float = 0.5, separator: str = "\n",
                       stats: Counter | None = None) -> list[Task]:
    stats = stats if stats is not None else Counter()
    if read_kind(run) != STEP_SCORES.name:
        raise UserError(f"--continue-from {run}: not a labeled run (step_scores); run `stepdpo label` first")
    rows = [r for r in read_table(run, STEP_SCORES).to_pylist() if r["status"] == "ok"]
    refuse_outcome_only(run, rows)
    tasks = []
    seen: set[str] = set()
    for row in rows:
        if row["response_id"] in seen:
            continue
        seen.add(row["response_id"])
        e = first_error(row["scores"], threshold)
        if e < 0:
            stats["no_error"] += 1
            continue
        stats["wrong_solutions"] += 1
        prefix = list(row["steps"][:e])
        try:
            meta = json.loads(row.get("meta") or "{}")
        except ValueError:
            meta = {}
        carried = {k: meta[k] for k in ("gold_solution",) if isinstance(meta, dict) and k in meta}
        pid = row["problem_id"] or row["response_id"]
        for k in range(n):
            gid = task_id(pid, row["prompt"], k, prefix, row["response_id"])
            request, marker = _request(template, row["prompt"], gid, k, sampling, prefix, separator)
            tasks.append(Task(generation_id=gid, request=request, problem_id=pid, prompt=row["prompt"],
                              gold_answer=row.get("gold_answer"), source_meta=carried, prefix_steps=prefix,
                              marker=marker, continues=row["response_id"]))
    if not rows:
        raise UserError(f"--continue-from {run}: no ok rows")
    return tasks
