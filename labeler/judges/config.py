"""Options of every judge, in one dataclass so `stepdpo label --help` lists them together.

Fields that change a judge's output (template, temperature, style…) must go into that judge's
``fingerprint_parts``; transport fields (timeout, base URL) must not.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JudgeConfig:
    template: str | None = field(
        default=None,
        metadata={"help": "API judges' prompt: a built-in name (step_judge_v2 = default rubric; "
                          "with_reference = Step-DPO's locator, shows the row's correct reference "
                          "solution; processbench = the official ProcessBench critic, earliest wrong "
                          "paragraph in \\boxed{}) or a template FILE; its hash is part of the judge "
                          "fingerprint", "metavar": "NAME|FILE"},
    )
    analysis: bool = field(
        default=True,
        metadata={"help": "API step judges write a per-step 'analysis' before each verdict and score "
                          "(kept in raw); reasoning models (OpenAI o-series, gpt-5, Claude with "
                          "--thinking-budget) reason on their own and skip it; --no-analysis: verdicts only"},
    )
    samples: int = field(
        default=1,
        metadata={"help": "self-consistency: ask N times (needs --temperature > 0) and vote per step "
                          "(processbench: majority of the boxed indices); each sample is cached on its "
                          "own, so raising N later asks only the new ones", "metavar": "N"},
    )
    vote: str = field(
        default="majority",
        metadata={"help": "how --samples combine: majority (the most common verdict's score; a tie "
                          "goes to the lower score) or mean (of the stated scores)",
                  "choices": ["majority", "mean"]},
    )
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature for API judges"})
    max_output_tokens: int = field(
        default=2048,
        metadata={"help": "max tokens a judge may answer with (API judges); not part of the judge "
                          "fingerprint: answers cut off at the limit are error rows, never cached, so "
                          "rerunning with a higher limit in the same -o folder redoes only those"},
    )
    thinking_budget: int | None = field(
        default=None,
        metadata={"help": "anthropic only: extended thinking with this many tokens (a reasoning "
                          "model: no analysis field, tool choice auto, no temperature)", "metavar": "TOKENS"},
    )
    logprobs: bool = field(
        default=False,
        metadata={"help": "openai only: calibrated per-step scores from top_logprobs of the "
                          "verdict tokens instead of the stated score"},
    )
    timeout: float = field(default=120.0, metadata={"help": "seconds before one request is abandoned and retried"})
    http_transport: str = field(
        default="auto",
        metadata={"help": "API requests' HTTP transport under the SDK client: aiohttp (the SDKs' "
                          "aiohttp transport, about a quarter less client CPU per request; in "
                          "stepwise-dpo[api]), httpx (the SDKs' default: use it to debug with httpx's "
                          "logging, or if a proxy or TLS setting misbehaves under aiohttp), auto "
                          "(aiohttp when installed). Both honour HTTPS_PROXY/HTTP_PROXY/NO_PROXY",
                  "choices": ["auto", "aiohttp", "httpx"]},
    )
    # Local PRM judges.
    style: str = field(
        default="qwen",
        metadata={"help": "prm only: scoring convention", "choices": ["qwen", "shepherd", "yesno"]},
    )
    step_separator: str | None = field(
        default=None,
        metadata={"help": "prm only: token/text placed after each step (defaults: qwen '<extra_0>', "
                          "shepherd ' ки', yesno the verification question)"},
    )
    positive_token: str | None = field(
        default=None, metadata={"help": "prm only: token read as 'correct' (shepherd '+', yesno 'Yes')"}
    )
    negative_token: str | None = field(
        default=None, metadata={"help": "prm only: token read as 'wrong' (shepherd '-', yesno 'No')"}
    )
    class_index: int = field(default=1, metadata={"help": "prm qwen only: class of the 2-class head meaning 'correct'"})
    prm_batch_size: int = field(default=8, metadata={"help": "prm only: responses per forward pass"})
    max_length: int | None = field(
        default=None, metadata={"help": "prm only: token limit per response (default: the model's)"}
    )
    device: str | None = field(default=None, metadata={"help": "prm only: cuda, cpu… (default: cuda if present)"})
    dtype: str | None = field(
        default=None, metadata={"help": "prm only: bfloat16, float16, float32 (default: bf16 on cuda, fp32 on cpu)"}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "prm only: run the model repo's own modelling code (only for repos you "
                          "trust; Qwen2.5-Math-PRM does not need it: it has a built-in loader)"},
    )
    # Outcome judge.
    fill: str = field(
        default="last",
        metadata={"help": "answer-match only: write the outcome on the final step (last) or on every "
                          "step (all)", "choices": ["last", "all"]},
    )
    # Monte-Carlo judge (mc:BACKEND).
    rollouts: int = field(default=8, metadata={"help": "mc only: rollouts per step (Math-Shepherd used 8)"})
    hard: bool = field(default=False, metadata={"help": "mc only: a step scores 1 when ANY rollout reaches the "
                                                        "gold answer (default: the fraction that does)"})
    rollout_template: str = field(default="step-dpo", metadata={
        "help": "mc only: prompt template of the rollouts (step-dpo, chat, plain or a JSON file, as in "
                "`stepdpo generate --template`)", "metavar": "NAME|FILE"})
    rollout_temperature: float = field(default=0.8, metadata={"help": "mc only: sampling temperature of the rollouts"})
    rollout_top_p: float = field(default=0.95, metadata={"help": "mc only: top-p of the rollouts"})
    rollout_max_tokens: int = field(default=1024, metadata={"help": "mc only: new tokens per rollout"})
    rollout_seed: int = field(default=0, metadata={"help": "mc only: base seed of the rollouts (each has its own)"})
    rollout_concurrency: int = field(default=16, metadata={"help": "mc only: rollouts in flight per response"})
