"""Prompt templates and the answer format shared by the API judges.

A template is a versioned text file with a ``[system]`` rubric, a ``[user]`` task holding
``{problem}`` and ``{steps}`` (optionally ``{gold_answer}``, ``{num_steps}`` and
``{reference_solution}``), and an optional ``[answer]`` line naming what the model answers:
``steps`` (default: a verdict and score per step in the JSON answer schema) or
``first-error-index`` (free text ending in ``\\boxed{k}``, as ProcessBench's critic does).

Rendering keeps the order rubric → problem → steps, so everything before the steps is a prefix
shared by every solution of a problem, which provider prompt caching (OpenAI automatic caching,
Anthropic ``cache_control``) reuses. The template's full text hash goes into the judge
fingerprint: editing one word of the rubric misses the cache, as it must.

User text is never trusted as markup. Steps are wrapped in numbered tags (``<step_1>`` …, or
ProcessBench's ``<paragraph_0>`` …) and any tag-like text inside the problem or a step is
escaped, so a newline plus ``Step 3:`` or ``</step_2><step_3>`` inside one step cannot forge
another step. Placeholders are filled in ONE pass over the template text: a problem that
contains ``{gold_answer}`` is shown as written, never substituted.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import UserError
from schemas.ids import sha256_hex

DEFAULT_TEMPLATE = "step_judge_v2"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
VERDICTS = ("correct", "neutral", "incorrect")
#: How a verdict maps to a score when a judge gives only the verdict (PRM800K's 1 / 0 / -1).
VERDICT_SCORE = {"correct": 1.0, "neutral": 0.5, "incorrect": 0.0}
TOOL_NAME = "record_step_verdicts"
ANSWER_KINDS = ("steps", "first-error-index")
#: Bumped when the code-side rendering (tags, escaping) changes; part of the fingerprint.
RENDER_VERSION = 2
PLACEHOLDERS = ("problem", "steps", "gold_answer", "num_steps", "reference_solution")
#: Keys of a responses row's ``meta`` JSON that carry a correct reference solution (text or a
#: list of steps): ``generate`` and ``perturb`` rows carry their problem's gold solution there.
REFERENCE_META_KEYS = ("reference_solution", "gold_solution")

#: Added to the rubric when the answer has an ``analysis`` field: reasoning comes first.
ANALYSIS_RULE = (
    'For each step, FIRST write "analysis": a short check of the step (redo its arithmetic, '
    "check it against the problem, the earlier steps and any reference), THEN give the verdict "
    "and score that follow from that analysis."
)


def answer_schema(analysis: bool = False) -> dict[str, Any]:
    """The answer every step judge must give: per step (an analysis, then) a verdict and a score.

    Valid for OpenAI strict structured outputs (all properties required, no extras); property
    order is kept on the wire (Python dicts are ordered), and models write fields in schema
    order, so with ``analysis`` the model reasons before it commits to a verdict.
    """
    props: dict[str, Any] = {"step": {"type": "integer", "description": "the step number, starting at 1"}}
    if analysis:
        props["analysis"] = {"type": "string",
                             "description": "your check of this step, written before the verdict"}
    props["verdict"] = {"type": "string", "enum": list(VERDICTS)}
    props["score"] = {"type": "number", "description": "probability in [0, 1] that the step is correct"}
    return {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "description": "one entry per solution step, in order",
                "items": {"type": "object", "properties": props, "required": list(props),
                          "additionalProperties": False},
            }
        },
        "required": ["steps"],
        "additionalProperties": False,
    }


ANSWER_SCHEMA = answer_schema(False)
ANALYSIS_SCHEMA = answer_schema(True)


class AnswerError(ValueError):
    """The judge's answer is not valid JSON or does not match the answer schema."""


_TAGLIKE = re.compile(r"<(?=/?\s*(?:step|paragraph)_\s*-?\d)", re.I)
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_BLOCK = re.compile(r"\{#(\w+)\}\n?(.*?)\{/\1\}\n?", re.S)


def escape_tags(text: str) -> str:
    """Neutralise text that looks like our step tags (``<step_3>``, ``</paragraph_0>``)."""
    return _TAGLIKE.sub("&lt;", text)


def tag_steps(steps: list[str], kind: str = "steps") -> str:
    """The steps as the model sees them: ``<step_1>`` … from 1 for step judges, ProcessBench's
    ``<paragraph_0>`` … from 0 (blank line between) for the first-error-index critic."""
    if kind == "first-error-index":
        return "\n\n".join(f"<paragraph_{i}>\n{escape_tags(s)}\n</paragraph_{i}>" for i, s in enumerate(steps))
    return "\n".join(f"<step_{i}>\n{escape_tags(s)}\n</step_{i}>" for i, s in enumerate(steps, 1))


def reference_solution_of(meta: str | None) -> str | None:
    """A correct reference solution from a row's ``meta`` JSON, or None."""
    if not meta:
        return None
    try:
        data = json.loads(meta)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for key in REFERENCE_META_KEYS:
        value = data.get(key)
        if isinstance(value, list) and value and all(isinstance(s, str) for s in value):
            return "\n".join(value)
        if isinstance(value, str) and value.strip():
            return value
    return None


@dataclass(frozen=True)
class Rendered:
    system: str
    prefix: str  # user text before the steps: the problem (shared by a problem's solutions)
    steps: str  # the tagged steps
    suffix: str  # user text after the steps

    @property
    def user(self) -> str:
        return self.prefix + self.steps + self.suffix


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    system: str
    user: str
    answer: str = "steps"

    @property
    def sha(self) -> str:
        return sha256_hex(self.text)[:16]

    def uses(self, placeholder: str) -> bool:
        return "{" + placeholder + "}" in self.text

    def render(self, prompt: str, steps: list[str], gold_answer: str | None = None,
               reference_solution: str | None = None) -> Rendered:
        system, head, tail = _fill(self, prompt, gold_answer, reference_solution, len(steps))
        return Rendered(system, head, tag_steps(steps, self.answer), tail)


@functools.lru_cache(maxsize=512)
def _fill(template: Template, prompt: str, gold_answer: str | None, reference_solution: str | None,
          num_steps: int) -> tuple[str, str, str]:
    """The rubric and problem text around the steps: rendered once per template and problem
    (the solutions of a problem, the engine's token estimate and the request share it)."""
    values = {"problem": escape_tags(prompt), "gold_answer": escape_tags(gold_answer or ""),
              "num_steps": str(num_steps), "reference_solution": escape_tags(reference_solution or "")}

    def fill(part: str) -> str:
        # Optional blocks first ({#reference_solution}…{/reference_solution}: kept only when
        # the row has one), then every placeholder in one pass: substituted user text is
        # never scanned again.
        part = _BLOCK.sub(lambda m: m.group(2) if values.get(m.group(1)) else "", part)
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), part)

    head, _, tail = template.user.partition("{steps}")
    return fill(template.system), fill(head), fill(tail)


def parse_template(text: str, name: str) -> Template:
    """Split a template file into its sections; one clear error for a malformed file."""
    sections: dict[str, list[str]] = {"system": [], "user": [], "answer": []}
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        tag = line.strip()
        if tag in ("[system]", "[user]", "[answer]"):
            current = sections[tag[1:-1]]
        elif current is None:
            if tag and not tag.startswith("#"):
                raise UserError(f"template {name}: text before the first [system] or [user] line")
        else:
            current.append(line)
    user_text = "".join(sections["user"]).rstrip("\n")
    if "{steps}" not in user_text or "{problem}" not in user_text:
        raise UserError(f"template {name}: the [user] section must contain {{problem}} and {{steps}}")
    answer = "".join(sections["answer"]).strip() or "steps"
    if answer not in ANSWER_KINDS:
        raise UserError(f"template {name}: [answer] must be one of {', '.join(ANSWER_KINDS)}, not {answer!r}")
    return Template(name=name, text=text, system="".join(sections["system"]).strip("\n"), user=user_text,
                    answer=answer)


def builtin_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.txt"))


def load_template(path: str | None) -> Template:
    """The built-in rubric, a built-in by name (``processbench``, ``reference`` …), or a FILE."""
    name = path or DEFAULT_TEMPLATE
    builtin = TEMPLATES_DIR / f"{name}.txt"
    if "/" not in name and builtin.is_file():
        return parse_template(builtin.read_text("utf-8"), name)
    file = Path(name)
    if not file.is_file():
        raise UserError(f"--template {path}: no such file or built-in template "
                        f"(built-ins: {', '.join(builtin_templates())})")
    return parse_template(file.read_text("utf-8"), file.stem)


def parse_answer(answer: Any, n_steps: int) -> tuple[list[float], list[str]]:
    """Scores and verdicts from a decoded answer; AnswerError when it breaks the schema.

    The step count must match: a judge that skips or invents steps would misalign every score
    after the gap, so such an answer is asked again rather than repaired. An ``analysis`` field,
    when present, must be text; it stays in ``raw`` for audit.
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("steps"), list):
        raise AnswerError("answer has no 'steps' list")
    entries = answer["steps"]
    if len(entries) != n_steps:
        raise AnswerError(f"answer has {len(entries)} step(s), the solution has {n_steps}")
    try:
        entries = sorted(entries, key=lambda e: int(e["step"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AnswerError("answer steps lack integer 'step' numbers") from exc
    scores, verdicts = [], []
    for i, entry in enumerate(entries, 1):
        if int(entry["step"]) != i:
            raise AnswerError(f"answer step numbers are not 1..{n_steps}")
        if "analysis" in entry and not isinstance(entry["analysis"], str):
            raise AnswerError(f"step {i}: analysis is not text")
        verdict = entry.get("verdict")
        if verdict not in VERDICT_SCORE:
            raise AnswerError(f"step {i}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        score = entry.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1 \
                or math.isnan(score):
            raise AnswerError(f"step {i}: score {score!r} is not a number in [0, 1]")
        scores.append(float(score))
        verdicts.append(verdict)
    return scores, verdicts
