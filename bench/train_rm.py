"""Reward-model training benchmark (DESIGN.md §7): PRM step time vs TRL's SFTTrainer.

The same backbone weights and the same tokens (GSM8K solutions in the PRM layout: chat
template, `<extra_0>` after each step): TRL's `SFTTrainer` trains the causal LM on them (the
usual fine-tuning cost of those tokens), `stepdpo train-rm`'s `RewardModelTrainer` trains the PRM
(base model + 2-way head read only at the separators). Time per training step = loss + backward
+ optimizer step on one fixed batch; variants run round-robin so a busy machine slows them
alike; medians are reported. Target: PRM ≤ 1.1× SFT.

    .venv/bin/python bench/train_rm.py            # writes bench/results/train_rm.json
    .venv/bin/python bench/train_rm.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.prm_models import CHATML, gsm8k_sample  # noqa: E402


def run_bench(workdir: Path, steps: int, batch: int, hidden: int, layers: int, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trainer.reward_data import RewardCollator, make_example
    from trainer.reward_model import (
        RewardModelConfig,
        RewardModelTrainer,
        build_model,
        prepare_tokenizer,
    )
    from trainer.tiny_model import build_tiny_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = build_tiny_model(workdir / "base", arch="qwen2", hidden=hidden, layers=layers,
                            extra_tokens=["<extra_0>", "<|im_start|>", "<|im_end|>"])
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = CHATML
    tok.save_pretrained(base)
    cfg = RewardModelConfig(output_dir=str(workdir / "rm"), report_to="none", use_cpu=True, save_strategy="no",
                            per_device_train_batch_size=batch, learning_rate=1e-4)
    assert prepare_tokenizer(tok, cfg) is False  # <extra_0> is already one token: same ids both sides
    rows = [{"prompt": q, "steps": s, "labels": [float(i % 3 != 2) for i in range(len(s))]}
            for q, s in gsm8k_sample(batch)]
    examples = [make_example(r, tok, cfg) for r in rows]
    rm_model = build_model(str(base), tok, cfg, False, {})
    rm = RewardModelTrainer(model=rm_model, args=cfg, train_dataset=Dataset.from_list(examples),
                            data_collator=RewardCollator(tok.pad_token_id), processing_class=tok)
    sft_cfg = SFTConfig(output_dir=str(workdir / "sft"), report_to="none", use_cpu=True, save_strategy="no",
                        per_device_train_batch_size=batch, learning_rate=1e-4, max_length=None,
                        gradient_checkpointing=False)
    sft = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=sft_cfg, processing_class=tok,
                     train_dataset=Dataset.from_list([{"input_ids": e["input_ids"]} for e in examples]))
    rm_batch = rm.data_collator(examples)
    sft_batch = sft.data_collator([sft.train_dataset[i] for i in range(batch)])
    assert torch.equal(rm_batch["input_ids"][rm_batch["attention_mask"].bool()],
                       sft_batch["input_ids"][sft_batch["attention_mask"].bool()])
    tokens = int(rm_batch["attention_mask"].sum())
    for t in (rm, sft):
        t.create_optimizer()

    def one(t, data) -> float:
        t.model.train()
        start = time.perf_counter()
        loss = t.compute_loss(t.model, dict(data))
        loss.backward()
        t.optimizer.step()
        t.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    variants = {"trl_sft": (sft, sft_batch), "prm": (rm, rm_batch)}
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(3):  # warm-up
        for t, data in variants.values():
            one(t, data)
    for _ in range(steps):
        for name, (t, data) in variants.items():
            times[name].append(one(t, data))
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "setup": {"hidden": hidden, "layers": layers, "vocab": len(tok), "batch_responses": batch,
                  "tokens_per_batch": tokens, "separators_per_batch": int((rm_batch["targets"] != -100).sum()),
                  "timed_steps": steps, "device": "cpu", "torch_threads": threads},
        "median_step_s": med,
        "ratio_prm_vs_trl_sft": med["prm"] / med["trl_sft"],
        "target": "<= 1.1",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and a smaller model")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "train_rm.json"))
    args = parser.parse_args(argv)
    steps = args.steps or (5 if args.quick else 30)
    hidden, layers, batch = (64, 2, 4) if args.quick else (256, 4, 8)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_bench(Path(tmp), steps, batch, hidden, layers, args.threads)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
