"""Local PRM: single-pass batched scoring vs one forward pass per step prefix.

The seeds scored step k by running the model on the prefix ending at step k, so a K-step
response cost K passes over ever longer prefixes. The `prm` judge reads every step of a
response from one pass (a separator after each step) and batches responses of similar length.
This measures steps/s of both on the same tiny model and the same GSM8K responses, and checks
that they give the same scores.

    .venv/bin/python bench/prm_throughput.py                      # tiny PRMs of all 3 styles, 500 rows
    .venv/bin/python bench/prm_throughput.py --style shepherd --n 200
    .venv/bin/python bench/prm_throughput.py --model PATH --style qwen --device cuda

Writes bench/results/prm_throughput.json (target: speedup >= 10x, max_abs_diff <= 1e-4).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labeler.judges.base import Item  # noqa: E402
from labeler.judges.config import JudgeConfig  # noqa: E402
from labeler.judges.prm import PRMJudge  # noqa: E402
from tests.prm_models import build_prm, gsm8k_sample  # noqa: E402

SHARED_TEST = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
SAMPLE = REPO / "data" / "gsm8k" / "test_sample.jsonl"


def per_prefix_scores(judge: PRMJudge, item: Item) -> list[float]:
    """The seeds' loop: one unbatched forward pass per step prefix, full logits, read at the
    prefix's last separator."""
    import torch

    out = []
    for k in range(1, len(item.steps) + 1):
        enc = judge.encode(Item(item.response_id, item.prompt, item.steps[:k]))
        pos = enc.positions[-1]
        ids = torch.tensor([enc.ids], device=judge.device)
        with torch.inference_mode():
            logits = judge.model(input_ids=ids)[0][0, pos].float()
        if judge.style == "qwen":
            out.append(torch.softmax(logits, -1)[judge.class_index].item())
        else:
            out.append(torch.softmax(logits[judge.candidates], -1)[0].item())
    return out


def run_style(style: str, args: argparse.Namespace, items: list[Item], data: Path) -> dict:
    n_steps = sum(len(it.steps) for it in items)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_prm(Path(tmp) / style, style))
        cfg = JudgeConfig(style=style, prm_batch_size=args.batch_size, device=args.device,
                          dtype=args.dtype)
        judge = PRMJudge(model, cfg)
        judge.score_items(items[:4])  # warm-up (allocator, kernels)
        t0 = time.perf_counter()
        verdicts = asyncio.run(judge.judge(items))
        batched_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive = [per_prefix_scores(judge, it) for it in items]
        naive_s = time.perf_counter() - t0
    diff = max(abs(a - b) for v, ref in zip(verdicts, naive, strict=True)
               for a, b in zip(v.scores, ref, strict=True))
    run = {
        "style": style,
        "model": args.model or f"tiny {style} PRM (2 layers, hidden 64, built offline)",
        "data": str(data.relative_to(REPO.parent) if data.is_relative_to(REPO.parent) else data),
        "batch_size": args.batch_size,
        "device": str(judge.device),
        "dtype": judge.dtype_name,
        "single_pass_s": round(batched_s, 3),
        "per_prefix_s": round(naive_s, 3),
        "single_pass_steps_per_s": round(n_steps / batched_s, 1),
        "per_prefix_steps_per_s": round(n_steps / naive_s, 1),
        "speedup": round(naive_s / batched_s, 2),
        "max_abs_diff": diff,
        "scores_equal": diff <= 1e-4,
    }
    print(json.dumps(run), flush=True)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", nargs="+", default=["qwen", "shepherd", "yesno"],
                    choices=["qwen", "shepherd", "yesno"])
    ap.add_argument("--model", help="PRM folder or hub id (default: build a tiny one offline)")
    ap.add_argument("--n", type=int, default=500, help="GSM8K responses (default: 500)")
    ap.add_argument("--batch-size", type=int, default=16, help="responses per forward pass")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "prm_throughput.json"))
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = SHARED_TEST if SHARED_TEST.exists() else SAMPLE
    rows = gsm8k_sample(args.n, data)
    items = [Item(f"gsm8k-{i}", q, steps) for i, (q, steps) in enumerate(rows)]
    n_steps = sum(len(it.steps) for it in items)
    runs = [run_style(style, args, items, data) for style in args.style]
    result = {
        "benchmark": "prm_throughput",
        "what": "steps/s of single-pass batched PRM scoring vs one forward pass per step prefix",
        "responses": len(items),
        "steps": n_steps,
        "target_speedup": 10.0,
        "min_speedup": min(r["speedup"] for r in runs),
        "max_abs_diff": max(r["max_abs_diff"] for r in runs),
        "scores_equal": all(r["scores_equal"] for r in runs),
        "runs": runs,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0 if result["scores_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
