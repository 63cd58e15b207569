"""Labeler throughput against the loopback fake LLM server (100 ms per request).

Measures, in one run:
1. responses/s of `stepdpo label` (all steps of a response in ONE request, concurrent) vs the
   seeds' naive loop (one sequential request per step, each carrying the prefix up to that step);
2. judge prompt tokens per labeled step, all-steps-in-one vs one-request-per-prefix (token
   counts are the fake's, chars/4, identical for both);
3. the request count of re-running a finished job (must be 0);
4. with a server-side requests/min limit: the achieved fraction of the allowed requests/min and
   the rows lost (must be 0).

The fake runs in its own process so its threads don't share our GIL.
Writes bench/results/label_throughput.json.

    .venv/bin/python bench/label_throughput.py [--rows 500] [--naive-rows 20] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labeler.judges.base import Item  # noqa: E402
from labeler.judges.config import JudgeConfig  # noqa: E402
from schemas.tables import STEP_SCORES, read_table  # noqa: E402
from stepdpo.cli import main as stepdpo  # noqa: E402
from tests.fakes.responses import gsm8k_rows, write_responses  # noqa: E402

GSM8K = [REPO / "data" / "gsm8k" / "test_sample.jsonl", REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"]
KEY = "sk-bench-not-a-real-key"


class Server:
    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.llm_server", "--latency", str(latency)],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def call(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read())

    def requests(self) -> int:
        return self.call("/_stats")["total"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def label(inp: Path, out: Path, *extra: str) -> dict:
    rc = stepdpo(["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(out), "--progress", "none",
                  "--backoff", "0.05", "--max-backoff", "2", *extra])
    assert rc == 0, rc
    return json.loads((out / "run.json").read_text())


def naive_loop(rows: list[dict]) -> dict:
    """The seeds' way: for each step, one request holding the steps up to it; sequential."""
    from labeler.judges.openai_judge import make_openai

    judge = make_openai("gpt-4o-mini", JudgeConfig())

    async def go() -> dict:
        steps = requests = prompt_tokens = 0
        start = time.perf_counter()
        for row in rows:
            for k in range(1, len(row["steps"]) + 1):
                item = Item(row["response_id"], row["prompt"], row["steps"][:k])
                [verdict] = await judge.judge([item])
                _ = verdict.scores[-1]  # the score of step k
                requests += 1
                steps += 1
                prompt_tokens += verdict.input_tokens
        elapsed = time.perf_counter() - start
        await judge.aclose()
        return {"responses": len(rows), "steps": steps, "requests": requests, "elapsed_s": round(elapsed, 3),
                "responses_per_s": round(len(rows) / elapsed, 3), "prompt_tokens": prompt_tokens,
                "prompt_tokens_per_step": round(prompt_tokens / steps, 2)}

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--naive-rows", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--rpm-limit", type=float, default=3000)
    ap.add_argument("--rpm-rows", type=int, default=600)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "label_throughput.json"))
    args = ap.parse_args()

    rows = gsm8k_rows(GSM8K, max(args.rows, args.rpm_rows))
    server = Server(args.latency)
    tmp = Path(tempfile.mkdtemp(prefix="stepdpo-bench-"))
    os.environ.update(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=server.url + "/v1",
                      STEPDPO_CACHE_DIR=str(tmp / "cache"))
    try:
        inp = write_responses(rows[: args.rows], tmp / "responses.parquet")
        n_steps = sum(len(r["steps"]) for r in rows[: args.rows])

        # 1+2. engine vs naive loop.
        server.call("/_reset", {})
        t0 = time.perf_counter()
        manifest = label(inp, tmp / "run", "--concurrency", str(args.concurrency))
        engine_s = time.perf_counter() - t0
        engine_requests = server.requests()
        out = read_table(tmp / "run", STEP_SCORES)
        run_stats = manifest["runs"][-1]
        engine = {"responses": args.rows, "steps": n_steps, "requests": engine_requests,
                  "concurrency": args.concurrency, "elapsed_s": run_stats["elapsed_s"],
                  "responses_per_s": round(args.rows / run_stats["elapsed_s"], 3),
                  "wall_s_with_cli_startup": round(engine_s, 3),
                  "responses_per_s_with_cli_startup": round(args.rows / engine_s, 3),
                  "prompt_tokens": manifest["totals"]["input_tokens"],
                  "prompt_tokens_per_step": round(manifest["totals"]["input_tokens"] / n_steps, 2),
                  "cached_prompt_tokens": manifest["totals"]["cached_tokens"],
                  "rows_ok": manifest["totals"]["ok"], "rows_out": out.num_rows}
        naive = naive_loop(rows[: args.naive_rows])

        # 3. rerun of the finished job.
        server.call("/_reset", {})
        label(inp, tmp / "run", "--concurrency", str(args.concurrency))
        rerun_requests = server.requests()

        # 4. server-side requests/min limit, client learns it from the headers.
        rpm_inp = write_responses(rows[: args.rpm_rows], tmp / "rpm.parquet")
        server.call("/_config", {"rpm_limit": args.rpm_limit, "burst_s": 2.0, "retry_after": 0.5})
        server.call("/_reset", {})
        t0 = time.perf_counter()
        rl_manifest = label(rpm_inp, tmp / "run-rpm", "--concurrency", str(args.concurrency), "--no-cache",
                            "--max-attempts", "20")
        rl_s = time.perf_counter() - t0
        stats = server.call("/_stats")
        ok_rows = rl_manifest["totals"]["ok"]
        run_s = rl_manifest["runs"][-1]["elapsed_s"]
        burst = args.rpm_limit / 60 * 2.0
        # What the server lets through in run_s seconds: its bucket's burst plus its refill.
        allowed = burst + args.rpm_limit / 60 * run_s
        limited = {"rpm_limit": args.rpm_limit, "server_burst_requests": burst,
                   "rows": args.rpm_rows, "rows_ok": ok_rows, "rows_lost": args.rpm_rows - ok_rows,
                   "elapsed_s": run_s, "wall_s_with_cli_startup": round(rl_s, 3), "requests": stats["total"],
                   "accepted_requests": stats["total"] - stats["faults"].get("429", 0),
                   "rejected_429": stats["faults"].get("429", 0),
                   "achieved_rpm": round((stats["total"] - stats["faults"].get("429", 0)) / run_s * 60, 1),
                   "fraction_of_rpm_limit": round((stats["total"] - stats["faults"].get("429", 0)) / run_s * 60
                                                  / args.rpm_limit, 4),
                   # Stricter: also count the server's initial burst as allowed.
                   "allowed_requests_incl_burst": round(allowed, 1),
                   "fraction_of_allowed_incl_burst": round((stats["total"] - stats["faults"].get("429", 0))
                                                           / allowed, 4)}
    finally:
        server.stop()

    result = {
        "bench": "label_throughput",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "fake_latency_s": args.latency,
        "engine": engine,
        "naive_loop": naive,
        "speedup_responses_per_s": round(engine["responses_per_s"] / naive["responses_per_s"], 1),
        "prompt_tokens_per_step_ratio_naive_over_engine": round(
            naive["prompt_tokens_per_step"] / engine["prompt_tokens_per_step"], 2),
        "rerun_requests": rerun_requests,
        "rate_limited": limited,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
