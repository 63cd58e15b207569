"""All retry timing of the labeler lives here.

The SDKs' own retries are off (``max_retries=0``) so that two retry layers never multiply and
every wait is visible to the engine's counters. A judge classifies a failure as RetryableError
(optionally carrying the server's ``retry-after``) or FatalError; this module decides when to
try again: jittered exponential backoff, but never sooner than the server asked.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from labeler.errors import RetryableError

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")


@dataclass
class RetryPolicy:
    max_attempts: int = 6
    #: First backoff in seconds; doubles each attempt, plus up to the same again as jitter.
    initial: float = 1.0
    #: Longest single wait in seconds (a retry-after above it is capped).
    max_wait: float = 60.0


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations (``1s``, ``6m0s``, ``17ms``) in seconds."""
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def backoff(policy: RetryPolicy, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based)."""
    rng = rng or random
    expo = min(policy.max_wait, policy.initial * 2 ** (attempt - 1))
    wait = expo + rng.uniform(0, expo)  # full jitter on top: concurrent retries spread out
    if retry_after is not None:
        # The server knows when capacity frees up: wait that long, plus a little jitter so all
        # the requests it refused do not come back in the same millisecond.
        wait = retry_after + rng.uniform(0, max(0.05, 0.1 * retry_after))
    return min(policy.max_wait, wait)


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> tuple[T, int]:
    """Run ``fn`` until it succeeds, raises a non-retryable error, or ``max_attempts`` pass.

    Returns ``(result, attempts)``; on failure the last exception is raised with an
    ``attempts`` attribute set. ``sleep`` replaces ``asyncio.sleep`` between attempts (the
    engine's ends early when the run is stopping).
    """

    # The first attempt, nearly always the only one, runs without building a retry loop (a
    # tenacity AsyncRetrying per request was a measurable share of a request's CPU).
    try:
        return await fn(), 1
    except RetryableError as exc:
        if policy.max_attempts <= 1:
            exc.attempts = 1  # type: ignore[attr-defined]
            raise
        first: RetryableError = exc
    except Exception as exc:
        exc.attempts = 1  # type: ignore[attr-defined]
        raise

    # tenacity only once a request has failed: its import is ~15 ms of start-up before the first request.
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff(policy, state.attempt_number + 1, getattr(exc, "retry_after", None))

    def before_sleep(state: RetryCallState) -> None:
        if on_retry and state.outcome is not None:
            on_retry(state.outcome.exception(), state.next_action.sleep if state.next_action else 0.0)

    attempts = 1
    try:
        pause = backoff(policy, 1, first.retry_after)
        if on_retry:
            on_retry(first, pause)
        await (sleep or asyncio.sleep)(pause)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(max(1, policy.max_attempts) - 1),
            wait=wait,
            retry=retry_if_exception_type(RetryableError),
            before_sleep=before_sleep,
            reraise=True,
            **({"sleep": sleep} if sleep is not None else {}),
        ):
            with attempt:
                attempts = attempt.retry_state.attempt_number + 1
                result = await fn()
    except Exception as exc:
        exc.attempts = attempts  # type: ignore[attr-defined]
        raise
    return result, attempts
