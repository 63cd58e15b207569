"""Prompt templates for sampling a policy, and the text a continuation starts from.

``step-dpo`` is the prompt of Step-DPO (arXiv 2406.18629): an Alpaca-style instruction whose
answer is primed with "Let's think step by step.\\nStep 1: ", so the policy writes numbered
steps that the ``step-markers`` splitter cuts back apart. ``chat`` sends the problem as a user
turn (rendered by the model's own chat template for ``hf:``, sent as messages to chat APIs) with
a system prompt asking for ``Step k:`` lines and a ``\\boxed{}`` answer. ``plain`` is the bare
problem, for base models. A template file (``--template FILE``, JSON with the same fields) is
also accepted; its text is part of each task's cache key, so editing it misses the cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from schemas.errors import UserError

STEP_MARKER = "Step {k}: "


@dataclass(frozen=True)
class Template:
    name: str
    #: Formatted with ``{problem}``; the whole prompt (raw) or the user turn (chat).
    user: str
    system: str | None = None
    chat: bool = False
    #: The first step's marker, written by us as the start of the answer.
    marker: str | None = STEP_MARKER

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_BOXED = "put your final answer within \\boxed{}"

TEMPLATES: dict[str, Template] = {
    "step-dpo": Template(
        name="step-dpo",
        user=("Below is an instruction that describes a task. Write a response that appropriately "
              "completes the request.\n\n### Instruction:\n{problem}\n\n"
              "### Response: Let's think step by step.\n"),
    ),
    "chat": Template(
        name="chat", chat=True,
        system=f"Please reason step by step, and {_BOXED}. Start each step on a new line with 'Step k:'.",
        user="{problem}",
    ),
    "plain": Template(name="plain", user="{problem}\n", marker=None),
}


def load_template(spec: str) -> Template:
    """A built-in template by name, or a JSON file with ``user`` (and optionally ``system``,
    ``chat``, ``marker``)."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--template {spec}: not a built-in template ({', '.join(TEMPLATES)}) nor a file")
    try:
        data = json.loads(path.read_text("utf-8"))
        template = Template(name=f"file:{path.name}", user=str(data["user"]), system=data.get("system"),
                            chat=bool(data.get("chat", False)), marker=data.get("marker", STEP_MARKER))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--template {spec}: expected JSON with a 'user' field containing {{problem}} ({exc})") from None
    if "{problem}" not in template.user:
        raise UserError(f"--template {spec}: 'user' must contain {{problem}}")
    return template


def render_user(template: Template, problem: str) -> str:
    # str.replace, not format: a problem's own braces (LaTeX) must survive untouched.
    return template.user.replace("{problem}", problem)


def answer_start(template: Template, prefix_steps: Sequence[str], separator: str = "\n") -> str:
    """The text the answer begins with: the marker of step 1, or the correct prefix of a
    labeled solution followed by the marker of the step that comes next."""
    k = len(prefix_steps) + 1
    marker = template.marker.replace("{k}", str(k)) if template.marker else ""
    if not prefix_steps:
        return marker
    return separator.join(prefix_steps) + separator + marker
