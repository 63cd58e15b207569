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

A status error's message is the SDK's own (``HTTP 429: Error code: 429 - Rate limit reached``)
when the body is the provider's JSON error. A gateway or proxy in front of the API answers
otherwise — an HTML 403 page, a plain-text 502 ``upstream connect error`` — and the SDKs then
drop the body (openai: ``Error code: 403``) or keep all of it, newlines and markup included
(anthropic), so the line that says WHY was lost or unreadable. Such a message is then
``HTTP 403: `` + :func:`body_excerpt`: one line, tags stripped (the page's ``<title>`` first),
whitespace collapsed, at most :data:`EXCERPT_CHARS` characters, keys scrubbed like every message.

The deadline covers the whole request, body included: the SDKs' timeouts are per read, so a
server dripping a byte a second kept one request alive for minutes.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from types import ModuleType
from typing import Any

from labeler.engine.retry import parse_retry_after
from labeler.errors import FatalError, RetryableError

RETRYABLE_STATUS = {408, 409, 429}
ABORT_STATUS = {401, 403, 404}
_KEYLIKE = re.compile(r"\b(sk|key|sess)-[A-Za-z0-9_\-*]{4,}")
#: The longest excerpt of a non-JSON error body kept in a message (a row's error, a stop line).
EXCERPT_CHARS = 200
#: How much of an error body is read for its excerpt: a title and the first words are near its top,
#: and a multi-megabyte error page must not cost a row's worker a second of CPU per try.
EXCERPT_SCAN_CHARS = 100_000
_HIDDEN = re.compile(r"<(script|style|head|noscript|template)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


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


def one_line(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` on one line: runs of whitespace (newlines included) and control characters become
    one space, and a text longer than ``limit`` is cut and ends with an ellipsis."""
    text = _SPACE.sub(" ", "".join(c if c.isprintable() else " " for c in text)).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def body_excerpt(text: str, content_type: str = "", limit: int = EXCERPT_CHARS) -> str:
    """A short, single-line excerpt of an error body that is not the provider's JSON error.

    HTML (by its content type, or a body starting with ``<``) is reduced to what a person reads:
    its ``<title>``, then the visible text of the page (scripts, styles, the head and comments
    dropped, tags stripped, entities decoded), without repeating the title where the page's first
    words are the title again (nginx: ``<title>403 Forbidden</title>`` … ``<h1>403 Forbidden</h1>``).
    Anything else is the text itself. Either way :func:`one_line` of at most ``limit`` characters,
    from the first :data:`EXCERPT_SCAN_CHARS` characters of the body.
    """
    text = text[:EXCERPT_SCAN_CHARS]
    if "html" in content_type.lower() or text.lstrip().startswith("<"):
        title_match = _TITLE.search(text)
        title = one_line(html.unescape(_TAG.sub(" ", title_match.group(1))), 10**6) if title_match else ""
        visible = one_line(html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", text))), 10**6)
        text = visible if not title or visible.startswith(title) else f"{title}: {visible}".rstrip(": ")
    return one_line(text, limit)


def status_message(exc: Any, secret: str | None = None) -> str:
    """The message of the SDK's status error ``exc``: the SDK's own where the body is JSON that
    the SDK put in it (the provider's error, as always), else the body's :func:`body_excerpt`,
    cut from the body after ``secret`` is scrubbed from it (a cut must not leave half a key).

    openai keeps only ``error.message`` of a JSON body; a JSON body without one (a gateway's
    ``{"detail": "Not authenticated"}``) leaves the bare ``Error code: N``, and is then excerpted
    too. An empty or unread body leaves the SDK's message."""
    message = str(exc.message)
    try:
        text = exc.response.text.strip()
    except Exception:  # noqa: BLE001 - a body closed unread (httpx.ResponseNotRead): nothing to add
        return message
    if not text:
        return message
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        if message != f"Error code: {exc.status_code}":
            return message
    return body_excerpt(scrub(text, secret), exc.response.headers.get("content-type", ""))


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
        text = scrub(f"HTTP {code}: {status_message(exc, secret)}", secret)
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
