"""Write per-step reference log-probs into pair shards, so training needs no reference model.

Reads every shard of --pairs, runs the reference model once over each pair (tokenized and
truncated exactly as `stepdpo train` will: same separator, EOS rule, chat template, max length
and truncation mode; packed as training packs, see `trainer.packing`), and writes the same
shards to -o with `ref_chosen_step_logps` / `ref_rejected_step_logps` filled. One shard is in memory at a time. Progress is printed every
30 s; an interrupted run resumes when rerun with the same command (finished shards are kept).
A step truncated away gets log-prob 0, as in training.
"""

from __future__ import annotations

from types import SimpleNamespace

from schemas.aggregate import DEFAULT_FLOOR
from schemas.convert import DEFAULT_SEPARATOR
from schemas.errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _cfg(sep: str, add_eos: str) -> SimpleNamespace:
    # The collator reads these; rewards/scores are irrelevant to the reference pass.
    return SimpleNamespace(score_floor=DEFAULT_FLOOR, null_score=0.5, aggregation=None,
                           step_separator=sep, add_eos=add_eos)


def reference_step_logps(model, tokenizer, rows: list[dict], *, sep: str = DEFAULT_SEPARATOR,
                         add_eos: str = "auto", max_length: int | None = 1024,
                         truncation_mode: str = "keep_start", batch_size: int = 8,
                         chat_template: bool = False, progress=None, packing: str = "auto"):
    """Per-step reference log-probs ``(chosen, rejected)`` for pairs rows, one list per row.

    ``packing`` lays each batch out as training does (`trainer.packing`; ``auto``: the fastest
    the model's attention supports); the numbers are the padded path's whatever the layout.

    ``progress``, when given, is called with the number of rows done after every batch.

    ``model`` must carry TRL's fused LM head (see :func:`load_reference`) so the numbers are
    the ones the trainer would compute with a live reference model.
    """
    import torch

    from trainer import packing as packing_lib
    from trainer.alignment import chat_prompt, tokenize_pair
    from trainer.data import shared_leading_steps, to_example
    from trainer.stepwise_trainer import StepwiseCollator, per_token_logps, step_sums
    from trainer.trl_compat import DataCollatorForPreference

    cfg = _cfg(sep, add_eos)
    base = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length,
                                     truncation_mode=truncation_mode)
    impl = packing_lib.attn_implementation(model)
    collator = StepwiseCollator(base, cfg, packing_lib.resolve_packing(packing, impl), impl)
    device = next(model.parameters()).device
    chosen_out: list[list[float]] = []
    rejected_out: list[list[float]] = []
    for start in range(0, len(rows), batch_size):
        examples = []
        for row in rows[start:start + batch_size]:
            ex = to_example(row, sep)
            prompt = (chat_prompt(tokenizer, ex["question"], ex["prefix_steps"], sep) if chat_template
                      else ex["prompt"])
            ex.update(tokenize_pair(tokenizer, prompt, ex["chosen_steps"], ex["rejected_steps"],
                                    sep=sep, add_eos=add_eos))
            examples.append(ex)
        batch = collator(examples)
        mask = batch["completion_mask"]
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        kwargs = {"input_ids": batch["input_ids"].to(device),
                  "attention_mask": batch["attention_mask"].to(device), "use_cache": False}
        with torch.no_grad():
            if "packed_input_ids" in batch:
                packed = {k: batch[k].to(device) for k in packing_lib.PACKED_KEYS}
                tok, _ = packing_lib.token_logps(model, packed, use_cache=False)
            else:
                tok, _ = per_token_logps(model, kwargs, labels.to(device))
        k_max = batch["chosen_step_scores"].size(1)
        steps = step_sums(tok[:, -(mask.size(1) - 1):].float(), batch["step_ids"][:, 1:].to(device), k_max)
        steps = steps.cpu()
        b = len(examples)
        for i, (row, ex) in enumerate(zip(rows[start:start + batch_size], examples, strict=True)):
            # One value per step of the row as stored; leading steps both sides share are in the
            # prompt (`to_example`), so they get 0, and a reader drops them again.
            shared = [0.0] * shared_leading_steps(list(row["chosen_steps"]), list(row["rejected_steps"]))
            chosen_out.append(shared + steps[i, : len(ex["chosen_steps"])].tolist())
            rejected_out.append(shared + steps[b + i, : len(ex["rejected_steps"])].tolist())
        if progress is not None:
            progress(len(chosen_out))
    return chosen_out, rejected_out


def load_reference(model_id: str, dtype: str = "auto"):
    """Model + tokenizer, on CUDA when present, with TRL's fused LM head added."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.trl_compat import add_fused_lm_head

    cuda = torch.cuda.is_available()
    if dtype == "auto":
        dtype = "bfloat16" if cuda else "float32"
    kwargs = {"dtype": getattr(torch, dtype)}
    if cuda:
        kwargs["attn_implementation"] = "sdpa"
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except OSError as exc:
        raise UserError(f"cannot load model '{model_id}': {exc}".splitlines()[0]) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().to("cuda" if cuda else "cpu")
    add_fused_lm_head(model)
    return model, tokenizer
