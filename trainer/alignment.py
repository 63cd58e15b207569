"""Step-token alignment: which step every completion token belongs to.

The token ids are TRL's own (the same tokenization as `DPOTrainer._prepare_dataset` for plain
text: tokenize the prompt and prompt+completion, the completion starts where they diverge), so
the policy sees exactly what plain TRL would feed it. With a fast tokenizer the step of each
token comes from its character offset (one batched call per pair, no re-tokenizing); without
one, from tokenizing the prompt plus the completion cut at each step end (the boundary is the
common prefix with the full tokenization). Either way every token has exactly one step and
step ids never decrease.

The collator then lays step ids out exactly like `DataCollatorForPreference` lays out tokens
(chosen rows then rejected rows, ``[2B, L]``, same truncation slice, right padding), so a step
id always sits on the token it was computed for; prompt and padding positions get -1.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from schemas.aggregate import aggregate
from schemas.convert import format_completion, step_char_spans

NO_STEP = -1


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _ids(tokenizer, text: str) -> list[int]:
    # The same call TRL's `_tokenize` makes for non-conversational text.
    return list(tokenizer(text=text)["input_ids"])


def step_boundaries(tokenizer, prompt: str, steps: Sequence[str], sep: str, full_ids: Sequence[int],
                    suffix: str = "") -> list[int]:
    """Absolute token index where each step but the last ends in ``full_ids``."""
    spans = step_char_spans(steps, sep)
    completion = format_completion(steps, sep) + suffix
    bounds = []
    for _, end in spans[:-1]:
        bounds.append(common_prefix_length(_ids(tokenizer, prompt + completion[:end]), full_ids))
    return bounds


def completion_step_ids(
    full_ids: Sequence[int], prompt_len: int, bounds: Sequence[int], num_steps: int
) -> list[int]:
    """Step id of every completion token (tokens ``full_ids[prompt_len:]``)."""
    last = max(num_steps - 1, 0)
    return [min(bisect_right(bounds, i), last) for i in range(prompt_len, len(full_ids))]


def wants_eos(mode: str, chosen_steps: Sequence[str], rejected_steps: Sequence[str]) -> bool:
    """Whether both completions of a pair end with EOS (decided per pair, never per side, so EOS
    itself is never what separates chosen from rejected).

    Step-DPO rule (``auto``): a pair of single-step continuations (first-error pairs with
    ``--continuation step``) gets no EOS, so the model does not learn to stop after one step;
    completions that run to the end of a solution (whole solutions, ``--continuation rest``)
    end with EOS, as in TRL.
    """
    if mode == "always":
        return True
    if mode == "never":
        return False
    return max(len(chosen_steps), len(rejected_steps)) > 1


def _offset_step_ids(offsets: Sequence[tuple[int, int]], prompt_len: int, text_start: int,
                     spans: Sequence[tuple[int, int]], text: str | None = None) -> list[int]:
    """Step of each completion token from where its text starts (fast tokenizers).

    A token belongs to the step its first non-space character is in (given ``text``), so with
    ``--step_separator " "`` the token " c" that carries the separator belongs to the step "c"
    starts, as a per-step tokenization assigns it; an all-space token (a "\n" separator) stays
    with the step before. Characters before the completion (a token merged across the prompt
    boundary) count for step 0, characters after the last step (EOS) for the last step. A
    special token with an empty (0, 0) offset keeps the step of the token before it, so ids
    never decrease.
    """
    starts = [s for s, _ in spans[1:]]
    last = max(len(spans) - 1, 0)
    out: list[int] = []
    prev = 0
    for start, end in offsets[prompt_len:]:
        if start == end == 0 and out:
            step = prev
        else:
            if text is not None:
                piece = text[start:end]
                lead = len(piece) - len(piece.lstrip())
                if lead < len(piece):
                    start += lead
            step = min(bisect_right(starts, start - text_start), last)
        step = max(step, prev)
        out.append(step)
        prev = step
    return out


def chat_prompt(tokenizer, question: str, prefix_steps: Sequence[str], sep: str = "\n") -> str:
    """The prompt for a chat model: the problem as a user turn rendered with the tokenizer's chat
    template (with the generation prompt), then the shared prefix steps as the start of the
    assistant's answer, each closed by ``sep`` (as `schemas.convert.format_prompt` closes them).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True, but the tokenizer has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _ids(tokenizer, "")[:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]  # the tokenizer adds BOS itself: do not train on two
    return text + "".join(step + sep for step in prefix_steps)


def tokenize_pair(
    tokenizer,
    prompt: str,
    chosen_steps: Sequence[str],
    rejected_steps: Sequence[str],
    sep: str = "\n",
    add_eos: str = "auto",
) -> dict[str, list[int]]:
    """TRL's prompt/chosen/rejected ids plus per-token step ids for both completions.

    A fast tokenizer does it in one batched call with offsets (the ids equal TRL's one-by-one
    calls); any other tokenizer falls back to tokenizing each step prefix.
    """
    suffix = (tokenizer.eos_token or "") if wants_eos(add_eos, chosen_steps, rejected_steps) else ""
    text_w = prompt + format_completion(chosen_steps, sep) + suffix
    text_l = prompt + format_completion(rejected_steps, sep) + suffix
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text=[prompt, text_w, text_l], return_offsets_mapping=True)
        prompt_ids, full_w, full_l = (list(x) for x in enc["input_ids"])
        prompt_len = min(common_prefix_length(prompt_ids, full_w), common_prefix_length(prompt_ids, full_l))
        off_w, off_l = enc["offset_mapping"][1], enc["offset_mapping"][2]
        step_w = _offset_step_ids(off_w, prompt_len, len(prompt), step_char_spans(chosen_steps, sep), text_w)
        step_l = _offset_step_ids(off_l, prompt_len, len(prompt), step_char_spans(rejected_steps, sep), text_l)
    else:
        prompt_ids = _ids(tokenizer, prompt)
        full_w, full_l = _ids(tokenizer, text_w), _ids(tokenizer, text_l)
        prompt_len = min(common_prefix_length(prompt_ids, full_w), common_prefix_length(prompt_ids, full_l))
        bounds_w = step_boundaries(tokenizer, prompt, chosen_steps, sep, full_w, suffix)
        bounds_l = step_boundaries(tokenizer, prompt, rejected_steps, sep, full_l, suffix)
        step_w = completion_step_ids(full_w, prompt_len, bounds_w, len(chosen_steps))
        step_l = completion_step_ids(full_l, prompt_len, bounds_l, len(rejected_steps))
    return {
        "prompt_ids": prompt_ids[:prompt_len],
        "chosen_ids": full_w[prompt_len:],
        "rejected_ids": full_l[prompt_len:],
        "chosen_step_ids": step_w,
        "rejected_step_ids": step_l,
    }


def _truncate(rows: list[list[int]], max_length: int | None, mode: str) -> list[list[int]]:
    if max_length is None:
        return rows
    sl = slice(None, max_length) if mode == "keep_start" else slice(-max_length, None)
    return [r[sl] for r in rows]


def _pad(rows: list[list[Any]], width: int, value: Any) -> list[list[Any]]:
    return [r + [value] * (width - len(r)) for r in rows]


def collate_step_ids(
    examples: Sequence[dict[str, Any]], width: int, max_length: int | None, truncation_mode: str
):
    """``[2B, width]`` step ids laid out like `DataCollatorForPreference` lays out tokens."""
    import torch

    rows = [[NO_STEP] * len(e["prompt_ids"]) + list(e["chosen_step_ids"]) for e in examples]
    rows += [[NO_STEP] * len(e["prompt_ids"]) + list(e["rejected_step_ids"]) for e in examples]
    rows = _truncate(rows, max_length, truncation_mode)
    return torch.tensor(_pad(rows, width, NO_STEP), dtype=torch.long)


def _scores(raw: Sequence[float | None] | None, n: int, floor: float, null: float) -> list[float]:
    raw = list(raw) if raw is not None else []
    out = []
    for k in range(n):
        s = raw[k] if k < len(raw) else None
        if s is None or (isinstance(s, float) and math.isnan(s)):
            s = null
        out.append(min(max(float(s), floor), 1.0 - floor) if floor > 0 else float(s))
    return out


def pair_reward(example: dict[str, Any], side: str, cfg) -> float:
    """R of one side: the reward `stepdpo pairs` stored (aggregated with its --aggregate), or,
    when ``cfg.aggregation`` is set, the step scores re-aggregated with it. A row without a stored
    reward falls back to aggregating its scores (product when none is named); no score at all is 0.
    """
    stored = example.get(f"{side}_reward")
    if cfg.aggregation is None and stored is not None:
        return float(stored)
    r = aggregate(example.get(f"{side}_scores"), cfg.aggregation or "product", cfg.score_floor)
    if r is None:
        r = stored
    return float(r) if r is not None else 0.0


def collate_step_fields(examples: Sequence[dict[str, Any]], cfg) -> dict[str, Any]:
    """Scores, step masks, rewards (`pair_reward`) and optional precomputed reference step
    log-probs, ``[B, K]``.

    A step's presence is carried by the mask (its index < the number of steps), never by its
    score, so a step scored 0 is weighted like any other.
    """
    import torch

    k_max = max(max(len(e["chosen_steps"]), len(e["rejected_steps"])) for e in examples)
    out: dict[str, Any] = {}
    for side in ("chosen", "rejected"):
        n = [len(e[f"{side}_steps"]) for e in examples]
        q = [_scores(e.get(f"{side}_scores"), k, cfg.score_floor, cfg.null_score) for e, k in zip(examples, n, strict=True)]
        out[f"{side}_step_scores"] = torch.tensor(_pad(q, k_max, 0.0), dtype=torch.float32)
        out[f"{side}_num_steps"] = torch.tensor(n, dtype=torch.long)
        rewards = [pair_reward(e, side, cfg) for e in examples]
        out[f"{side}_rewards"] = torch.tensor(rewards, dtype=torch.float32)
        ref_key = f"ref_{side}_step_logps"
        if all(e.get(ref_key) is not None for e in examples):
            refs = [list(map(float, e[ref_key])) for e in examples]
            for r, k in zip(refs, n, strict=True):
                if len(r) != k:
                    raise ValueError(f"{ref_key} has {len(r)} values for {k} steps")
            out[ref_key] = torch.tensor(_pad(refs, k_max, 0.0), dtype=torch.float32)
    return out
