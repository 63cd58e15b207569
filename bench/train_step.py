"""Trainer benchmark (DESIGN.md §7): step time and streaming memory.

1. Time per training step (forward + backward) on one tiny model and one fixed batch:
   TRL's own DPOTrainer (sigmoid, reference model) vs StepwiseDPOTrainer `step_weighted`
   with a reference model and with per-step reference log-probs precomputed into the rows.
   Variants run round-robin so a busy machine slows them alike; medians are reported.
   Target: step_weighted ≤ 1.10× TRL; precomputed faster than TRL with a reference model.
2. Packing (issue #14): one optimizer step (forward + backward, reference model included) on
   GSM8K first-error pairs, `--continuation step` (one step each side after a long shared
   prefix) and `rest` (everything from the first error on: variable-length completions), the
   same pairs and so the same real tokens per step: TRL's own padded DPOTrainer (sigmoid) vs
   ours with `--packing none`, `padding_free` and `prefix_shared`. Reports step time, positions
   computed (rows × width of the policy forward), the activation memory saved for backward
   (sum of saved-tensor bytes; CUDA: peak allocated too) and the loss (equal across variants).
   Targets: prefix_shared >= 1.5x faster than TRL on step pairs, padding_free >= 1.2x on rest.
3. Peak RSS of the full streaming input pipeline (Parquet shards → rows → TRL-identical
   tokenization with step ids → collated batches) over 20k vs 200k pairs, each in a fresh
   process. Target: within 10%.

    .venv/bin/python bench/train_step.py            # writes bench/results/train_step.json
    .venv/bin/python bench/train_step.py --quick    # fewer steps, 2k vs 20k pairs
    .venv/bin/python bench/train_step.py --only packing   # just section 2 (kept: the others)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.trainer_util import gsm8k_pair_rows, preference_rows, write_pairs  # noqa: E402


def _rss_mb() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(workdir: Path, steps: int, batch: int, hidden: int, layers: int, max_length: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trainer.config import StepwiseDPOConfig
    from trainer.precompute import load_reference, reference_step_logps
    from trainer.stepwise_trainer import StepwiseDPOTrainer
    from trainer.tiny_model import build_tiny_model

    torch.manual_seed(0)
    model_dir = build_tiny_model(workdir / "model", hidden=hidden, layers=layers)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = gsm8k_pair_rows(batch)
    prefs = preference_rows(rows)
    common = dict(output_dir=str(workdir / "out"), report_to=[], bf16=False, use_cpu=True,
                  per_device_train_batch_size=batch, max_length=max_length, gradient_checkpointing=False,
                  save_strategy="no", beta=0.1)

    ref, _ = load_reference(str(model_dir))
    chosen, rejected = reference_step_logps(ref, tok, rows, max_length=max_length, add_eos="always")
    del ref
    filled = [dict(r, ref_chosen_step_logps=c, ref_rejected_step_logps=x)
              for r, c, x in zip(rows, chosen, rejected, strict=True)]

    def ours(data, **kw):
        args = StepwiseDPOConfig(**common, add_eos="always", **kw)
        return StepwiseDPOTrainer(AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                                  train_dataset=Dataset.from_list(preference_rows(data)), processing_class=tok)

    trainers = {
        "trl_sigmoid_ref_model": DPOTrainer(
            AutoModelForCausalLM.from_pretrained(model_dir), args=DPOConfig(**common),
            train_dataset=Dataset.from_list([{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in prefs]),
            processing_class=tok),
        "stepwise_sigmoid_ref_model": ours(rows, stepwise_loss="sigmoid"),
        "step_weighted_ref_model": ours(rows, stepwise_loss="step_weighted", step_temperature=1.0),
        "step_weighted_precomputed_ref": ours(filled, stepwise_loss="step_weighted", step_temperature=1.0),
    }
    assert trainers["step_weighted_precomputed_ref"].ref_model is None
    batches = {name: t.data_collator([t.train_dataset[i] for i in range(batch)]) for name, t in trainers.items()}
    tokens = int(batches["trl_sigmoid_ref_model"]["attention_mask"].sum())

    def one(name):
        t = trainers[name]
        t.model.train()
        t.model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = t.compute_loss(t.model, dict(batches[name]))
        loss.backward()
        return time.perf_counter() - start, loss.item()

    times: dict[str, list[float]] = {n: [] for n in trainers}
    losses: dict[str, float] = {}
    for _ in range(3):  # warm-up
        for n in trainers:
            one(n)
    for _ in range(steps):
        for n in trainers:
            dt, loss = one(n)
            times[n].append(dt)
            losses[n] = loss
    med = {n: statistics.median(v) for n, v in times.items()}
    base = med["trl_sigmoid_ref_model"]
    return {
        "setup": {"hidden": hidden, "layers": layers, "batch_pairs": batch, "max_length": max_length,
                  "tokens_per_batch": tokens, "timed_steps": steps, "device": "cpu",
                  "torch_threads": torch.get_num_threads()},
        "median_step_s": med,
        "ratio_vs_trl_sigmoid": {n: v / base for n, v in med.items()},
        "loss_at_init": losses,
        "target": "step_weighted_ref_model <= 1.10x; precomputed < 1.0x",
    }


def _rest_rows(n: int) -> list[dict]:
    """First-error pairs with ``--continuation rest``: each side runs from the first error to the
    end (chosen: the gold rest; rejected: the corrupted step and the rest after it)."""
    from tests.trainer_util import SAMPLE, _corrupt

    rows = []
    for r in gsm8k_pair_rows(n, strategy="first-error"):
        ex = next(json.loads(x) for x in SAMPLE.read_text(encoding="utf-8").splitlines()
                  if json.loads(x)["question"] == r["prompt"])
        steps = [s for s in ex["answer"].split("\n") if s.strip()]
        e = len(r["prefix_steps"])
        tail = steps[e + 1:]
        wrong_tail = tail[:-1] + [_corrupt(tail[-1])] if tail else []
        rows.append(dict(r, chosen_steps=steps[e:], rejected_steps=r["rejected_steps"] + wrong_tail,
                         chosen_scores=[1.0] * len(steps[e:]), rejected_scores=[0.0] + [None] * len(wrong_tail)))
    return rows


def packing_steps(workdir: Path, steps: int, batch: int, hidden: int, layers: int, max_length: int) -> dict:
    """Section 2: TRL padded sigmoid vs ours packed / prefix-shared, per continuation."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trainer import packing
    from trainer.config import StepwiseDPOConfig
    from trainer.stepwise_trainer import StepwiseDPOTrainer
    from trainer.tiny_model import build_tiny_model

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model_dir = build_tiny_model(workdir / "pack-model", hidden=hidden, layers=layers)
    tok = AutoTokenizer.from_pretrained(model_dir)
    device = "cuda" if cuda else "cpu"
    common = dict(output_dir=str(workdir / "pack-out"), report_to=[], bf16=False, use_cpu=not cuda,
                  per_device_train_batch_size=batch, max_length=max_length, gradient_checkpointing=False,
                  save_strategy="no", beta=0.1)

    def load():
        return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").to(device)

    def saved_bytes(fn) -> int:
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return total[0]

    out: dict = {}
    for continuation, rows in (("step", gsm8k_pair_rows(batch, strategy="first-error")), ("rest", _rest_rows(batch))):
        prefs = preference_rows(rows)
        trainers = {"trl_sigmoid_padded": DPOTrainer(
            load(), ref_model=load().eval(), args=DPOConfig(**common),
            train_dataset=Dataset.from_list([{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in prefs]),
            processing_class=tok)}
        for mode in ("none", "padding_free", "prefix_shared"):
            trainers[f"ours_sigmoid_{mode}"] = StepwiseDPOTrainer(
                load(), ref_model=load().eval(), processing_class=tok, train_dataset=Dataset.from_list(prefs),
                args=StepwiseDPOConfig(**common, stepwise_loss="sigmoid", add_eos="always", packing=mode))
        batches = {}
        for name, t in trainers.items():
            b = t.data_collator([t.train_dataset[i] for i in range(len(t.train_dataset))])
            batches[name] = {k: v.to(device) if hasattr(v, "to") else v for k, v in b.items()}
        real = int(batches["trl_sigmoid_padded"]["attention_mask"].sum())
        assert all(int(b["attention_mask"].sum()) == real for b in batches.values())  # same pairs, same tokens

        def one(t, b):
            t.model.train()
            t.model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = t.compute_loss(t.model, dict(b))
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start, loss.item()

        times: dict[str, list[float]] = {n: [] for n in trainers}
        loss_at_init, memory, peak = {}, {}, {}
        for name, t in trainers.items():
            b = batches[name]
            one(t, b)  # warm-up
            memory[name] = saved_bytes(lambda t=t, b=b: t.compute_loss(t.model, dict(b))) / 2**20
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                base_alloc = torch.cuda.memory_allocated()
                one(t, b)
                peak[name] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
        for _ in range(steps):
            for name, t in trainers.items():
                dt, loss = one(t, batches[name])
                times[name].append(dt)
                loss_at_init[name] = loss
        med = {n: statistics.median(v) for n, v in times.items()}
        base = med["trl_sigmoid_padded"]
        out[continuation] = {
            "pairs_per_step": batch,
            "real_tokens_per_step": real,
            "positions_computed": {n: packing.tokens_computed(b) for n, b in batches.items()},
            "median_step_s": med,
            "speedup_vs_trl": {n: base / v for n, v in med.items()},
            "saved_activations_mib": memory,
            **({"cuda_peak_step_mib": peak} if cuda else {}),
            "loss": loss_at_init,
        }
        print(f"continuation {continuation}: {json.dumps(out[continuation], indent=2)}", flush=True)
    return {
        "setup": {"hidden": hidden, "layers": layers, "batch_pairs": batch, "max_length": max_length,
                  "timed_steps": steps, "device": device, "attn_implementation": "sdpa",
                  "torch_threads": torch.get_num_threads()},
        **out,
        "target": "prefix_shared >= 1.5x TRL on step pairs; padding_free >= 1.2x TRL on rest pairs",
    }


def _stream_child(pairs_dir: str, batch: int) -> None:
    """Runs in a fresh process: stream every pair through the real input pipeline."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from trainer.alignment import tokenize_pair
    from trainer.config import StepwiseDPOConfig
    from trainer.data import load_pairs
    from trainer.stepwise_trainer import StepwiseCollator
    from trainer.trl_compat import DataCollatorForPreference

    tok = AutoTokenizer.from_pretrained(os.environ["BENCH_MODEL"])
    cfg = StepwiseDPOConfig(output_dir=tempfile.mkdtemp(), report_to=[], bf16=False, use_cpu=True)
    collator = StepwiseCollator(DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=1024), cfg)
    # Shuffled like `stepdpo train` streams it (shard order + a bounded row buffer).
    ds = load_pairs(pairs_dir, shuffle_seed=0).map(lambda e: tokenize_pair(tok, e["prompt"], e["chosen_steps"], e["rejected_steps"]))
    before = _rss_mb()
    samples = []
    start = time.perf_counter()
    n = batches = 0
    for b in DataLoader(ds, batch_size=batch, collate_fn=collator):
        n += b["chosen_num_steps"].numel()
        batches += 1
        if batches % 25 == 0:
            samples.append(_rss_mb())
    samples.append(_rss_mb())
    print(json.dumps({"pairs": n, "batches": batches, "seconds": time.perf_counter() - start,
                      "rss_before_mb": before, "peak_rss_while_streaming_mb": max(samples),
                      "rss_at_end_mb": samples[-1],
                      "process_high_water_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def stream_memory(workdir: Path, sizes: list[int], per_shard: int, batch: int) -> dict:
    from trainer.tiny_model import build_tiny_model

    model_dir = build_tiny_model(workdir / "stream-model", hidden=16, layers=1)
    results = {}
    for n in sizes:
        folder = workdir / f"pairs-{n}"
        for k in range(0, n, per_shard):  # generated shard by shard: the parent stays small too
            rows = gsm8k_pair_rows(min(per_shard, n - k), offset=k)
            write_pairs(folder / f"s{k // per_shard:05d}", rows)
            src = folder / f"s{k // per_shard:05d}" / "part-00000.parquet"
            src.rename(folder / f"part-{k // per_shard:05d}.parquet")
            (folder / f"s{k // per_shard:05d}" / "pairs.json").unlink()
            (folder / f"s{k // per_shard:05d}").rmdir()
        shards = sorted(p.name for p in folder.glob("*.parquet"))  # the manifest `train` requires
        (folder / "pairs.json").write_text(json.dumps({"schema": "pairs/1", "shards": shards}), encoding="utf-8")
        env = dict(os.environ, BENCH_MODEL=str(model_dir))
        proc = subprocess.run([sys.executable, __file__, "--_stream", str(folder), "--batch", str(batch)],
                              env=env, capture_output=True, text=True, check=True)
        results[str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"streamed {n} pairs: {results[str(n)]}", flush=True)
    small, large = (results[str(s)]["peak_rss_while_streaming_mb"] for s in (sizes[0], sizes[-1]))
    return {"per_size": results, "peak_rss_ratio_large_vs_small": large / small,
            "target": "within 10% (ratio <= 1.10)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--sizes", type=int, nargs=2, default=[20_000, 200_000])
    ap.add_argument("--per-shard", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="10 steps, 2k vs 20k pairs")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--only", choices=["packing"], help="run one section, keep the others' last results")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_step.json"))
    ap.add_argument("--_stream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._stream:
        _stream_child(args._stream, args.batch)
        return 0
    if args.quick:
        args.steps, args.sizes, args.per_shard = 10, [2_000, 20_000], 1_000
    result = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only is None:
            result["step_time"] = time_steps(work, args.steps, args.batch, args.hidden, args.layers,
                                             args.max_length)
            print(json.dumps(result["step_time"], indent=2), flush=True)
        result["packing"] = packing_steps(work, args.steps, args.batch, args.hidden, args.layers, args.max_length)
        if not args.skip_memory and args.only is None:
            result["streaming_memory"] = stream_memory(work, args.sizes, args.per_shard, args.batch)
    out = Path(args.out)
    if (args.skip_memory or args.only) and out.exists():  # keep the last results of the skipped sections
        previous = json.loads(out.read_text(encoding="utf-8"))
        for key in ("step_time", "streaming_memory"):
            if key in previous and key not in result:
                result[key] = previous[key]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
