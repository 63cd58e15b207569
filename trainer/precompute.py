"""Write per-step reference log-probs into pair shards, so training needs no reference model.

Reads every shard of --pairs, runs the reference model once over each pair (tokenized and
truncated exactly as `stepdpo train` will: same separator, EOS rule, chat template, max length
and truncation mode), and writes the same shards to -o with `ref_chosen_step_logps` /
`ref_rejected_step_logps` filled. One shard is in memory at a time. Progress is printed every
30 s; an interrupted run resumes when rerun with the same command (finished shards are kept).
A step truncated away gets log-prob 0, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

from schemas.aggregate import DEFAULT_FLOOR
from schemas.convert import DEFAULT_SEPARATOR
from schemas.errors import UserError
from schemas.tables import PAIRS, from_rows, parquet_files, read_table, write_table

DTYPES = ("auto", "float32", "bfloat16", "float16")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, help="folder (or file) of pair shards")
    parser.add_argument("--model", required=True, help="reference model: local path or hub id")
    parser.add_argument("-o", "--output", required=True, help="folder for the filled pair shards")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default: 8)")
    parser.add_argument("--max-length", type=int, default=1024,
                        help="same max_length as training; 0 for none (default: 1024)")
    parser.add_argument("--truncation-mode", default="keep_start", choices=["keep_start", "keep_end"],
                        help="same truncation_mode as training (default: keep_start)")
    parser.add_argument("--step-separator", default=DEFAULT_SEPARATOR,
                        help="text between steps, as in training (default: newline)")
    parser.add_argument("--add-eos", default="auto", choices=["auto", "always", "never"],
                        help="EOS rule, as in training (default: auto)")
    parser.add_argument("--chat-template", action="store_true",
                        help="render the problem with the tokenizer's chat template, as `train --chat_template true`")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="weights dtype: auto = bfloat16 on CUDA, float32 on CPU (default: auto)")


def _cfg(sep: str, add_eos: str) -> SimpleNamespace:
    # The collator reads these; rewards/scores are irrelevant to the reference pass.
    return SimpleNamespace(score_floor=DEFAULT_FLOOR, null_score=0.5, aggregation="product",
                           step_separator=sep, add_eos=add_eos)


def reference_step_logps(model, tokenizer, rows: list[dict], *, sep: str = DEFAULT_SEPARATOR,
                         add_eos: str = "auto", max_length: int | None = 1024,
                         truncation_mode: str = "keep_start", batch_size: int = 8,
                         chat_template: bool = False, progress=None):
    """Per-step reference log-probs ``(chosen, rejected)`` for pairs rows, one list per row.

    ``progress``, when given, is called with the number of rows done after every batch.

    ``model`` must carry TRL's fused LM head (see :func:`load_reference`) so the numbers are
    the ones the trainer would compute with a live reference model.
    """
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from trainer.alignment import chat_prompt, tokenize_pair
    from trainer.data import to_example
    from trainer.stepwise_trainer import StepwiseCollator, per_token_logps, step_sums

    cfg = _cfg(sep, add_eos)
    base = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=max_length,
                                     truncation_mode=truncation_mode)
    collator = StepwiseCollator(base, cfg)
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
            tok, _ = per_token_logps(model, kwargs, labels.to(device))
        k_max = batch["chosen_step_scores"].size(1)
        steps = step_sums(tok[:, -(mask.size(1) - 1):].float(), batch["step_ids"][:, 1:].to(device), k_max)
        steps = steps.cpu()
        b = len(examples)
        for i, ex in enumerate(examples):
            chosen_out.append(steps[i, : len(ex["chosen_steps"])].tolist())
            rejected_out.append(steps[b + i, : len(ex["rejected_steps"])].tolist())
        if progress is not None:
            progress(len(chosen_out))
    return chosen_out, rejected_out


def load_reference(model_id: str, dtype: str = "auto"):
    """Model + tokenizer, on CUDA when present, with TRL's fused LM head added."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

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


def run(args: argparse.Namespace) -> int:
    from trainer.data import pair_files

    files = pair_files(args.pairs)
    out = Path(args.output)
    if out.resolve() == Path(args.pairs).resolve() or any(f.parent.resolve() == out.resolve() for f in files):
        raise UserError(f"{out}: write to a new folder, not over the input shards")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    max_length = args.max_length or None
    settings = {"model": args.model, "max_length": max_length, "truncation_mode": args.truncation_mode,
                "step_separator": args.step_separator, "add_eos": args.add_eos,
                "chat_template": args.chat_template, "source": os.fspath(args.pairs)}
    meta = out / "precompute.json"
    if meta.is_file():  # a rerun resumes, but only with the same settings
        try:
            before = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise UserError(f"{out} holds reference log-probs made with other settings ({', '.join(changed)}): "
                            "write to a new folder")
    out.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({**settings, "complete": False}, indent=2) + "\n", encoding="utf-8")
    model, tokenizer = load_reference(args.model, args.dtype)
    t0 = time.perf_counter()
    n = 0
    for index, f in enumerate(files, 1):
        table = read_table(f, PAIRS)
        done = out / f.name
        if done.is_file():  # finished by an interrupted run with the same settings
            try:
                kept = read_table(done, PAIRS)
            except UserError:
                kept = None
            if kept is not None and kept.column("pair_id").to_pylist() == table.column("pair_id").to_pylist():
                n += table.num_rows
                print(f"{f.name}: {table.num_rows} pairs (already done)", flush=True)
                continue
        rows = table.to_pylist()
        last = [time.perf_counter()]

        def report(count, name=f.name, total=len(rows), index=index, last=last):
            now = time.perf_counter()
            if now - last[0] >= 30:
                last[0] = now
                print(f"{name} ({index}/{len(files)}): {count}/{total} pairs, {now - t0:.0f}s", flush=True)

        chosen, rejected = reference_step_logps(
            model, tokenizer, rows, sep=args.step_separator, add_eos=args.add_eos,
            max_length=max_length, truncation_mode=args.truncation_mode, batch_size=args.batch_size,
            chat_template=args.chat_template, progress=report)
        for row, c, r in zip(rows, chosen, rejected, strict=True):
            row["ref_chosen_step_logps"] = c
            row["ref_rejected_step_logps"] = r
        write_table(from_rows(rows, PAIRS), done, PAIRS)
        n += len(rows)
        print(f"{f.name}: {len(rows)} pairs", flush=True)
    meta.write_text(json.dumps({**settings, "pairs": n, "complete": True}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {n} pairs with reference step log-probs to {out} in {time.perf_counter() - t0:.1f}s "
          f"({len(parquet_files(out))} shards)")
    return 0
