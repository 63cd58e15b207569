"""Local PRM: single-pass batched scoring vs one forward pass per step prefix.

The seeds scored step k by running the model on the prefix ending at step k, so a K-step
response cost K passes over ever longer prefixes. The `prm` judge reads every step of a
response from one pass (a separator after each step) and batches responses of similar length.
This measures steps/s of both on the same tiny model and the same GSM8K responses, and checks
that they give the same scores.

    .venv/bin/python bench/prm_throughput.py                      # tiny PRMs of all 3 styles, 500 rows
    .venv/bin/python bench/prm_throughput.py --style shepherd --n 200
    .venv/bin/python bench/prm_throughput.py --model PATH --style qwen --device cuda
    .venv/bin/python bench/prm_throughput.py --ray-only --n 500     # `label --engine ray` (2 workers) vs local

With --ray (or --ray-only) it also runs `stepdpo label` on the same rows twice, the local engine
and `--engine ray --num-workers 2` on a 2-CPU Ray started beforehand, and records rows/s of each
(model loads included, cluster start-up excluded) and whether the scores agree (<= 1e-5). On a
2-core box that ratio says little about a GPU cluster: the point there is correctness and the
recipe; it is recorded honestly with the machine's load.

Writes bench/results/prm_throughput.json (target: speedup >= 10x, max_abs_diff <= 1e-4). The
headline is the first --threads setting (1 by default): with more threads than idle cores, the
many tiny batch-1 forwards of the per-prefix loop pay OpenMP synchronisation on every op, which
inflates the speedup on a busy machine; the other setting is recorded beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

GSM8K_TEST = REPO / "data" / "gsm8k" / "test.jsonl"  # bundled: all 1,319 GSM8K test problems


def per_prefix_scores(judge: PRMJudge, item: Item, work: dict[str, int]) -> list[float]:
    """The seeds' loop: one unbatched forward pass per step prefix, full logits, read at the
    prefix's last separator."""
    import torch

    out = []
    for k in range(1, len(item.steps) + 1):
        enc = judge.encode(Item(item.response_id, item.prompt, item.steps[:k]))
        pos = enc.positions[-1]
        ids = torch.tensor([enc.ids], device=judge.device)
        work["forwards"] += 1
        work["tokens"] += len(enc.ids)
        with torch.inference_mode():
            logits = judge.model(input_ids=ids)[0][0, pos].float()
        if judge.style == "qwen":
            out.append(torch.softmax(logits, -1)[judge.class_index].item())
        else:
            out.append(torch.softmax(logits[judge.candidates], -1)[0].item())
    return out


def single_pass_work(judge: PRMJudge, items: list[Item], work: dict[str, int]) -> None:
    """Forward passes and (padded) tokens the judge's length-sorted batches process."""
    lengths = sorted(len(judge.encode(it).ids) for it in items)
    for start in range(0, len(lengths), judge.forward_batch):
        chunk = lengths[start: start + judge.forward_batch]
        work["forwards"] += 1
        work["tokens"] += max(chunk) * len(chunk)


def run_style(style: str, args: argparse.Namespace, items: list[Item], data: Path) -> dict:
    """Both methods on the same model, interleaved chunk by chunk so that load from other
    processes on a shared box hits both alike."""
    n_steps = sum(len(it.steps) for it in items)
    clock = {"single": [0.0, 0.0], "prefix": [0.0, 0.0]}  # [wall, cpu]
    work = {"single": {"forwards": 0, "tokens": 0}, "prefix": {"forwards": 0, "tokens": 0}}
    scores: list[list[float | None]] = []
    naive: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_prm(Path(tmp) / style, style))
        cfg = JudgeConfig(style=style, prm_batch_size=args.batch_size, device=args.device,
                          dtype=args.dtype)
        judge = PRMJudge(model, cfg)
        judge.score_items(items[:4])  # warm-up (allocator, kernels)
        per_prefix_scores(judge, items[0], {"forwards": 0, "tokens": 0})
        for start in range(0, len(items), args.chunk):
            chunk = items[start: start + args.chunk]
            w, c = time.perf_counter(), time.process_time()
            scores += [v.scores for v in asyncio.run(judge.judge(chunk))]
            clock["single"][0] += time.perf_counter() - w
            clock["single"][1] += time.process_time() - c
            w, c = time.perf_counter(), time.process_time()
            naive += [per_prefix_scores(judge, it, work["prefix"]) for it in chunk]
            clock["prefix"][0] += time.perf_counter() - w
            clock["prefix"][1] += time.process_time() - c
            single_pass_work(judge, chunk, work["single"])
    diff = max(abs(a - b) for got, ref in zip(scores, naive, strict=True)
               for a, b in zip(got, ref, strict=True))
    run = {
        "style": style,
        "model": args.model or f"tiny {style} PRM (2 layers, hidden 64, built offline)",
        "data": str(data.relative_to(REPO.parent) if data.is_relative_to(REPO.parent) else data),
        "batch_size": args.batch_size,
        "device": str(judge.device),
        "dtype": judge.dtype_name,
        "single_pass_wall_s": round(clock["single"][0], 3),
        "per_prefix_wall_s": round(clock["prefix"][0], 3),
        "single_pass_cpu_s": round(clock["single"][1], 3),
        "per_prefix_cpu_s": round(clock["prefix"][1], 3),
        "single_pass_steps_per_s": round(n_steps / clock["single"][0], 1),
        "per_prefix_steps_per_s": round(n_steps / clock["prefix"][0], 1),
        "speedup": round(clock["prefix"][0] / clock["single"][0], 2),
        "speedup_cpu_time": round(clock["prefix"][1] / clock["single"][1], 2),
        "forward_passes": {"single_pass": work["single"]["forwards"], "per_prefix": work["prefix"]["forwards"]},
        "tokens_processed": {"single_pass_padded": work["single"]["tokens"],
                             "per_prefix": work["prefix"]["tokens"]},
        "max_abs_diff": diff,
        "scores_equal": diff <= 1e-4,
    }
    print(json.dumps(run), flush=True)
    return run


def ray_vs_local(args: argparse.Namespace, workers: int = 2) -> dict:
    """`stepdpo label` on the same responses: the local engine vs `--engine ray`."""
    import pyarrow.parquet as pq
    import ray

    from stepdpo.cli import main as stepdpo

    data = GSM8K_TEST
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else build_prm(root / "prm", "qwen")
        responses = root / "responses.parquet"
        stepdpo(["ingest", "gsm8k", str(data), "-o", str(responses), "--limit", str(args.n)])
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        timings, scores = {}, {}
        try:
            for engine in ("local", "ray"):
                out = root / engine
                argv = ["label", str(responses), "--judge", f"prm:{model}", "-o", str(out), "--no-cache",
                        "--progress", "none", "--prm-batch-size", str(args.batch_size)]
                if engine == "ray":
                    argv += ["--engine", "ray", "--num-workers", str(workers), "--ray-batch-size",
                             str(args.batch_size * 4)]
                t0 = time.perf_counter()
                assert stepdpo(argv) == 0
                timings[engine] = time.perf_counter() - t0
                t = pq.read_table(sorted(out.glob("*.parquet")))
                scores[engine] = dict(zip(t.column("response_id").to_pylist(), t.column("scores").to_pylist(), strict=True))
        finally:
            ray.shutdown()
    a, b = scores["local"], scores["ray"]
    diff = max(abs(x - y) for k in a for x, y in zip(a[k], b[k], strict=True))
    rows = len(a)
    return {"what": f"stepdpo label rows/s: local engine vs --engine ray with {workers} workers (2-CPU Ray)",
            "rows": rows, "local_s": round(timings["local"], 2), "ray_s": round(timings["ray"], 2),
            "local_rows_per_s": round(rows / timings["local"], 1), "ray_rows_per_s": round(rows / timings["ray"], 1),
            "ray_over_local": round(timings["local"] / timings["ray"], 3),
            "same_rows": a.keys() == b.keys(), "max_abs_diff": diff, "scores_equal": a.keys() == b.keys() and diff <= 1e-5,
            "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", nargs="+", default=["qwen", "shepherd", "yesno"],
                    choices=["qwen", "shepherd", "yesno"])
    ap.add_argument("--model", help="PRM folder or hub id (default: build a tiny one offline)")
    ap.add_argument("--n", type=int, default=500, help="GSM8K responses (default: 500)")
    ap.add_argument("--batch-size", type=int, default=16, help="responses per forward pass")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                    help="torch CPU thread counts to run with (default: 1, steady timings on a shared "
                         "box, then 0 = torch's default)")
    ap.add_argument("--chunk", type=int, default=50, help="responses per interleaved timing chunk")
    ap.add_argument("--ray", action="store_true", help="also compare `label --engine ray` (2 workers) with local")
    ap.add_argument("--ray-only", action="store_true", help="only the Ray comparison (merged into --out)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "prm_throughput.json"))
    args = ap.parse_args(argv)
    if args.ray_only:
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.exists() else {"benchmark": "prm_throughput"}
        result["ray"] = ray_vs_local(args)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["ray"], indent=2))
        return 0 if result["ray"]["scores_equal"] else 1

    import torch

    default_threads = torch.get_num_threads()
    data = GSM8K_TEST
    rows = gsm8k_sample(args.n, data)
    items = [Item(f"gsm8k-{i}", q, steps) for i, (q, steps) in enumerate(rows)]
    n_steps = sum(len(it.steps) for it in items)
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads if threads > 0 else default_threads)
        runs += [{"torch_threads": torch.get_num_threads(), **run_style(style, args, items, data)}
                 for style in args.style]
    headline = [r for r in runs if r["torch_threads"] == runs[0]["torch_threads"]]
    result = {
        "benchmark": "prm_throughput",
        "what": "steps/s of single-pass batched PRM scoring vs one forward pass per step prefix",
        "responses": len(items),
        "steps": n_steps,
        "target_speedup": 10.0,
        "headline_threads": headline[0]["torch_threads"],
        "min_speedup": min(r["speedup"] for r in headline),
        "max_speedup": max(r["speedup"] for r in headline),
        "max_abs_diff": max(r["max_abs_diff"] for r in runs),
        "scores_equal": all(r["scores_equal"] for r in runs),
        "runs": runs,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if args.ray:
        result["ray"] = ray_vs_local(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0 if result["scores_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
