"""Answers reach the judge cache in batches (one transaction per flush), and a run killed between
two flushes still loses nothing: every row is in the folder once after the rerun, served from
the cache when its batch was stored, asked again when it was not."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from labeler.engine.cache import JudgeCache, cache_key
from labeler.engine.rundir import RunDir
from labeler.engine.runner import Engine, EngineConfig
from labeler.judges.base import Verdict
from labeler.judges.config import JudgeConfig
from labeler.judges.registry import create_judge
from tests.fakes.llm_server import FaultConfig
from tests.test_engine import REPO, assert_exact_set, env, label, responses  # noqa: F401 - fixtures


def test_put_many_stores_answers_and_refuses_errors(tmp_path):
    cache = JudgeCache(tmp_path / "cache")
    good = [(cache_key("fp", f"p{i}", ["s"]), Verdict(scores=[0.5], raw="r", input_tokens=i)) for i in range(5)]
    bad = [(cache_key("fp", "err", ["s"]), Verdict(scores=[None], error="cut off")),
           (cache_key("fp", "none", ["s"]), Verdict(scores=[]))]
    assert cache.put_many(good + bad) == 5
    assert len(cache) == 5
    assert [cache.get(k).input_tokens for k, _ in good] == list(range(5))
    assert cache.put_many([]) == 0


def test_engine_stores_in_batches_and_before_each_shard(env, fake, capsys):  # noqa: F811
    """cache_batch=4 over 10 answers: 2 transactions while labeling, the last 2 answers before
    the shard; the cache then answers a second folder with no request."""
    inp, rows = responses(env, 10)
    judge = create_judge("openai:gpt-4o-mini", JudgeConfig())
    cache = JudgeCache(env / "cache")
    stored: list[int] = []
    put_many = cache.put_many
    cache.put_many = lambda answers: stored.append(len(answers)) or put_many(answers)  # type: ignore[method-assign]
    engine = Engine(judge, RunDir(env / "run"), EngineConfig(concurrency=1, cache_batch=4, cache_flush_s=3600,
                                                             progress="none"), cache)

    async def go():
        try:
            return await engine.run(rows, {})
        finally:
            await judge.aclose()

    asyncio.run(go())
    assert stored == [4, 4, 2] and len(cache) == 10
    cache.close()
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run2")
    assert rc == 0 and fake.total_requests == 0 and "10 from cache" in log


def test_sigkill_between_cache_flushes_loses_nothing(env, fake, capsys):  # noqa: F811
    """No shard is written before the kill (--shard-size 1000): the answers stored in the cache
    come back free, the rest are asked again, and the folder holds each row once."""
    inp, rows = responses(env, 200)
    fake.faults = FaultConfig(latency_s=0.02)
    run = env / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepdpo.cli", "label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(run),
         "--concurrency", "4", "--shard-size", "1000", "--progress", "none"],
        cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and fake.total_requests < 100:  # past the first batch of 64
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    asked_before = fake.total_requests
    assert not list(run.glob("part-*.parquet"))
    cached = len(JudgeCache(env / "cache"))
    assert 64 <= cached <= asked_before < 200

    fake.faults = FaultConfig()
    fake.reset_counts()
    rc, _ = label(capsys, inp, run)
    assert rc == 0
    assert_exact_set(run, rows)
    this = json.loads((run / "run.json").read_text())["runs"][-1]
    assert this["cache_hits"] == cached and this["requests"] == 200 - cached == fake.total_requests


def test_answers_held_by_a_stall_are_stored_at_the_next_checkpoint(env, fake):  # noqa: F811
    """Two answers arrive, then the third request hangs: no new answer triggers a store, and no
    shard is due. The checkpoint ticker stores the two while the run still waits, so a kill -9
    during a stall would not re-ask them."""
    from labeler.engine.retry import RetryPolicy

    inp, rows = responses(env, 3)
    rows[2] = dict(rows[2], steps=[*rows[2]["steps"][:-1], rows[2]["steps"][-1] + " [[hang-here]]"])
    fake.faults = FaultConfig(rules={"[[hang-here]]": "hang"}, hang_s=60, retry_after=0.01)
    judge = create_judge("openai:gpt-4o-mini", JudgeConfig(timeout=1.5))
    cache = JudgeCache(env / "cache")
    engine = Engine(judge, RunDir(env / "run"), EngineConfig(
        concurrency=3, cache_batch=1000, cache_flush_s=3600, checkpoint_s=0.1, progress="none",
        retry=RetryPolicy(max_attempts=1), stop_after_failures=0), cache)
    during: list[int] = []

    async def go():
        run = asyncio.create_task(engine.run(rows, {}))
        await asyncio.sleep(0.8)  # the two answers are in; the third hangs until its 1.5 s timeout
        during.append(len(cache))
        try:
            return await run
        finally:
            await judge.aclose()

    asyncio.run(go())
    assert during == [2]  # stored mid-stall (before: only at the end of the run)
    assert len(cache) == 2  # the hung row is an error: never cached
    cache.close()
