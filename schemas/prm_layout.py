"""The text layout of a process reward model's input: where each step sits and is scored.

One definition for the two sides that must agree to the token: the `prm:` judge that scores
with a PRM, and `stepdpo train-rm` that trains one (the trainer may import only `schemas`).
The tokenizer is duck-typed (``apply_chat_template``): nothing heavy is imported here.

``qwen`` (Qwen2.5-Math-PRM): the chat template with the system prompt below, the problem as the
user turn, and the steps, each followed by the separator, as the assistant turn; without a chat
template, ``problem + "\n" + steps``. ``shepherd``: ``"{problem} {step1} ки\n{step2} ки"``.
``yesno``: a verification question after each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.errors import UserError

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Layout:
    """A response rendered for the model: the text and, per step, the character index of the
    last character of its separator (where that step is scored)."""

    text: str
    ends: list[int]
    add_special_tokens: bool


def render(style: str, tokenizer: Any, prompt: str, steps: list[str], sep: str) -> Layout:
    """The model input of one response in ``style``'s convention."""
    if style == "qwen":
        content = "".join(step + sep for step in steps)
        if getattr(tokenizer, "chat_template", None):
            messages = [
                {"role": "system", "content": QWEN_SYSTEM},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": content},
            ]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            start = text.rfind(content)
            if start < 0:
                raise UserError("the model's chat template changes the assistant text; "
                                "the step separators cannot be located")
            special = False  # the template already holds the special tokens it needs
        else:
            start, text, special = len(prompt) + 1, f"{prompt}\n{content}", True
        body_ends, pos = [], start
        for step in steps:
            pos += len(step) + len(sep)
            body_ends.append(pos - 1)
        return Layout(text, body_ends, special)
    joiner, head = ("\n", prompt + " ") if style == "shepherd" else ("\n", prompt + "\n")
    text, ends = head, []
    for k, step in enumerate(steps):
        if k:
            text += joiner
        text += step + sep
        ends.append(len(text) - 1)
    return Layout(text, ends, True)


def score_positions(encoding: Any, ends: list[int]) -> list[int | None]:
    """Token index of each step's score position, from a fast tokenizer's ``encoding`` of the
    layout text and the layout's character ``ends`` (robust to a step that itself contains the
    separator text: the position comes from characters, not from searching for the token)."""
    positions: list[int | None] = []
    for end in ends:
        tok = None
        for c in range(end, -1, -1):  # a char some tokenizers drop maps to no token
            tok = encoding.char_to_token(c)
            if tok is not None:
                break
        positions.append(tok)
    return positions
