"""A trained policy's implicit DPO rewards on pairs: does it prefer the chosen side?

DPO's policy defines a reward without a reward model: r(x, y) = beta * (log pi(y|x) - log
pi_ref(y|x)). Summed over a completion's steps this is exactly the `rewards/chosen` and
`rewards/rejected` the trainer logs, computed here with the same tokenization, separator, EOS
rule, chat template and truncation (the per-step log-probs come from the code that
`precompute-ref` uses, run once with the policy and once with the reference). A pair is
"preferred correctly" when the chosen side's reward is strictly the larger (equal rewards, as
for the reference model itself, are a ``tie`` and not correct).

The earlier prototypes wrote an inference file of ``prompt, model_output, chosen_score,
rejected_score, preferred`` per pair; :func:`score_pairs` gives those rows, ``model_output``
being the policy's greedy continuation of the pair's prompt (optional: it costs a generation
per pair).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schemas.convert import DEFAULT_SEPARATOR, format_prompt


@dataclass
class PairSettings:
    """How the pairs were (or would be) tokenized in training."""

    beta: float = 0.1
    sep: str = DEFAULT_SEPARATOR
    add_eos: str = "auto"
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    chat_template: bool = False
    batch_size: int = 8


def _prompt_text(tokenizer: Any, row: dict[str, Any], settings: PairSettings) -> str:
    if settings.chat_template:
        from trainer.alignment import chat_prompt

        return chat_prompt(tokenizer, row["prompt"], row.get("prefix_steps") or [], settings.sep)
    return format_prompt(row["prompt"], row.get("prefix_steps") or [], settings.sep)


def greedy_outputs(model: Any, tokenizer: Any, rows: list[dict[str, Any]], settings: PairSettings,
                   max_new_tokens: int) -> list[str]:
    """The policy's greedy continuation of each pair's prompt (left-padded batches)."""
    import torch

    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(rows), settings.batch_size):
            texts = [_prompt_text(tokenizer, r, settings) for r in rows[start:start + settings.batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not settings.chat_template)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].size(1):]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def score_pairs(policy: Any, reference: Any, tokenizer: Any, rows: list[dict[str, Any]], settings: PairSettings,
                *, outputs: list[str] | None = None,
                progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One result row per pair: implicit rewards of both sides, which is preferred, and whether
    that is the pair's chosen side. ``policy`` and ``reference`` must carry TRL's fused LM head
    (as :func:`trainer.precompute.load_reference` loads them)."""
    from trainer.precompute import reference_step_logps

    kwargs = dict(sep=settings.sep, add_eos=settings.add_eos, max_length=settings.max_length,
                  truncation_mode=settings.truncation_mode, batch_size=settings.batch_size,
                  chat_template=settings.chat_template)
    pol_w, pol_l = reference_step_logps(policy, tokenizer, rows, progress=progress, **kwargs)
    ref_w, ref_l = reference_step_logps(reference, tokenizer, rows, **kwargs)
    results = []
    for i, row in enumerate(rows):
        chosen = settings.beta * (sum(pol_w[i]) - sum(ref_w[i]))
        rejected = settings.beta * (sum(pol_l[i]) - sum(ref_l[i]))
        preferred = "chosen" if chosen > rejected else "rejected" if rejected > chosen else "tie"
        results.append({
            "pair_id": row.get("pair_id"),
            "prompt": _prompt_text(tokenizer, row, settings),
            "model_output": None if outputs is None else outputs[i],
            "chosen": settings.sep.join(row["chosen_steps"]),
            "rejected": settings.sep.join(row["rejected_steps"]),
            "chosen_score": chosen,
            "rejected_score": rejected,
            "margin": chosen - rejected,
            "preferred": preferred,
            "correct": preferred == "chosen",
            "chosen_step_rewards": [settings.beta * (p - r) for p, r in zip(pol_w[i], ref_w[i], strict=True)],
            "rejected_step_rewards": [settings.beta * (p - r) for p, r in zip(pol_l[i], ref_l[i], strict=True)],
        })
    return results
