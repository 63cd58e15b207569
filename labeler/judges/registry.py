"""Judge names → factories, imported only when a judge of that name is built.

This keeps `import labeler` free of openai/anthropic/torch: a user labeling with `gsm8k-calc`
needs none of them installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labeler.registry_util import describe, resolve

if TYPE_CHECKING:
    from labeler.judges.base import Judge
    from labeler.judges.config import JudgeConfig

# prefix -> ("module:function", what it is, extra to install)
JUDGES: dict[str, tuple[str, str, str | None]] = {
    "openai": ("labeler.judges.openai_judge:make_openai", "OpenAI Chat Completions, JSON-schema output", "api"),
    "openai-compatible": (
        "labeler.judges.openai_judge:make_openai_compatible",
        "any OpenAI-protocol server: openai-compatible:MODEL@BASE_URL (vLLM, SGLang, llama.cpp)",
        "api",
    ),
    "anthropic": ("labeler.judges.anthropic_judge:make_anthropic", "Anthropic Messages, tool output", "api"),
    "prm": ("labeler.judges.prm:make_prm", "local process reward model: prm:PATH_OR_HUB_ID --style qwen|shepherd|yesno", "local"),
    "orm": ("labeler.judges.orm:make_orm", "local outcome reward model (stepdpo train-rm --kind outcome): one score per solution, on its last step", "local"),
    "mc": ("labeler.judges.mc:make_mc", "Monte-Carlo step labels (Math-Shepherd): mc:BACKEND rolls out --rollouts "
           "continuations after each step with a generate backend (hf:, openai-compatible:, openai:, anthropic:)", None),
    "gsm8k-calc": ("labeler.judges.calc:make_calc", "free rule-based check of <<expr=result>> notes and the final answer", None),
    "reference": ("labeler.judges.reference:make_reference", "pass the source's human labels through", None),
    "answer-match": ("labeler.judges.answer_match:make_answer_match",
                     "free outcome check: final answer vs gold_answer (math-verify), on the last step "
                     "(--fill all: every step); locates no first error", None),
}


def judge_help() -> str:
    return describe(JUDGES)


def create_judge(spec: str, config: JudgeConfig) -> Judge:
    """Build the judge named by ``spec`` (e.g. ``openai:gpt-4o-mini``)."""
    factory, model = resolve(JUDGES, spec, "judge")
    return factory(model, config)
