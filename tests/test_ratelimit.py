"""Rate limiter, retry timing, prices, and the run folder's resume rule."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from labeler.engine.pricing import PRICES, Price, load_prices, price_for
from labeler.engine.ratelimit import RateLimiter
from labeler.engine.retry import (
    RetryPolicy,
    backoff,
    call_with_retries,
    parse_duration,
    parse_retry_after,
)
from labeler.engine.rundir import RunDir
from labeler.judges.base import FatalError, RetryableError
from schemas.errors import UserError
from schemas.tables import STEP_SCORES, read_table


def test_requests_per_minute_is_enforced():
    async def go():
        limiter = RateLimiter(rpm=1200, burst_s=0.1)  # 20/s, bucket of 2
        start = time.monotonic()
        for _ in range(12):
            await limiter.acquire()
        return time.monotonic() - start

    elapsed = asyncio.run(go())
    assert 0.45 <= elapsed < 2.0  # 2 at once, then 10 more at 20/s


def test_tokens_per_minute_is_enforced():
    async def go():
        limiter = RateLimiter(tpm=60_000, burst_s=0.1)  # 1000 tokens/s, bucket of 100
        start = time.monotonic()
        for _ in range(4):
            await limiter.acquire(100)
        return time.monotonic() - start

    assert 0.25 <= asyncio.run(go()) < 1.5


def test_headers_tighten_limits_and_pause():
    limiter = RateLimiter()
    assert limiter.rpm is None
    limiter.update({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "200000",
                    "x-ratelimit-remaining-requests": "10"})
    assert (limiter.rpm, limiter.tpm) == (500, 200000)
    limiter.update({"x-ratelimit-limit-requests": "5000"})  # never loosened by headers
    assert limiter.rpm == 500
    limiter.update({"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0",
                    "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z"})
    assert limiter.rpm == 50
    assert 1.1 < limiter.paused_until - time.monotonic() <= 1.2  # one refill interval (60/50 s)
    limiter.pause(5)
    assert limiter.paused_until - time.monotonic() > 4.9



def test_send_learns_from_answers_and_errors():
    """The one request path of both engines: headers tighten, tokens are corrected to what was
    used, a retry-after pauses everyone (capped), and errors pass through unchanged."""
    class Answer:
        def __init__(self, headers, used):
            self.headers, self.input_tokens, self.output_tokens = headers, used, 0

    async def go():
        limiter = RateLimiter(tpm=60_000, burst_s=1.0)  # a bucket of 1000 tokens
        sent = []

        async def ok():
            return [Answer({"x-ratelimit-limit-requests": "600"}, 100)]

        await limiter.send(400, ok, max_pause=1.0, before=lambda: sent.append(1))
        level = limiter.tokens.level
        assert (limiter.rpm, sent) == (600, [1]) and 890 < level <= 900  # 400 held, then 100 really used

        async def refused():
            raise RetryableError("HTTP 429", retry_after=30.0, headers={"x-ratelimit-limit-tokens": "30000"})

        with pytest.raises(RetryableError, match="429"):
            await limiter.send(10, refused, max_pause=0.5)
        assert limiter.tpm == 30000 and 0.4 < limiter.paused_until - time.monotonic() <= 0.5

        async def fatal():
            raise FatalError("HTTP 401", headers={"x-ratelimit-limit-requests": "60"}, abort=True)

        with pytest.raises(FatalError):
            await limiter.send(10, fatal, max_pause=0.5)
        assert limiter.rpm == 60

    asyncio.run(go())


def test_retry_after_parsing():
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None
    assert parse_duration("6m0s") == 360 and parse_duration("17ms") == pytest.approx(0.017)
    assert parse_duration("1.5s") == 1.5 and parse_duration("") is None


def test_backoff_is_jittered_exponential_and_honours_retry_after():
    policy = RetryPolicy(initial=1.0, max_wait=30.0)
    rng = random.Random(0)
    waits = [backoff(policy, n, None, rng) for n in (1, 2, 3, 4)]
    for n, w in zip((1, 2, 3, 4), waits, strict=True):
        assert 2 ** (n - 1) <= w <= 2 ** n
    assert 7.0 <= backoff(policy, 1, 7.0, rng) <= 7.7  # the server's wait, plus a little jitter
    assert backoff(policy, 1, 500.0, rng) == 30.0
    assert backoff(policy, 10, None, rng) == 30.0


def test_call_with_retries_counts_attempts():
    calls = []

    async def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RetryableError("429", retry_after=0.05)
        return "ok"

    retries = []
    result, attempts = asyncio.run(call_with_retries(flaky, RetryPolicy(5, 0.001, 1.0),
                                                     lambda e, s: retries.append(s)))
    assert (result, attempts, len(retries)) == ("ok", 3, 2)
    assert calls[1] - calls[0] >= 0.05  # waited for retry-after, not the 1 ms backoff

    async def always():
        raise RetryableError("500")

    with pytest.raises(RetryableError) as info:
        asyncio.run(call_with_retries(always, RetryPolicy(4, 0.001, 0.01)))
    assert info.value.attempts == 4

    async def fatal():
        calls.append(1)
        raise FatalError("400 bad request")

    calls.clear()
    with pytest.raises(FatalError) as info:
        asyncio.run(call_with_retries(fatal, RetryPolicy(4, 0.001, 0.01)))
    assert info.value.attempts == 1 and len(calls) == 1



def test_retry_waits_grow_from_the_first_attempt_and_a_stopping_sleep_keeps_the_count():
    """The first attempt runs outside the retry loop: the waits after attempts 1, 2, 3 are still
    the 1st, 2nd and 3rd backoff, and an exception from ``sleep`` (the run stopping) carries the
    attempts made so far."""
    async def always():
        raise RetryableError("500")

    waits: list[float] = []
    with pytest.raises(RetryableError) as info:
        asyncio.run(call_with_retries(always, RetryPolicy(4, 0.01, 1.0), lambda e, s: waits.append(s)))
    assert info.value.attempts == 4 and len(waits) == 3
    for n, w in enumerate(waits, start=1):
        assert 0.01 * 2 ** (n - 1) <= w <= 0.01 * 2 ** n

    class Stop(Exception):
        pass

    async def stopping(seconds: float) -> None:
        raise Stop

    with pytest.raises(Stop) as stopped:
        asyncio.run(call_with_retries(always, RetryPolicy(4, 0.01, 1.0), sleep=stopping))
    assert stopped.value.attempts == 1

    with pytest.raises(RetryableError) as once:
        asyncio.run(call_with_retries(always, RetryPolicy(1, 0.01, 1.0)))
    assert once.value.attempts == 1

def test_prices(tmp_path):
    p = price_for("gpt-4o-mini-2024-07-18", PRICES)
    assert p == PRICES["gpt-4o-mini"]  # longest prefix, not gpt-4o
    assert p.cost(1_000_000, 400_000, 100_000) == pytest.approx(0.6 * 0.15 + 0.4 * 0.075 + 0.1 * 0.60)
    assert price_for("my-local-model", PRICES) is None
    f = tmp_path / "prices.yaml"
    f.write_text("my-local-model: {input: 0.0, output: 0.0}\ngpt-4o-mini: {input: 1, cached_input: 0.5, output: 2}\n")
    table = load_prices(str(f))
    assert table["gpt-4o-mini"] == Price(1.0, 0.5, 2.0) and table["my-local-model"] == Price(0, 0, 0)
    j = tmp_path / "prices.json"
    j.write_text(json.dumps({"x": {"input": 1}}))
    with pytest.raises(UserError, match="model 'x' needs numbers 'input' and 'output'"):
        load_prices(str(j))


def _row(rid: str, status: str, score: float | None = 0.5) -> dict:
    return {"response_id": rid, "prompt": "p", "steps": ["s"], "judge": "j", "judge_fingerprint": "fp",
            "scores": [score] if status == "ok" else None, "status": status,
            "error": None if status == "ok" else "boom", "attempts": 1}


def test_rundir_supersedes_errors_and_repairs_duplicates(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_shard([_row("a", "ok"), _row("b", "error"), _row("c", "error")])
    run.write_shard([_row("b", "ok", 0.9), _row("c", "error")])  # a rerun: b fixed, c failed again
    run.write_shard([_row("a", "ok", 0.1)])  # a crash-left duplicate of a done row
    (tmp_path / "run" / ".part-00003.parquet.abc.tmp").write_bytes(b"half")
    assert run.statuses() == {"a": "ok", "b": "ok", "c": "error"}
    assert run.done_ids() == {"a", "b"}
    assert run.remove_temp_files() == 1
    assert run.compact() == 3
    t = read_table(tmp_path / "run", STEP_SCORES).to_pylist()
    assert sorted((r["response_id"], r["status"]) for r in t) == [("a", "ok"), ("b", "ok"), ("c", "error")]
    assert {r["response_id"]: r["scores"] for r in t}["b"] == [0.9]
    assert [p.name for p in run.parts()] == ["part-00000.parquet", "part-00001.parquet"]  # emptied shard gone
    assert run.compact() == 0
    assert run.next_part().name == "part-00002.parquet"


def test_rundir_masks_and_totals_row_by_row(tmp_path):
    """compact's keep-mask (built from bits, not pa.array: no pandas import) keeps exactly the
    winners across byte boundaries; read_rows(status) and totals() count the same rows a plain
    Python loop over the shards does; tokens without a price make the cost unknown."""
    run = RunDir(tmp_path / "run")
    errors = {0, 5, 8, 9, 15, 16, 20}
    first = [dict(_row(f"r{i}", "error" if i in errors else "ok"), input_tokens=i, output_tokens=1, cost_usd=0.5)
             for i in range(21)]
    run.write_shard(first)
    run.write_shard([dict(_row(f"r{i}", "ok", 0.9), input_tokens=0, output_tokens=0) for i in (5, 8, 16)])
    assert run.compact() == 3
    kept = read_table(run.parts()[0], STEP_SCORES).column("response_id").to_pylist()
    assert kept == [f"r{i}" for i in range(21) if i not in (5, 8, 16)]
    assert sorted(run.read_rows(status="error").column("response_id").to_pylist()) == ["r0", "r15", "r20", "r9"]
    assert run.read_rows(status="ok").num_rows == 21 - 4
    totals = run.totals()
    assert (totals["rows"], totals["ok"], totals["error"]) == (21, 17, 4)
    assert totals["input_tokens"] == sum(i for i in range(21) if i not in (5, 8, 16))
    assert totals["cost_usd"] == 0.5 * 18  # the second shard's rows: no cost and no tokens, known (free)
    run.write_shard([dict(_row("paid", "ok"), input_tokens=3, output_tokens=0, cost_usd=None)])
    assert run.totals()["cost_usd"] is None  # tokens at no known price: unknown, never a made-up 0


def test_rundir_refuses_another_judge(tmp_path):
    run = RunDir(tmp_path)
    run.record_run({"judge": "openai:gpt-4o", "judge_fingerprint": "aaa"}, {"state": "finished"})
    run.check_judge("openai:gpt-4o", "aaa")
    with pytest.raises(UserError, match="holds labels from judge openai:gpt-4o"):
        run.check_judge("openai:gpt-4o-mini", "bbb")
