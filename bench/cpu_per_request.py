"""Client CPU per request of one in-process label run (issue 18, Deliver 1): the child of
``bench/label_throughput.py --only cpu``.

The labeling engine runs in THIS process on ``--rows`` GSM8K responses with an ``openai:`` judge
against a zero-latency fake that runs in its own process (``--port``, started by the parent), and
``time.process_time()`` around the run divided by the rows is the figure: CPU, not wall time, so
the fake's share of a busy shared box does not inflate it, and no CLI start-up is in it. It
imports the labeler from ``sys.path`` — run it with ``PYTHONPATH=TREE`` to measure the code of
another checkout (the parent does so for ``--baseline-tree``); it uses only APIs the pre-issue-18
code (604383f) has too. Prints one JSON line.

    PYTHONPATH=. .venv/bin/python bench/cpu_per_request.py --port 8123 --rows 1319
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="the zero-latency fake's port")
    ap.add_argument("--rows", type=int, default=1319)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--gsm8k", required=True, help="GSM8K test.jsonl")
    args = ap.parse_args()

    # The measured tree's own modules (PYTHONPATH), imported before the clock starts.
    from labeler.engine.cache import JudgeCache
    from labeler.engine.rundir import RunDir
    from labeler.engine.runner import Engine, EngineConfig, load_rows
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import create_judge
    from tests.fakes.responses import gsm8k_rows, write_responses

    tmp = Path(tempfile.mkdtemp(prefix="stepdpo-cpu-"))
    rows = gsm8k_rows([Path(args.gsm8k)], 1319)
    rows = (rows * (args.rows // len(rows) + 1))[: args.rows]
    rows = [dict(r, response_id=f"{r['response_id']}-{i}") for i, r in enumerate(rows)]
    inp = write_responses(rows, tmp / "responses.parquet")
    os.environ.update(OPENAI_API_KEY="sk-bench-not-a-real-key", OPENAI_BASE_URL=f"http://127.0.0.1:{args.port}/v1")
    judge = create_judge("openai:gpt-4o-mini", JudgeConfig())
    data = load_rows(inp)
    cache = JudgeCache(tmp / "cache")
    judge.use_cache(cache)
    engine = Engine(judge, RunDir(tmp / "run"), EngineConfig(concurrency=args.concurrency, progress="none"), cache, {})

    async def go() -> dict:
        try:
            return await engine.run(data, {})
        finally:
            await judge.aclose()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    manifest = asyncio.run(go())
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    shutil.rmtree(tmp, ignore_errors=True)
    ok = manifest["totals"]["ok"]
    print(json.dumps({"rows": args.rows, "rows_ok": ok, "concurrency": args.concurrency, "wall_s": round(wall, 3),
                      "responses_per_s": round(ok / wall, 1), "cpu_s": round(cpu, 3),
                      "cpu_ms_per_request": round(1000 * cpu / args.rows, 3)}))


if __name__ == "__main__":
    main()
