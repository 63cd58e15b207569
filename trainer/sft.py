"""Supervised fine-tuning on solutions, laid out exactly as the stepwise DPO trainer lays them out.

Step-DPO starts from a policy that already writes "Step k:" solutions; `stepdpo sft` gets one
there from the correct solutions of a responses file. The text of a solution is the one DPO
trains on for a chosen side (:func:`schemas.convert.format_prompt` for the problem,
:func:`schemas.convert.format_completion` for the steps, joined by the same separator; with
``chat_template`` the problem is a chat user turn and the steps start the assistant's answer,
as `train --chat_template true` renders them), so SFT and DPO never disagree on where a step
starts or how a solution ends. TRL's SFTTrainer appends EOS to every completion: a whole
solution ends with EOS, as DPO's ``add_eos=auto`` ends whole solutions.

The loss is on the completion only (TRL's prompt-completion format).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig

from schemas.convert import DEFAULT_SEPARATOR, format_completion, format_prompt
from trainer.config import resolve_checkpointing


@dataclass
class StepwiseSFTConfig(SFTConfig):
    """TRL's `SFTConfig`, its checkpointing default (on) moved to transformers' current name:
    TRL sets the deprecated ``gradient_checkpointing``, which printed a FutureWarning on every
    `stepdpo sft` (as `StepwiseDPOConfig` does for `train`)."""

    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Old name of --activation_checkpointing (transformers 5): recompute activations in the "
                  "backward pass to save memory. On unless set false (TRL's default)."},
    )

    def __post_init__(self) -> None:
        resolve_checkpointing(self)
        super().__post_init__()


@dataclass
class SFTScriptArguments:
    """What to train on (the SFT counterpart of train's script options)."""

    responses: str | None = field(default=None, metadata={"help": "responses file or folder (stepdpo ingest / "
                                                                   "generate) whose correct solutions to train on "
                                                                   "(required)"})
    select: str = field(default="correct", metadata={
        "help": "which solutions: correct (final answer equals the gold answer, checked with the GSM8K numeric "
                "rule and math-verify; rows without a gold answer are skipped and counted) or all",
        "choices": ["correct", "all"]})
    step_separator: str = field(default=DEFAULT_SEPARATOR, metadata={"help": "text between steps (as train's "
                                                                             "--step_separator)"})
    chat_template: bool = field(default=False, metadata={"help": "render the problem with the tokenizer's chat "
                                                                 "template (as train --chat_template true)"})
    max_rows: int | None = field(default=None, metadata={"help": "train on at most this many solutions"})


def sft_example(tokenizer: Any, prompt: str, steps: Sequence[str], sep: str = DEFAULT_SEPARATOR,
                chat_template: bool = False) -> dict[str, str]:
    """The prompt / completion strings of one solution, as DPO would render its chosen side."""
    if chat_template:
        from trainer.alignment import chat_prompt

        text = chat_prompt(tokenizer, prompt, [], sep)
    else:
        text = format_prompt(prompt, [], sep)
    return {"prompt": text, "completion": format_completion(list(steps), sep)}
