"""Labeler throughput against the loopback fake LLM server (100 ms per request, and zero).

Measures, in one run:
0. issue 18's figures, each `stepdpo label` a separate process as a user runs it: start-up to
   first request (process start -> first request arriving at the fake, median of a few runs);
   zero-latency responses/s of one process on all 1,319 GSM8K rows with the fake sharing the
   cores, at the fake's advertised 30,000-RPM tier (500/s: the labeler obeys it) and with a
   4x higher tier advertised (the labeler's own ceiling); 5,000 rows at 100 ms with 64 in flight (bound 640/s), wall time including CLI
   start-up; and the fake ALONE driven by a raw-socket client with the labeler's own request
   bodies (bench/fake_load.py), i.e. what the fake can answer on this machine at all; and two
   `--num-shards 2` processes on one folder at once (what a multi-process mode could add);
   And (``--only cpu``) the client CPU per request of an in-process run (bench/cpu_per_request.py:
   the engine in one process, the zero-latency fake in its own, ``time.process_time`` around the
   run), best of ``--cpu-rounds`` interleaved rounds, uncapped (2,638 rows, 120,000 RPM
   advertised) and at the tier (1,319 rows, 30,000 RPM): with --baseline-tree, the old code's
   figure in the same sitting and the ratio old/new (issue 18 asks >= 3).
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
    .venv/bin/python bench/label_throughput.py --only startup,zero,load   # just part 0
    .venv/bin/python bench/label_throughput.py --baseline-tree /tmp/base  # + part 0 before/after
    .venv/bin/python bench/label_throughput.py --only cpu --baseline-tree /tmp/base604  # CPU/request
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.fake_load import hammer, process_cpu_s  # noqa: E402
from labeler.judges.base import Item  # noqa: E402
from labeler.judges.config import JudgeConfig  # noqa: E402
from schemas.tables import STEP_SCORES, read_table  # noqa: E402
from stepdpo.cli import main as stepdpo  # noqa: E402
from tests.fakes.llm_server import FakeLLMServer, FaultConfig  # noqa: E402
from tests.fakes.responses import gsm8k_rows, write_responses  # noqa: E402

GSM8K = [REPO / "data" / "gsm8k" / "test.jsonl"]  # bundled: all 1,319 GSM8K test problems
KEY = "sk-bench-not-a-real-key"
# The fake advertises an OpenAI tier-5 account (x-ratelimit-limit-requests: 30,000/min) and the
# labeler obeys it: 500 requests/s is the ceiling of every run at that tier, the issue's target.
TIER_RPM = FaultConfig().advertised_rpm


class Server:
    def __init__(self, latency: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.llm_server", "--latency", str(latency)],
                                     cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read())

    def requests(self) -> int:
        return self.call("/_stats")["total"]

    def cpu_s(self) -> float:
        return process_cpu_s(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def many_rows(rows: list[dict], n: int) -> list[dict]:
    """`n` rows cycling through `rows`, each with its own response_id (so each is one request)."""
    out = (rows * (n // len(rows) + 1))[:n]
    return [dict(r, response_id=f"{r['response_id']}-{i}") for i, r in enumerate(out)]


# `python -m stepdpo` plus an audit hook that notes the process's CPU seconds at its first socket
# connect (the first request): a start-up figure that a busy shared box does not inflate. At exit
# it adds the CPU seconds at the end (so the CPU per response after the start-up) and the time the
# cyclic GC took before and after the first request (stepdpo.startup pauses it for the start-up).
PROBE = """import atexit, gc, json, os, runpy, sys, time
out = {"gc_ms": {"startup": 0.0, "run": 0.0}, "gc_collections": {"startup": 0, "run": 0}}
phase, began = ["startup"], [0.0]
def on_gc(stage, info):
    if stage == "start":
        began[0] = time.perf_counter()
    else:
        out["gc_ms"][phase[0]] += (time.perf_counter() - began[0]) * 1000
        out["gc_collections"][phase[0]] += 1
gc.callbacks.append(on_gc)
def hook(event, args):
    if event == "socket.connect" and "first" not in out:
        out["first"] = time.process_time()
        phase[0] = "run"
sys.addaudithook(hook)
@atexit.register
def write():
    out["end"] = time.process_time()
    with open(os.environ["STEPDPO_BENCH_PROBE"], "w") as f:
        json.dump(out, f)
sys.argv = ["stepdpo", *sys.argv[1:]]
runpy.run_module("stepdpo", run_name="__main__", alter_sys=True)
"""


def cli_label(inp: Path, out: Path, server: Server, env: dict, concurrency: int,
              judge: str = "openai:gpt-4o-mini") -> dict:
    """`stepdpo label` as a user runs it: a new process. Wall time from just before the process
    starts, the delay to the first request arriving at the fake, the CPU seconds the process spent
    before it, and both sides' CPU seconds per response."""
    server.call("/_reset", {})
    probe = out.parent / f".{out.name}.probe"
    fake_cpu0, child0 = server.cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0_epoch, t0 = time.time(), time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PROBE, "label", str(inp), "--judge", judge,
                        "-o", str(out), "--progress", "none", "--concurrency", str(concurrency)],
                       env=dict(env, OPENAI_BASE_URL=server.url + "/v1", ANTHROPIC_BASE_URL=server.url,
                                ANTHROPIC_API_KEY=KEY, STEPDPO_BENCH_PROBE=str(probe)),
                       cwd=out.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = server.call("/_stats")
    seen = json.loads(probe.read_text())
    manifest = json.loads((out / "run.json").read_text())
    n, elapsed = manifest["totals"]["ok"], manifest["runs"][-1]["elapsed_s"]
    label_cpu = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    return {"rows_ok": n, "requests": stats["total"], "concurrency": concurrency, "elapsed_s": elapsed,
            "responses_per_s": round(n / elapsed, 1), "wall_s_with_cli_startup": round(wall, 3),
            "responses_per_s_with_cli_startup": round(n / wall, 1),
            "startup_to_first_request_s": round(stats["first_request_at"] - t0_epoch, 3),
            "startup_cpu_s_to_first_request": round(seen["first"], 3),
            "label_cpu_ms_per_response": round(label_cpu / n * 1000, 3),
            "label_cpu_ms_per_response_after_first_request": round((seen["end"] - seen["first"]) / n * 1000, 3),
            "gc_ms": {k: round(v, 1) for k, v in seen["gc_ms"].items()}, "gc_collections": seen["gc_collections"],
            "fake_cpu_ms_per_request": round((server.cpu_s() - fake_cpu0) / stats["total"] * 1000, 3),
            "load_average": os.getloadavg()}


def two_processes(inp: Path, out: Path, server: Server, env: dict, concurrency: int) -> dict:
    """What a multi-process mode (issue 18 item 3) could add on this machine, measured with what
    exists: two `stepdpo label --num-shards 2 --shard-index K` processes on one folder at once,
    half the concurrency each, the same fake."""
    import datetime as dt

    server.call("/_reset", {})
    fake_cpu0 = server.cpu_s()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "stepdpo", "label", str(inp), "--judge", "openai:gpt-4o-mini",
                               "-o", str(out), "--progress", "none", "--concurrency", str(concurrency // 2),
                               "--num-shards", "2", "--shard-index", str(k)],
                              env=dict(env, OPENAI_BASE_URL=server.url + "/v1"), cwd=out.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in range(2)]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    assert all(p.returncode == 0 for p in procs), errs
    runs = [json.loads((out / f"run-k{k}-of-2.json").read_text()) for k in range(2)]
    ok = sum(m["totals"]["ok"] for m in runs)
    start = min(dt.datetime.fromisoformat(m["runs"][-1]["started_at"]) for m in runs)
    end = max(dt.datetime.fromisoformat(m["runs"][-1]["finished_at"]) for m in runs)
    span = (end - start).total_seconds()
    stats = server.call("/_stats")
    return {"processes": 2, "rows_ok": ok, "requests": stats["total"], "concurrency_each": concurrency // 2,
            "run_clock_span_s": round(span, 3), "responses_per_s": round(ok / span, 1),
            "wall_s_with_cli_startup": round(wall, 3), "responses_per_s_with_cli_startup": round(ok / wall, 1),
            "fake_cpu_ms_per_request": round((server.cpu_s() - fake_cpu0) / stats["total"] * 1000, 3),
            "load_average": os.getloadavg()}


def request_bodies(rows: list[dict], tmp: Path) -> list[dict]:
    """The labeler's own request bodies, recorded by an in-process fake (for the fake-alone run)."""
    old = os.environ["OPENAI_BASE_URL"]
    with FakeLLMServer() as fake:
        os.environ["OPENAI_BASE_URL"] = fake.url + "/v1"
        try:
            label(write_responses(rows, tmp / "bodies.parquet"), tmp / "run-bodies", "--no-cache")
        finally:
            os.environ["OPENAI_BASE_URL"] = old
        return [r["body"] for r in fake.requests if r["path"] == "/v1/chat/completions"]


def issue18(rows: list[dict], tmp: Path, args: argparse.Namespace, parts: set[str], tree: str | None = None) -> dict:
    """Part 0 of the docstring: start-up, zero latency, 5,000 rows at 100 ms, the fake alone.
    ``tree``: the checkout whose `stepdpo label` runs (default: --tree)."""
    env = dict(os.environ, PYTHONPATH=str(tree or args.tree), HF_HUB_OFFLINE="1")
    tmp = Path(tempfile.mkdtemp(prefix="part0-", dir=tmp))
    out: dict = {}
    zero = Server(0.0)
    try:
        if "startup" in parts:  # a small job: the first request is what is timed
            inp = write_responses(rows[:50], tmp / "startup.parquet")
            for key, judge in (("startup", "openai:gpt-4o-mini"), ("startup_anthropic", "anthropic:claude-haiku-4-5")):
                runs = [cli_label(inp, tmp / f"run-{key}-{k}", zero, dict(env, STEPDPO_CACHE_DIR=str(tmp / f"c-{key}{k}")),
                                  args.concurrency, judge) for k in range(args.startup_runs)]
                firsts = [r["startup_to_first_request_s"] for r in runs]
                cpus = [r["startup_cpu_s_to_first_request"] for r in runs]
                out[key] = {"judge": judge, "runs": args.startup_runs, "rows": 50,
                            "startup_to_first_request_s_median": statistics.median(firsts),
                            "startup_to_first_request_s_min": min(firsts),
                            "startup_to_first_request_s_all": firsts,
                            "cpu_s_to_first_request_median": statistics.median(cpus),
                            "cpu_s_to_first_request_all": cpus, "target_s": 1.0,
                            "gc_ms_before_first_request_median": statistics.median(r["gc_ms"]["startup"] for r in runs),
                            "load_average": os.getloadavg()}
        if "zero" in parts:
            inp = write_responses(rows[:1319], tmp / "zero.parquet")
            out["zero_latency"] = dict(cli_label(inp, tmp / "run-zero", zero,
                                                 dict(env, STEPDPO_CACHE_DIR=str(tmp / "c-zero")), args.concurrency),
                                       advertised_rpm=TIER_RPM, tier_ceiling_responses_per_s=TIER_RPM / 60)
            # The same run with the fake advertising a 4x higher tier: the labeler's own ceiling.
            zero.call("/_config", {"advertised_rpm": args.uncapped_rpm})
            out["zero_latency_uncapped"] = dict(
                cli_label(inp, tmp / "run-zero-uncapped", zero, dict(env, STEPDPO_CACHE_DIR=str(tmp / "c-zero-u")),
                          args.concurrency), advertised_rpm=args.uncapped_rpm)
            zero.call("/_config", {"advertised_rpm": TIER_RPM})
        if "two" in parts:  # uncapped too: what a second process adds to the labeler's own ceiling
            zero.call("/_config", {"advertised_rpm": args.uncapped_rpm})
            out["two_processes"] = dict(two_processes(write_responses(rows[:1319], tmp / "two.parquet"),
                                                      tmp / "run-two", zero,
                                                      dict(env, STEPDPO_CACHE_DIR=str(tmp / "c-two")),
                                                      args.concurrency), advertised_rpm=args.uncapped_rpm)
            zero.call("/_config", {"advertised_rpm": TIER_RPM})
        if "load" in parts:
            bodies = request_bodies(rows[:200], tmp)
            out["fake_alone"] = hammer(zero.port, bodies, args.load_seconds, args.concurrency, zero.proc.pid)
            out["fake_alone"]["load_average"] = os.getloadavg()
    finally:
        zero.stop()
    if "5000" in parts:
        slow = Server(args.latency)
        try:
            inp = write_responses(many_rows(rows, args.big_rows), tmp / "big.parquet")
            out["latency_5000"] = dict(cli_label(inp, tmp / "run-big", slow,
                                                 dict(env, STEPDPO_CACHE_DIR=str(tmp / "c-big")), args.concurrency),
                                       latency_s=args.latency,
                                       upper_bound_responses_per_s=round(args.concurrency / args.latency, 1))
        finally:
            slow.stop()
    return out


def cpu_per_request(args: argparse.Namespace) -> dict:
    """Client CPU ms per request, in process (bench/cpu_per_request.py), of this tree and, given
    --baseline-tree, of the baseline's: rounds interleaved (this, baseline, this, ...) so both
    see the same box; the best of the rounds is the figure (least disturbed by other load)."""
    trees = {"this": str(args.tree)}
    if args.baseline_tree:
        trees["baseline"] = str(args.baseline_tree)
    zero = Server(0.0)
    out: dict = {"uptime_before": uptime(), "rounds": args.cpu_rounds, "concurrency": args.concurrency}
    try:
        for key, rows, rpm in (("uncapped", 2 * 1319, args.uncapped_rpm), ("tier_capped", 1319, TIER_RPM)):
            zero.call("/_config", {"advertised_rpm": rpm})
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for _ in range(args.cpu_rounds):
                for name, tree in trees.items():
                    zero.call("/_reset", {})
                    done = subprocess.run(
                        [sys.executable, str(REPO / "bench" / "cpu_per_request.py"), "--port", str(zero.port),
                         "--rows", str(rows), "--concurrency", str(args.concurrency), "--gsm8k", str(GSM8K[0])],
                        env=dict(os.environ, PYTHONPATH=tree, HF_HUB_OFFLINE="1"), cwd=tree,
                        capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"cpu_per_request failed in {tree}:\n{done.stderr[-2000:]}")
                    run = json.loads(done.stdout.strip().splitlines()[-1])
                    runs[name].append(dict(run, load_average=os.getloadavg()))
            part: dict = {"rows": rows, "advertised_rpm": rpm}
            for name, tree in trees.items():
                cpus = [r["cpu_ms_per_request"] for r in runs[name]]
                part[name] = {"tree": tree, "cpu_ms_per_request_best": min(cpus), "cpu_ms_per_request_all": cpus,
                              "responses_per_s_all": [r["responses_per_s"] for r in runs[name]],
                              "rows_ok_all": [r["rows_ok"] for r in runs[name]],
                              "load_average_all": [r["load_average"] for r in runs[name]]}
            if "baseline" in trees:
                part["baseline_over_this"] = round(part["baseline"]["cpu_ms_per_request_best"]
                                                   / part["this"]["cpu_ms_per_request_best"], 2)
            out[key] = part
    finally:
        zero.stop()
    out["uptime_after"] = uptime()
    out["target_baseline_over_this"] = 3.0
    return out


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


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


def part0(rows: list[dict], tmp: Path, args: argparse.Namespace, parts: set[str]) -> dict:
    """Part 0 with this code and, given --baseline-tree, with the baseline's, plus the ratios."""
    out = {"issue18": issue18(rows, tmp, args, parts)}
    if not args.baseline_tree:
        return out
    base = out["issue18_baseline"] = issue18(rows, tmp, args, parts - {"load", "two"}, tree=args.baseline_tree)
    new, ratios = out["issue18"], {}
    if "zero_latency_uncapped" in base:
        ratios["zero_latency_uncapped_responses_per_s"] = round(
            new["zero_latency_uncapped"]["responses_per_s"] / base["zero_latency_uncapped"]["responses_per_s"], 2)
        ratios["zero_latency_uncapped_label_cpu_per_response_before_over_after"] = round(
            base["zero_latency_uncapped"]["label_cpu_ms_per_response"]
            / new["zero_latency_uncapped"]["label_cpu_ms_per_response"], 2)
    if "zero_latency" in base:
        b, n = base["zero_latency"], new["zero_latency"]
        ratios["zero_latency_responses_per_s"] = round(n["responses_per_s"] / b["responses_per_s"], 2)
        ratios["zero_latency_responses_per_s_with_cli_startup"] = round(
            n["responses_per_s_with_cli_startup"] / b["responses_per_s_with_cli_startup"], 2)
        ratios["label_cpu_per_response_before_over_after"] = round(
            b["label_cpu_ms_per_response"] / n["label_cpu_ms_per_response"], 2)
    if "startup" in base:
        ratios["startup_cpu_before_over_after"] = round(
            base["startup"]["cpu_s_to_first_request_median"] / new["startup"]["cpu_s_to_first_request_median"], 2)
    if "latency_5000" in base:
        ratios["latency_5000_responses_per_s_with_cli_startup"] = round(
            new["latency_5000"]["responses_per_s_with_cli_startup"]
            / base["latency_5000"]["responses_per_s_with_cli_startup"], 2)
    out["issue18_after_over_before"] = ratios
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--naive-rows", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--rpm-limit", type=float, default=3000)
    ap.add_argument("--rpm-rows", type=int, default=600)
    ap.add_argument("--big-rows", type=int, default=5000, help="rows of the 100 ms wall-time run (default 5000)")
    ap.add_argument("--startup-runs", type=int, default=5)
    ap.add_argument("--uncapped-rpm", type=int, default=120_000,
                    help="the tier the fake advertises for the uncapped zero-latency and two-process runs")
    ap.add_argument("--load-seconds", type=float, default=5.0, help="how long the fake-alone run lasts")
    ap.add_argument("--only", default=None, help="comma-separated parts of part 0 to run alone "
                    "(startup, zero, two, load, 5000, cpu): skips the rest and prints only them; cpu's "
                    "figures are also written into --out under 'cpu_per_request', the rest kept")
    ap.add_argument("--cpu-rounds", type=int, default=3, help="rounds of the cpu part (best of them counts)")
    ap.add_argument("--tree", default=str(REPO), help="checkout whose `stepdpo label` part 0 runs (e.g. main's, "
                    "for a before/after in one sitting; default: this one)")
    ap.add_argument("--baseline-tree", default=None, help="a checkout of the code before issue 18 (e.g. `git "
                    "worktree add --detach /tmp/base 604383f`): part 0 runs with it too, in the same sitting, "
                    "and the result gains before/after ratios")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "label_throughput.json"))
    args = ap.parse_args()

    rows = gsm8k_rows(GSM8K, 1319)
    if len(rows) < 1319:
        raise SystemExit(f"expected the 1,319 bundled GSM8K test rows in {GSM8K[0]}, found {len(rows)}")
    if args.only:
        tmp = Path(tempfile.mkdtemp(prefix="stepdpo-bench-"))
        os.environ.update(OPENAI_API_KEY=KEY, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
        parts = set(args.only.split(","))
        result: dict = {"bench": "label_throughput (part 0 only)"}
        try:
            if "cpu" in parts:
                result["cpu_per_request"] = cpu_per_request(args)
                parts.discard("cpu")
            if parts:
                result.update(part0(rows, tmp, args, parts))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if "cpu_per_request" in result:  # merged into the results file, the other figures kept
            path = Path(args.out)
            saved = json.loads(path.read_text()) if path.exists() else {"bench": "label_throughput"}
            saved["cpu_per_request"] = result["cpu_per_request"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(saved, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
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
                  "rows_ok": manifest["totals"]["ok"], "rows_out": out.num_rows, "load_average": os.getloadavg()}
        naive = dict(naive_loop(rows[: args.naive_rows]), load_average=os.getloadavg())

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
                                                           / allowed, 4),
                   "load_average": os.getloadavg()}
        issue = part0(rows, tmp, args, {"startup", "zero", "two", "load", "5000"})
        issue["cpu_per_request"] = cpu_per_request(args)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # ~20 MB of runs and caches per run

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
        **issue,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
