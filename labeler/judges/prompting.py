"""Prompt templates and the answer format shared by the API judges.

A template is a versioned text file with a ``[system]`` rubric and a ``[user]`` task holding
``{problem}`` and ``{steps}`` (optionally ``{gold_answer}`` and ``{num_steps}``). Rendering keeps
the order rubric → problem → numbered steps, so everything before the steps is a prefix shared
by every solution of a problem, which is what provider prompt caching (OpenAI automatic caching,
Anthropic ``cache_control``) can reuse. The template's full text hash goes into the judge
fingerprint: editing one word of the rubric misses the cache, as it must.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import UserError
from schemas.ids import sha256_hex

DEFAULT_TEMPLATE = "step_judge_v1"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
VERDICTS = ("correct", "neutral", "incorrect")
#: How a verdict maps to a score when a judge gives only the verdict (PRM800K's 1 / 0 / -1).
VERDICT_SCORE = {"correct": 1.0, "neutral": 0.5, "incorrect": 0.0}
TOOL_NAME = "record_step_verdicts"

#: The answer every API judge must give: per step a verdict and a score in [0, 1]. Written to
#: be valid for OpenAI strict structured outputs (all properties required, no extras).
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "description": "one entry per solution step, in order",
            "items": {
                "type": "object",
                "properties": {
                    "step": {"type": "integer", "description": "the step number, starting at 1"},
                    "verdict": {"type": "string", "enum": list(VERDICTS)},
                    "score": {"type": "number", "description": "probability in [0, 1] that the step is correct"},
                },
                "required": ["step", "verdict", "score"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["steps"],
    "additionalProperties": False,
}


class AnswerError(ValueError):
    """The judge's answer is not valid JSON or does not match :data:`ANSWER_SCHEMA`."""


@dataclass(frozen=True)
class Rendered:
    system: str
    prefix: str  # user text before the steps: the problem (shared by a problem's solutions)
    steps: str  # the numbered steps
    suffix: str  # user text after the steps (empty in the default template)

    @property
    def user(self) -> str:
        return self.prefix + self.steps + self.suffix


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    system: str
    user: str

    @property
    def sha(self) -> str:
        return sha256_hex(self.text)[:16]

    def render(self, prompt: str, steps: list[str], gold_answer: str | None = None) -> Rendered:
        numbered = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
        head, _, tail = self.user.partition("{steps}")

        def fill(part: str) -> str:
            return (part.replace("{problem}", prompt)
                    .replace("{gold_answer}", gold_answer or "")
                    .replace("{num_steps}", str(len(steps))))

        return Rendered(self.system, fill(head), numbered, fill(tail))


def parse_template(text: str, name: str) -> Template:
    """Split a template file into its sections; one clear error for a malformed file."""
    system, user, current = [], [], None
    for line in text.splitlines(keepends=True):
        tag = line.strip()
        if tag == "[system]":
            current = system
        elif tag == "[user]":
            current = user
        elif current is None:
            if tag and not tag.startswith("#"):
                raise UserError(f"template {name}: text before the first [system] or [user] line")
        else:
            current.append(line)
    user_text = "".join(user).rstrip("\n")
    if "{steps}" not in user_text or "{problem}" not in user_text:
        raise UserError(f"template {name}: the [user] section must contain {{problem}} and {{steps}}")
    return Template(name=name, text=text, system="".join(system).strip("\n"), user=user_text)


def load_template(path: str | None) -> Template:
    """The built-in rubric, or the user's ``--template FILE``."""
    if path is None:
        text = (TEMPLATES_DIR / f"{DEFAULT_TEMPLATE}.txt").read_text("utf-8")
        return parse_template(text, DEFAULT_TEMPLATE)
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--template {path}: no such file")
    return parse_template(file.read_text("utf-8"), file.stem)


def parse_answer(answer: Any, n_steps: int) -> tuple[list[float], list[str]]:
    """Scores and verdicts from a decoded answer; AnswerError when it breaks the schema.

    The step count must match: a judge that skips or invents steps would misalign every score
    after the gap, so such an answer is asked again rather than repaired.
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
