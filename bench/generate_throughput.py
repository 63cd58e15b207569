"""Generation throughput, measured as ratios in one run.

1. ``hf:`` batched generate (left padding, ``--batch-size`` prompts per call) vs one prompt at a
   time, on the same prompts and the same greedy decoding: samples/s ratio (and whether the
   texts are identical). Default model: a tiny offline Llama built from a config; pass
   ``--model PATH_OR_ID`` for a real one (on a GPU box the ratio is the one that matters).
2. ``openai-compatible:`` through the generate engine (concurrent, rate limiter, retries,
   shards) against the loopback fake policy with 100 ms latency per request vs a sequential
   loop of the same SDK calls: samples/s ratio (target ≥ 50×). The fake runs in its own
   process so its threads don't share our GIL. Both sides are measured after a warm-up.
3. The engine alone, with an in-process backend that only sleeps 100 ms: its own overhead,
   without the SDK, HTTP and the fake's CPU (on a 2-core box those dominate part 2).
4. CPU per request (``time.process_time`` of this process per sample, best of 3 runs of
   ``--cpu-samples``): the engine drawing from the fake at zero latency, in-process. Unlike the
   ratios it is barely moved by other processes' load, so it compares code versions on a busy box.

Writes bench/results/generate_throughput.json.

    .venv/bin/python bench/generate_throughput.py [--prompts 64] [--batch-size 16] [--max-new-tokens 32]
        [--samples 1024] [--naive-samples 20] [--concurrency 64] [--cpu-samples 1000] [--model PATH_OR_ID]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labeler.sources.generation.base import GenRequest, Sampling  # noqa: E402
from labeler.sources.generation.registry import GeneratorOptions, create_generator  # noqa: E402
from schemas.tables import RESPONSES, read_table  # noqa: E402
from stepdpo.cli import main as stepdpo  # noqa: E402
from tests.fakes.policy_server import gold_of, problem_text  # noqa: E402

GSM8K = REPO / "data" / "gsm8k" / "test_sample.jsonl"


def bench_hf(model: str | None, prompts: int, batch_size: int, max_new_tokens: int) -> dict:
    if model is None:
        from trainer.tiny_model import build_tiny_model

        model = str(build_tiny_model(tempfile.mkdtemp(prefix="gen-bench-"), arch="llama", seed=0))
    questions = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines()[:prompts]]
    requests = [GenRequest(key=str(i), prompt=f"Question: {q}\nAnswer: Let's think step by step.\n",
                           prefill="Step 1: ") for i, q in enumerate(questions)]
    greedy = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    batched = create_generator(f"hf:{model}", GeneratorOptions(batch_size=batch_size))
    single = create_generator(f"hf:{model}", GeneratorOptions(batch_size=1))

    def timed(gen, size):
        asyncio.run(gen.generate(requests[:1], greedy))  # warm-up
        start = time.perf_counter()
        out = []
        for i in range(0, len(requests), size):
            out += asyncio.run(gen.generate(requests[i:i + size], greedy))
        return time.perf_counter() - start, out

    t_batch, out_b = timed(batched, batch_size)
    t_one, out_1 = timed(single, 1)
    same = sum(a.text == b.text for a, b in zip(out_b, out_1, strict=True))
    return {"model": model if "gen-bench-" not in model else "tiny llama (2 layers, hidden 64)",
            "device": str(batched.device), "dtype": batched.dtype_name, "prompts": len(requests),
            "batch_size": batch_size, "max_new_tokens": max_new_tokens,
            "batched_samples_per_s": round(len(requests) / t_batch, 2),
            "one_at_a_time_samples_per_s": round(len(requests) / t_one, 2),
            "ratio": round(t_one / t_batch, 2), "identical_texts": f"{same}/{len(requests)}",
            "output_tokens": sum(g.output_tokens for g in out_b)}


@contextlib.contextmanager
def fake_policy(latency: float) -> Iterator[str]:
    """The loopback fake policy in its own process (its threads don't share our GIL); yields its
    OpenAI base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.policy_server", "--latency", str(latency)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int((proc.stdout.readline() if proc.stdout else "PORT 0").split()[1])
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait()


def write_problems(path: Path, n_problems: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": problem_text(i, i + 1),
                                        "answer": gold_of(i, i + 1)}) + "\n" for i in range(n_problems)))
    return path


def bench_api(samples: int, naive_samples: int, concurrency: int, latency: float) -> dict:
    with fake_policy(latency) as url:
        work = Path(tempfile.mkdtemp(prefix="gen-bench-api-"))
        n_problems = max(1, samples // 4)
        problems = write_problems(work / "problems.jsonl", n_problems)
        # Warm-up (imports of the SDK's lazily loaded types), so both sides are measured warm.
        (work / "one.jsonl").write_text(problems.read_text().splitlines()[0] + "\n")
        stepdpo(["generate", str(work / "one.jsonl"), "--generator", f"openai-compatible:policy@{url}", "-o",
                 str(work / "warm"), "--no-cache", "--progress", "none"])
        start, cpu0 = time.perf_counter(), time.process_time()
        rc = stepdpo(["generate", str(problems), "--generator", f"openai-compatible:policy@{url}", "-o",
                      str(work / "gen"), "-n", "4", "--concurrency", str(concurrency), "--no-cache",
                      "--progress", "none"])
        t_wall, t_cpu = time.perf_counter() - start, time.process_time() - cpu0
        run = json.loads((work / "gen" / "run.json").read_text())["runs"][-1]
        t_engine = (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()
        written = read_table(work / "gen", RESPONSES).num_rows
        assert rc == 0 and written == 4 * n_problems, (rc, written)

        import openai

        async def naive() -> float:
            client = openai.AsyncOpenAI(api_key="unused", base_url=url, max_retries=0)
            t0 = time.perf_counter()
            for i in range(naive_samples):
                await client.completions.create(model="policy", prompt=problem_text(i, i + 1) + "\nStep 1: ",
                                                max_tokens=1024, temperature=0.8, top_p=0.95, seed=i)
            await client.close()
            return time.perf_counter() - t0

        t_naive = asyncio.run(naive())
        engine_rate, naive_rate = written / t_engine, naive_samples / t_naive
        return {"latency_s": latency, "samples": written, "concurrency": concurrency,
                "requests": run["requests"], "retries": run["retries"],
                "engine_samples_per_s": round(engine_rate, 1),
                "engine_samples_per_s_with_cli": round(written / t_wall, 1),
                "cli_cpu_ms_per_sample": round(t_cpu / written * 1e3, 3), "naive_samples": naive_samples,
                "naive_samples_per_s": round(naive_rate, 2), "ratio": round(engine_rate / naive_rate, 1)}


def bench_cpu_per_request(samples: int, concurrency: int, repeats: int = 3) -> dict:
    """CPU time of this process per sample (``time.process_time``: what the load of other
    processes does not inflate), the engine drawing from the fake at zero latency, in-process
    (no CLI start-up): the SDK request, HTTP, rows, shards. The best of ``repeats`` runs."""
    from labeler.sources.generation.problems import Problem
    from labeler.sources.generation.prompts import TEMPLATES
    from labeler.sources.generation.runner import GenConfig, GenerationEngine, run_engine
    from labeler.sources.generation.store import GenerationDir
    from labeler.sources.generation.tasks import sample_tasks
    from labeler.sources.splitters import get_splitter

    with fake_policy(0.0) as url:
        def once(n: int) -> tuple[float, float]:
            generator = create_generator(f"openai-compatible:policy@{url}")
            problems = [Problem(f"p{i}", problem_text(i, i + 1), gold_of(i, i + 1), "bench") for i in range(n // 4)]
            sampling = Sampling()
            tasks = sample_tasks(problems, TEMPLATES["step-dpo"], 4, sampling)
            engine = GenerationEngine(generator, GenerationDir(tempfile.mkdtemp(prefix="gen-bench-cpu-")),
                                      GenConfig(concurrency=concurrency, progress="none"), sampling,
                                      get_splitter("step-markers"))
            cpu0, t0 = time.process_time(), time.perf_counter()
            run_engine(engine, tasks, {})
            return (time.process_time() - cpu0) / len(tasks) * 1e3, len(tasks) / (time.perf_counter() - t0)

        once(64)  # warm-up
        runs = [once(samples) for _ in range(repeats)]
    return {"samples": samples, "concurrency": concurrency, "latency_s": 0.0,
            "cpu_ms_per_request": [round(c, 3) for c, _ in runs], "best_cpu_ms_per_request": round(min(c for c, _ in runs), 3),
            "samples_per_s": [round(r, 1) for _, r in runs]}


def bench_engine_only(samples: int, concurrency: int, latency: float) -> dict:
    """The engine with an in-process backend that only sleeps ``latency``: its own overhead
    (rate limiter, retries, rows, shards), without the SDK, HTTP and the fake server's CPU."""
    from labeler.sources.generation.base import Generation, Generator
    from labeler.sources.generation.problems import Problem
    from labeler.sources.generation.prompts import TEMPLATES
    from labeler.sources.generation.runner import GenConfig, GenerationEngine, run_engine
    from labeler.sources.generation.store import GenerationDir
    from labeler.sources.generation.tasks import sample_tasks
    from labeler.sources.splitters import get_splitter
    from tests.fakes.policy_server import answer_for

    class Sleepy(Generator):
        name, price_model = "sleepy", None

        def fingerprint_parts(self) -> dict:
            return {}

        async def generate(self, requests, sampling):
            await asyncio.sleep(latency)
            return [Generation(*answer_for(r.prompt + r.prefill, r.seed)) for r in requests]

    problems = [Problem(f"p{i}", problem_text(i, i + 1), gold_of(i, i + 1), "bench") for i in range(samples // 4)]
    sampling = Sampling()
    tasks = sample_tasks(problems, TEMPLATES["step-dpo"], 4, sampling)
    engine = GenerationEngine(Sleepy(), GenerationDir(tempfile.mkdtemp(prefix="gen-bench-engine-")),
                              GenConfig(concurrency=concurrency, progress="none"), sampling,
                              get_splitter("step-markers"))
    start = time.perf_counter()
    run_engine(engine, tasks, {})
    rate = len(tasks) / (time.perf_counter() - start)
    return {"samples": len(tasks), "samples_per_s": round(rate, 1),
            "ideal_samples_per_s": round(concurrency / latency, 1),
            "ratio_vs_sequential": round(rate * latency, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", default=None)
    ap.add_argument("--samples", type=int, default=1024, help="samples of the 100 ms run (a multiple of --concurrency: no half-empty last wave)")
    ap.add_argument("--naive-samples", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--cpu-samples", type=int, default=1000, help="samples per run of the CPU-per-request measure")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--only", choices=["hf", "api"], default=None, help="run one of the two benchmarks")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "generate_throughput.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    result = json.loads(out.read_text()) if args.only and out.exists() else {}
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                         "load_average_1m": round(os.getloadavg()[0], 2)}
    if args.only in (None, "hf"):
        result["hf_batched_vs_one_at_a_time"] = bench_hf(args.model, args.prompts, args.batch_size,
                                                         args.max_new_tokens)
    if args.only in (None, "api"):
        result["openai_compatible_vs_sequential"] = bench_api(args.samples, args.naive_samples, args.concurrency,
                                                              args.latency)
        result["engine_only_100ms_backend"] = bench_engine_only(args.samples, args.concurrency, args.latency)
        result["cpu_per_request_zero_latency"] = bench_cpu_per_request(args.cpu_samples, args.concurrency)
    result["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
