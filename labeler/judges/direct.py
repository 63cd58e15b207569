"""Send wire-ready bytes through an SDK client's httpx client, without the SDK's per-request build.

The SDK's ``client.post`` rebuilds every request from scratch: it copies and validates its typed
options, merges its auth and default headers, builds the URL and the timeout, and wraps the
response; at hundreds of requests a second that was most of a request's client CPU. None of
it changes from one request to the next of one client and endpoint. :class:`DirectSender`
therefore lets the SDK build ONE request per endpoint (the first time it is used), through a
:class:`Replay` client — the same SDK client built by the same ``make`` on an httpx client whose
transport answers from memory, so nothing leaves the process; one per pool, as the pool's
clients are built alike — and keeps that request's URL, headers and timeout. Each later request is one ``httpx.Request("POST", url, headers, content)``
sent through the httpx client the SDK client was built on (so the pool, proxies, TLS and socket
options are the SDK's own). What goes on the wire is what ``client.post`` sends, byte for byte,
because the SDK built it: key, ``anthropic-version``, user agent, ``x-stainless-*`` (retry count
0, read timeout), ``Content-Type``; tests/test_direct_sender.py compares the two on the wire.

Errors are the SDK's own, too. A response of status >= 400 is handed to the replay client, which
raises exactly what ``client.post`` raises for it (class — Anthropic picks some by the
``error_code`` in the body —, message, body, response headers), so no SDK mapping is copied
here. A timeout is ``APITimeoutError``; httpx's other request errors, TLS errors and anyio's
stream ends are ``APIConnectionError``, chained to the cause; anything else propagates — the
SDK's own mapping.

Where a request cannot be prebuilt, :func:`direct_senders` gives None and the pool keeps
``client.post``: a client with ``custom_auth`` (Anthropic's token providers, OpenAI's X.509
workload identity: the token changes), OpenAI workload identity or an API-key callable (no
static key in the auth headers), a client class other than the plain ``AsyncOpenAI`` /
``AsyncAnthropic`` (Azure, Bedrock, Vertex rewrite paths and add query strings per request), a
client with default query parameters, and a pool without an in-flight size (one client on the
SDK's default httpx client, which the pool does not hold). The key is read once, as the SDK
reads it once at client build (a changed ``OPENAI_API_KEY`` reaches neither before the next run).
"""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: The replay client's answer for the request being replayed, per task (several tasks replay
#: at once through one client): ``[response to give, request the SDK built]``.
_SLOT: contextvars.ContextVar[list[Any]] = contextvars.ContextVar("stepdpo_direct_replay")


def _answer(request: Any) -> Any:
    slot = _SLOT.get()
    slot[1] = request
    return slot[0]


def _send_errors(sdk: ModuleType, httpx: ModuleType) -> tuple[type[BaseException], ...]:
    """What the SDK turns into ``APIConnectionError`` when ``send`` raises it: httpx's request
    errors, plus TLS and anyio stream ends that httpx leaves unmapped."""
    errors: list[type[BaseException]] = [httpx.RequestError, ssl.SSLError]
    try:
        import anyio

        errors.append(anyio.EndOfStream)
    except ImportError:  # pragma: no cover - both SDKs depend on anyio
        pass
    return tuple(errors)


def direct_senders(sdk: ModuleType, httpx: ModuleType, make: Callable[[Any], Any], clients: list[Any],
                   https: list[Any]) -> list[DirectSender | None]:
    """A :class:`DirectSender` per SDK client ``clients[i]`` built by ``make(https[i])``, or None
    where its requests cannot be prebuilt (see the module docstring: the pool then uses
    ``client.post``). The clients of one pool are built alike, so they share one :class:`Replay`."""
    replay: Replay | None = None
    senders: list[DirectSender | None] = []
    for client, http in zip(clients, https, strict=True):
        if not prebuildable(sdk, client, http):
            senders.append(None)
            continue
        replay = replay or Replay(sdk, httpx, make, http)
        senders.append(DirectSender(replay, http))
    return senders


def prebuildable(sdk: ModuleType, client: Any, http: Any) -> bool:
    """Whether every request of ``client`` on ``http`` can be the SDK's first one, prebuilt."""
    if http is None or type(client) not in {getattr(sdk, "AsyncOpenAI", None), getattr(sdk, "AsyncAnthropic", None)}:
        return False
    if client.custom_auth is not None or getattr(client, "workload_identity", None) is not None:
        return False
    return bool(client.auth_headers) and not client.default_query


class Replay:
    """The SDK client once more, built by the same ``make`` on an httpx client that answers from
    memory (with the default headers and timeout of the pool's httpx client ``http``, so the
    requests it builds are the ones the pool's clients would send): it builds each endpoint's
    request once, and the SDK's error for a response of status >= 400."""

    def __init__(self, sdk: ModuleType, httpx: ModuleType, make: Callable[[Any], Any], http: Any) -> None:
        self.sdk, self.httpx = sdk, httpx
        # Same default headers and timeout as the pool's httpx clients: the SDK client derives its
        # own timeout (and so x-stainless-read-timeout) from its httpx client's when ``make``
        # passes none.
        self.client = make(httpx.AsyncClient(transport=httpx.MockTransport(_answer), headers=http.headers,
                                             timeout=http.timeout))
        self.prepared: dict[str, tuple[Any, list[tuple[bytes, bytes]], dict[str, Any]]] = {}
        self.timeouts = (httpx.TimeoutException,)
        self.errors = _send_errors(sdk, httpx)

    async def post(self, path: str, data: bytes, response: Any) -> tuple[Any, Any]:
        """``client.post(path, data)`` answered by ``response``: (what it returned, the request
        the SDK built). Raises what the SDK raises for ``response``."""
        slot = [response, None]
        token = _SLOT.set(slot)
        try:
            result = await self.client.post(path, content=data, cast_to=self.httpx.Response)
        finally:
            _SLOT.reset(token)
        return result, slot[1]

    async def prepare(self, path: str) -> tuple[Any, list[tuple[bytes, bytes]], dict[str, Any]]:
        """URL, raw headers (without Content-Length, which each body sets) and extensions (the
        timeout) of the SDK's request to ``path``."""
        prepared = self.prepared.get(path)
        if prepared is None:
            _, request = await self.post(path, b"{}", self.httpx.Response(200, content=b"{}"))
            headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
            prepared = self.prepared[path] = (request.url, headers, dict(request.extensions))
        return prepared

    async def aclose(self) -> None:
        await self.client.close()


class DirectSender:
    """POST wire-ready bytes to an endpoint of one SDK client, through its httpx client ``http``."""

    def __init__(self, replay: Replay, http: Any) -> None:
        self.replay, self.http = replay, http
        self.sdk, self.httpx = replay.sdk, replay.httpx

    async def post(self, path: str, data: bytes) -> Any:
        """The whole HTTP response (body read) of POSTing ``data`` to ``path``; the SDK's errors."""
        replay = self.replay
        url, headers, extensions = replay.prepared.get(path) or await replay.prepare(path)
        httpx = self.httpx
        request = httpx.Request("POST", url, headers=headers, content=data, extensions=extensions)
        try:
            response = await self.http.send(request, stream=True)
            try:
                if response.status_code < 400:
                    await response.aread()
                    return response
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except replay.timeouts as exc:
            raise self.sdk.APITimeoutError(request=request) from exc
        except replay.errors as exc:
            raise self.sdk.APIConnectionError(request=request) from exc
        # The SDK builds (and raises) its own error for this status, headers and body.
        replayed = httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(raw))
        result, _ = await replay.post(path, data, replayed)
        return result  # pragma: no cover - the SDK raises for every status >= 400
