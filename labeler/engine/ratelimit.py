"""Client-side requests/min and tokens/min limits, tightened from the provider's headers.

Two token buckets refill continuously; a request waits until both have room. The bucket holds
``burst_s`` seconds of traffic, so a fresh run does not fire a minute's quota in its first
second (providers enforce limits on short windows too). Response headers (OpenAI
``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``) lower the limits to what the account
really has and pause everyone while the remaining quota is zero; a 429's ``retry-after`` pauses
everyone too, instead of letting every in-flight request discover the limit on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from labeler.engine.retry import parse_duration
from labeler.errors import JudgeError, RetryableError

R = TypeVar("R")


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float) -> None:
        self.set_rate(per_minute, burst_s)
        self.level = self.capacity
        self.t = time.monotonic()

    def set_rate(self, per_minute: float, burst_s: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (an amount above capacity needs a full bucket)."""
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate


class RateLimiter:
    """``await acquire(tokens)`` before each request; ``update(headers)`` after each response."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, burst_s: float = 1.0) -> None:
        self.burst_s = burst_s
        self.requests = _Bucket(rpm, burst_s) if rpm else None
        self.tokens = _Bucket(tpm, burst_s) if tpm else None
        self.paused_until = 0.0
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    @property
    def rpm(self) -> float | None:
        return self.requests.per_minute if self.requests else None

    @property
    def tpm(self) -> float | None:
        return self.tokens.per_minute if self.tokens else None

    async def acquire(self, tokens: int = 0) -> None:
        async with self._lock:  # one waiter at a time: FIFO, no thundering herd
            start = time.monotonic()
            while True:
                now = time.monotonic()
                wait = max(0.0, self.paused_until - now)
                for bucket, amount in ((self.requests, 1), (self.tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    if self.requests is not None:
                        self.requests.level -= 1
                    if self.tokens is not None:
                        self.tokens.level -= tokens
                    self.waited_s += time.monotonic() - start
                    return
                await asyncio.sleep(wait)

    async def send(self, tokens: int, call: Callable[[], Awaitable[Sequence[R]]], *, max_pause: float,
                   before: Callable[[], Any] | None = None) -> Sequence[R]:
        """One request under the limits, for every engine (judging and generation): wait for room
        for it and its estimated ``tokens``, run ``before`` (the caller's last check and count),
        ``call`` it, then learn from what came back: the rate-limit headers of each answer or of
        the error, a ``retry-after`` (pausing everyone, at most ``max_pause`` seconds), and the
        tokens really used in place of the estimate. Answers carry ``headers``,
        ``input_tokens`` and ``output_tokens`` (verdicts, generations)."""
        await self.acquire(tokens)
        if before is not None:
            before()
        try:
            answers = await call()
        except JudgeError as exc:  # RetryableError and FatalError both carry the response's headers
            self.update(exc.headers)
            if isinstance(exc, RetryableError) and exc.retry_after:
                self.pause(min(exc.retry_after, max_pause))
            raise
        used = 0
        for a in answers:
            self.update(a.headers)  # type: ignore[attr-defined]
            used += a.input_tokens + a.output_tokens  # type: ignore[attr-defined]
        self.correct_tokens(used - tokens)
        return answers

    def correct_tokens(self, delta: int) -> None:
        """Charge the difference between a request's real and estimated tokens."""
        if self.tokens is not None:
            self.tokens.level -= delta

    def pause(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` (after a 429 with retry-after)."""
        self.paused_until = max(self.paused_until, time.monotonic() + max(0.0, seconds))

    def _tighten(self, which: str, limit: float) -> None:
        if limit <= 0:
            return
        bucket = getattr(self, which)
        if bucket is None:
            bucket = _Bucket(limit, self.burst_s)
            bucket.level = 0.0  # we have been sending unlimited until now
            setattr(self, which, bucket)
        elif limit < bucket.per_minute:
            bucket.set_rate(limit, self.burst_s)
            bucket.level = min(bucket.level, bucket.capacity)

    def update(self, headers: Mapping[str, str] | None) -> None:
        """Learn the account's limits and remaining quota from response headers."""
        if not headers:
            return
        h = {k.lower(): v for k, v in headers.items()}
        for kind, which in (("requests", "requests"), ("tokens", "tokens")):
            limit = _num(h.get(f"x-ratelimit-limit-{kind}") or h.get(f"anthropic-ratelimit-{kind}-limit"))
            if limit:
                self._tighten(which, limit)
            remaining = _num(h.get(f"x-ratelimit-remaining-{kind}")
                             or h.get(f"anthropic-ratelimit-{kind}-remaining"))
            if remaining is not None and remaining <= 0:
                reset = parse_duration(h.get(f"x-ratelimit-reset-{kind}")) \
                    or _until(h.get(f"anthropic-ratelimit-{kind}-reset"))
                if reset and limit:
                    # Quota is gone until `reset`; wait one refill interval at most, because the
                    # provider refills continuously rather than all at once.
                    self.pause(min(reset, 60.0 / limit if kind == "requests" else reset, 60.0))


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _until(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, when.timestamp() - time.time())
