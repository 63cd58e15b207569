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

``flaw_tasks`` (``--flaw``, the LLM counterpart of ``perturb``): each correct solution of a
responses file is shown to an API model, which rewrites it from step k on with one plausible
mistake at step k carried through to the end; steps before k are kept verbatim, and the row's
``reference_scores`` are known: 1 before k, 0 at k, null after (as ``perturb`` writes them).
k is ``--flaw-step`` or drawn per (solution, variant) from ``--seed``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labeler.answers import answer_of_steps, check_answer
from labeler.sources.generation.base import GenRequest, Sampling
from labeler.sources.generation.problems import Problem, problem_meta
from labeler.sources.generation.prompts import Template, answer_start, render_user
from labeler.sources.generation.runner import Task, request_seed, task_id
from schemas.aggregate import first_error
from schemas.errors import UserError
from schemas.ids import sha256_hex
from schemas.tables import RESPONSES, STEP_SCORES, read_kind, read_table

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


FLAW_SYSTEM = "You write realistic flawed math solutions for training step-level verifiers."
FLAW_USER = """Problem:
{problem}

A correct solution, one step per line:
{numbered}

Rewrite this solution from step {k} on so that step {k} contains exactly one plausible mistake (a \
wrong calculation or a wrong reasoning step, as a student might make) and every later step follows \
from it consistently, ending with the resulting wrong final answer written the way the original \
writes its answer. Do not mention or hint at the mistake. Output only the rewritten steps, from \
step {k} to the end, one per line, each starting with "Step i: "."""


def flaw_tasks(path: str | Path, n: int, sampling: Sampling, flaw_step: int | None = None,
               stats: Counter | None = None, limit: int | None = None) -> list[Task]:
    """Tasks asking for flawed rewrites of the correct solutions in ``path``."""
    stats = stats if stats is not None else Counter()
    kind = read_kind(path) if Path(path).is_dir() or Path(path).suffix.lower() == ".parquet" else None
    if kind != RESPONSES.name:
        raise UserError(f"--flaw {path}: needs a responses file of correct solutions (Parquet, from "
                        "`stepdpo ingest`), not {}".format(f"a '{kind}' file" if kind else "a problems file"))
    tasks: list[Task] = []
    seen: set[str] = set()
    for row in read_table(path, RESPONSES).to_pylist():
        if row["response_id"] in seen:
            continue
        seen.add(row["response_id"])
        steps = list(row["steps"])
        if not check_answer(answer_of_steps(steps, row.get("final_answer")), row.get("gold_answer")).correct:
            stats["skipped_not_correct"] += 1
            continue
        if flaw_step is not None and flaw_step > len(steps):
            stats["skipped_too_short"] += 1
            continue
        if limit is not None and len({t.continues for t in tasks}) >= limit:
            break
        numbered = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))
        pid = row["problem_id"] or row["response_id"]
        for v in range(n):
            rng = random.Random(sha256_hex({"seed": sampling.seed, "flaw_of": row["response_id"], "variant": v}))
            k = flaw_step - 1 if flaw_step is not None else rng.randrange(len(steps))
            gid = task_id(pid, row["prompt"], v, steps[:k], None, {"flaw_of": row["response_id"], "step": k})
            user = FLAW_USER.replace("{problem}", row["prompt"]).replace("{numbered}", numbered) \
                .replace("{k}", str(k + 1))
            request = GenRequest(key=gid, prompt=user, system=FLAW_SYSTEM, chat=True, prefill="", sample_index=v,
                                 seed=request_seed(sampling.seed, gid))
            tasks.append(Task(generation_id=gid, request=request, problem_id=pid, prompt=row["prompt"],
                              gold_answer=row.get("gold_answer"), source_meta={"flaw": {"of": row["response_id"],
                                                                                          "step": k}},
                              prefix_steps=steps[:k], continues=None, strip_markers=True,
                              reference_scores=[1.0] * k + [0.0]))
        stats["solutions"] += 1
    return tasks
