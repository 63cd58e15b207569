"""What the OpenAI and Anthropic judges share: one request per response through an official
SDK, errors classified by HTTP status, keys scrubbed from every message.

Both SDKs raise the same exception family (``APITimeoutError``, ``APIConnectionError``,
``APIStatusError``, ``APIResponseValidationError``), so one classifier serves both: 408/409/429
and 5xx (529 overloaded included) are retryable, 401/403/404 abort the run (every later request
would fail the same way), other 4xx fail the row. A provider subclass only builds its client,
sends a body and parses an answer.

``--timeout`` is one deadline for the whole request, body included (the SDKs' timeouts are per
read, so a server dripping a byte a second kept one request alive for minutes). An answer of an
odd shape (a 200 whose JSON body is ``null`` or a list, fields of the wrong type) is a malformed
answer, retryable, never an exception that takes the run down. Connection failures, deadlines
and 5xx are marked :func:`down`, which the engine's dead-server check reads.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import inspect
import json
import re
from collections.abc import Mapping
from typing import Any

from labeler.engine.retry import parse_retry_after
from labeler.judges.base import FatalError, Item, Judge, RetryableError, Verdict
from labeler.judges.config import JudgeConfig
from schemas.errors import UserError

RETRYABLE_STATUS = {408, 409, 429}
ABORT_STATUS = {401, 403, 404}
_KEYLIKE = re.compile(r"\b(sk|key|sess)-[A-Za-z0-9_\-*]{4,}")


def scrub(message: str, secret: str | None) -> str:
    """Remove the API key (and key-like strings such as OpenAI's masked ``sk-abc***xyz``)."""
    if secret:
        message = message.replace(secret, "***")
    return _KEYLIKE.sub(r"\1-***", message)


async def body_text(raw: Any) -> str:
    """The body of an SDK raw response (a property on openai's, a coroutine on anthropic's)."""
    text = raw.text
    if callable(text):
        text = text()
    if inspect.isawaitable(text):
        text = await text
    return text


def malformed_answer(message: str, headers: Mapping[str, str] | None, tokens: dict[str, int]) -> RetryableError:
    """A bad answer is retried, but its tokens were billed: ``usage`` lets the engine count them."""
    return RetryableError(message, headers=headers, usage=tokens)


def down(error: RetryableError, kind: str) -> RetryableError:
    """Mark ``error`` as a sign that the server may be down (connection refused or reset, no answer
    in time, 5xx): the engine stops a run whose first requests all fail this way."""
    error.down = kind
    return error


def lower_headers(headers: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


class HttpJudge(Judge):
    """An API judge: ``request_body``/``parse_body`` are its whole wire format (the batch mode
    sends and reads exactly these), ``_send`` the one SDK call of the online path."""

    batch_size = 1
    #: The SDK's module name; its exception classes drive :meth:`_classify`.
    sdk: str

    def __init__(self, config: JudgeConfig, *, api_key: str, base_url: str | None) -> None:
        self.config = config
        self._api_key = api_key
        self._base_url = base_url
        self._client: Any = None
        try:  # imported now, not at the first request: a missing SDK is a clear error up front
            importlib.import_module(self.sdk)
        except ImportError as exc:
            raise UserError(
                f"judge '{self.sdk}' needs the {self.sdk} package: pip install 'stepwise-dpo[api]'"
            ) from exc

    def batch_connection(self) -> dict[str, Any]:
        return {"api_key": self._api_key, "base_url": self._base_url}

    def cache_inputs(self, item: Item) -> dict[str, Any] | None:
        # A template that shows the gold answer asks a different question per gold answer.
        template = getattr(self, "template", None)
        if template is not None and "{gold_answer}" in template.user:
            return {"gold_answer": item.gold_answer}
        return None

    @abc.abstractmethod
    def request_body(self, item: Item) -> dict[str, Any]:
        """The exact JSON body of the request judging ``item``."""

    @abc.abstractmethod
    def parse_body(self, item: Item, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Verdict:
        """The verdict in a response body; raises RetryableError on a malformed answer."""

    @abc.abstractmethod
    def _make_client(self) -> Any:
        """The SDK's async client, with ``max_retries=0`` (the engine retries, once, visibly)."""

    @abc.abstractmethod
    async def _send(self, client: Any, body: dict[str, Any]) -> Any:
        """Send ``body``; return the SDK's raw response (``with_raw_response``)."""

    def _classify(self, exc: Exception) -> Exception:
        sdk = importlib.import_module(self.sdk)
        if isinstance(exc, (sdk.APITimeoutError, TimeoutError)):
            return down(RetryableError(self._timeout_text()), "timeout")
        if isinstance(exc, sdk.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f"{exc}" + (f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else "")
            return down(RetryableError(scrub(f"connection error: {detail}", self._api_key)), "connection error")
        if isinstance(exc, sdk.APIStatusError):
            headers = lower_headers(exc.response.headers)
            code = exc.status_code
            text = scrub(f"HTTP {code}: {exc.message}", self._api_key)
            if code in RETRYABLE_STATUS or code >= 500:
                error = RetryableError(text, retry_after=parse_retry_after(headers), headers=headers)
                return down(error, f"HTTP {code}") if code >= 500 else error
            return FatalError(text, headers=headers, abort=code in ABORT_STATUS)
        if isinstance(exc, sdk.APIResponseValidationError):
            return RetryableError(scrub(f"unexpected response: {exc}", self._api_key))
        return exc

    def _timeout_text(self) -> str:
        return f"timeout: no complete answer within {self.config.timeout:g}s"

    def verdict_of(self, item: Item, body: Any, headers: Mapping[str, str] | None = None) -> Verdict:
        """:meth:`parse_body` with every odd shape turned into a malformed answer: a body that is
        JSON ``null``, a list or a string, or fields of the wrong type, are that row's retryable
        error, never an AttributeError that takes the run down."""
        if not isinstance(body, dict):
            kind = "null" if body is None else type(body).__name__
            raise malformed_answer(f"malformed answer: the response body is JSON {kind}, not an object",
                                   headers, {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0})
        try:
            return self.parse_body(item, body, headers)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            raise malformed_answer(f"malformed answer: unexpected shape ({type(exc).__name__}: {exc})"[:300],
                                   headers, {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0}) from None

    async def _request(self, item: Item) -> tuple[str, dict[str, str]]:
        """One request and its whole body, under ONE deadline of ``--timeout`` seconds: the SDK's
        own timeout is per read, so a server dripping a byte a second would keep it alive for
        minutes."""
        async with asyncio.timeout(self.config.timeout):
            raw = await self._send(self._client, self.request_body(item))
            return await body_text(raw), lower_headers(raw.headers)

    async def judge(self, items: list[Item]) -> list[Verdict]:
        if self._client is None:  # created inside the running event loop
            self._client = self._make_client()
        out = []
        for item in items:
            try:
                text, headers = await self._request(item)
            except Exception as exc:  # classified; anything unknown propagates as a bug
                classified = self._classify(exc)
                if classified is exc:
                    raise
                raise classified from None
            try:
                body = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                raise RetryableError("malformed answer: response body is not JSON", headers=headers) from None
            out.append(self.verdict_of(item, body, headers))
        return out

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
