"""Write per-step reference log-probs into pair shards, so training needs no reference model.

Reads every shard of --pairs, runs the reference model once over each pair (tokenized and
truncated exactly as `stepdpo train` will: same separator, EOS rule, chat template, max length
and truncation mode), and writes the same shards to -o with `ref_chosen_step_logps` /
`ref_rejected_step_logps` filled. One shard is in memory at a time. Progress is printed every
30 s; an interrupted run resumes when rerun with the same command (finished shards are kept).
A step truncated away gets log-prob 0, as in training.

The output folder is whole or refused: shards that are not among the input's (left by an
earlier run over differently sharded pairs) are removed, and `pairs.json` (the input's, with
its judges) and `precompute.json` (settings, shard list, pair count, complete) are written last
and atomically; `stepdpo train` refuses the folder until then.

  stepdpo precompute-ref --pairs work/pairs --model Qwen/Qwen2.5-0.5B-Instruct -o work/pairs-ref
  stepdpo precompute-ref --pairs work/pairs --model work/sft --max_length 2048 -o work/pairs-ref
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from schemas.atomic import atomic_write_json
from schemas.convert import DEFAULT_SEPARATOR
from schemas.errors import UserError
from schemas.folders import write_manifest
from schemas.tables import PAIRS, from_rows, parquet_files, read_table, write_table
from trainer.precompute import DTYPES


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


def run(args: argparse.Namespace) -> int:
    from trainer.data import MANIFEST, pair_files, pairs_manifest
    from trainer.precompute import load_reference, reference_step_logps

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
    source_manifest = pairs_manifest(args.pairs)
    atomic_write_json(meta, {**settings, "complete": False})
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is partial until the end
    names = {f.name for f in files}
    for stale in sorted(out.glob("*.parquet")):  # from a run over differently sharded pairs
        if stale.name not in names:
            stale.unlink()
            print(f"removed {stale.name} (not a shard of {args.pairs})", flush=True)
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
    # Manifests last (schemas.folders: complete, listing the shards present): the input's
    # pairs.json, so the judges and aggregation travel with the shards, then precompute.json.
    write_manifest(out, MANIFEST, {**(source_manifest or {"schema": PAIRS.tag, "inputs": [settings["source"]]}),
                                   "reference_logps": meta.name})
    write_manifest(out, meta.name, {**settings, "pairs": n})
    print(f"wrote {n} pairs with reference step log-probs to {out} in {time.perf_counter() - t0:.1f}s "
          f"({len(parquet_files(out))} shards)")
    return 0
