"""One call to a provider API, and the one classification of its failures.

API judges (:mod:`labeler.judges.http_judge`) and API generation backends
(:mod:`labeler.sources.generation.api`) send the same way — wire-ready bytes POSTed through a
:class:`labeler.judges.clients.ClientPool` under ONE deadline — and fail the same way, so both
call :func:`call` and every provider error is classified here, once.

Both SDKs raise the same exception family (``APITimeoutError``, ``APIConnectionError``,
``APIStatusError``, ``APIResponseValidationError``): 408/409/429 and 5xx (529 overloaded
included) are retryable, with the server's ``retry-after``; 401/403/404 abort the run (every later
request would fail the same way); other 4xx fail the row or sample. Connection failures,
deadlines and 5xx are marked :func:`down`, which the labeling engine's dead-server check reads.
Keys are scrubbed from every message. When to try again is not decided here but in
:mod:`labeler.engine.retry`.

The deadline covers the whole request, body included: the SDKs' timeouts are per read, so a
server dripping a byte a second kept one request alive for minutes.
"""

from __future__ import annotations

import asyncio
import re
from types import ModuleType
from typing import Any

from labeler.engine.retry import parse_retry_after
from labeler.errors import FatalError, RetryableError

RETRYABLE_STATUS = {408, 409, 429}
ABORT_STATUS = {401, 403, 404}
_KEYLIKE = re.compile(r"\b(sk|key|sess)-[A-Za-z0-9_\-*]{4,}")


def scrub(message: str, secret: str | None) -> str:
    """Remove the API key (and key-like strings such as OpenAI's masked ``sk-abc***xyz``)."""
    if secret:
        message = message.replace(secret, "***")
    return _KEYLIKE.sub(r"\1-***", message)


def down(error: RetryableError, kind: str) -> RetryableError:
    """Mark ``error`` as a sign that the server may be down (connection refused or reset, no answer
    in time, 5xx): the engine stops a run whose first requests all fail this way."""
    error.down = kind
    return error


def lower_headers(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def timeout_text(seconds: float) -> str:
    return f"timeout: no complete answer within {seconds:g}s"


def classify(sdk: ModuleType, exc: Exception, *, secret: str | None, timeout: float) -> Exception:
    """The RetryableError / FatalError for ``exc`` raised by ``sdk``'s client or by the deadline of
    ``timeout`` seconds; ``exc`` itself when it is none of the SDK's (a bug, to propagate)."""
    if isinstance(exc, (sdk.APITimeoutError, TimeoutError)):
        return down(RetryableError(timeout_text(timeout)), "timeout")
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc}" + (f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else "")
        return down(RetryableError(scrub(f"connection error: {detail}", secret)), "connection error")
    if isinstance(exc, sdk.APIStatusError):
        headers = lower_headers(exc.response.headers)
        code = exc.status_code
        text = scrub(f"HTTP {code}: {exc.message}", secret)
        if code in RETRYABLE_STATUS or code >= 500:
            error = RetryableError(text, retry_after=parse_retry_after(headers), headers=headers)
            return down(error, f"HTTP {code}") if code >= 500 else error
        return FatalError(text, headers=headers, abort=code in ABORT_STATUS)
    if isinstance(exc, sdk.APIResponseValidationError):
        return RetryableError(scrub(f"unexpected response: {exc}", secret))
    return exc


async def call(pool: Any, path: str, data: bytes, *, timeout: float, secret: str | None) -> tuple[str, dict[str, str]]:
    """POST ``data`` to ``path`` through ``pool`` (a :class:`labeler.judges.clients.ClientPool`)
    within ``timeout`` seconds in all: the body text and the lower-cased response headers. A
    failure is raised classified (:func:`classify`), without the SDK's traceback chained."""
    try:
        async with asyncio.timeout(timeout):
            response = await pool.post(path, data)
            return response.text, lower_headers(response.headers)
    except Exception as exc:  # classified; anything unknown propagates as a bug
        classified = classify(pool.sdk, exc, secret=secret, timeout=timeout)
        if classified is exc:
            raise
        raise classified from None
