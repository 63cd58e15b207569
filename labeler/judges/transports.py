"""Which HTTP transport carries the API requests, and the httpx client that uses it.

Both SDKs ship an aiohttp transport under their httpx client (``sdk.DefaultAioHttpClient``, the
SDKs' ``aiohttp`` extra, part of ours: ``stepwise-dpo[api]``). It costs about a quarter less client
CPU per request than httpx's own (httpcore) pool, so ``--http-transport auto`` takes it whenever
``aiohttp`` is importable. It stays an httpx client: the SDK still builds every request, and
httpx still decides the proxy from ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` /
``NO_PROXY`` (a proxied URL gets its own aiohttp transport with that proxy), so keys, headers,
proxies and the SDKs' error classes are the same on both. ``--http-transport httpx`` is the
SDKs' default transport, for debugging (httpx's and httpcore's own logging) or when a proxy or
TLS setting misbehaves under aiohttp.

One fix for every caller: the openai SDK's copy of the aiohttp transport maps EVERY aiohttp
``ClientConnectionError`` (a refused connection, a server that hung up) to
``httpx.ConnectTimeout``, so a dead server read as "no answer in time" and the SDK reported a
timeout. :func:`honest_error` maps such an error back from its cause (anything not a
``TimeoutError`` is a connection error, not a timeout), in the ``send`` of the httpx client
:func:`http_client` builds, which every request goes through: the SDK's ``post`` (judges,
generation) and any code that sends a prebuilt request on that client. Only errors before the
response headers are affected: a body cut off or reset later is aiohttp's ``ClientPayloadError``,
which the transport maps to ``ReadError`` already, so ``send(..., stream=True)`` followed by
``aread()`` needs nothing more. The same ``send`` turns a base URL's ``user:password@`` into Basic
auth as httpx does (aiohttp refuses credentials in a URL next to the SDK's key header).

Timeouts: the aiohttp transport takes its socket-connect, socket-read and connect (pool wait +
connect) limits from the httpx client's timeout, which :class:`~labeler.judges.clients.ClientPool`
sets to the judge's ``--timeout`` (never aiohttp's defaults); the judges' one-deadline
``asyncio.timeout`` bounds the whole request on top of that.
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType
from typing import Any

from schemas.errors import UserError

#: The values of ``--http-transport``.
TRANSPORTS = ("auto", "aiohttp", "httpx")
INSTALL = "pip install 'stepwise-dpo[api]'"


def httpx_of(sdk: ModuleType) -> ModuleType:
    """The httpx package ``sdk`` is built on (``httpx2`` for openai ≥ 3 / anthropic ≥ 2,
    ``httpx`` before): its ``Limits``, ``Response`` and TLS helper are the ones the SDK accepts."""
    base = next(c for c in sdk.DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient")
    return sys.modules[base.__module__.partition(".")[0]]


def aiohttp_ready(sdk: ModuleType) -> bool:
    """Whether ``sdk``'s aiohttp client works here: ``aiohttp`` imports, and the SDK's
    ``DefaultAioHttpClient`` is its real client (the SDK puts a stand-in that raises on use there
    when aiohttp was missing at its own import)."""
    try:
        importlib.import_module("aiohttp")
    except ImportError:
        return False
    client = getattr(sdk, "DefaultAioHttpClient", None)  # SDKs older than their aiohttp extra
    return client is not None and any(c.__name__.endswith("AiohttpClient") for c in client.__mro__[1:])


def choose(choice: str, sdk: ModuleType) -> str:
    """``"aiohttp"`` or ``"httpx"`` for ``--http-transport choice``; a UserError for an unknown
    choice, or for ``aiohttp`` where it cannot be used."""
    if choice not in TRANSPORTS:
        raise UserError(f"--http-transport must be one of {', '.join(TRANSPORTS)}, not {choice!r}")
    if choice == "httpx":
        return "httpx"
    if aiohttp_ready(sdk):
        return "aiohttp"
    if choice == "aiohttp":
        raise UserError(f"--http-transport aiohttp needs the aiohttp package: {INSTALL} "
                        "(or --http-transport httpx)")
    return "httpx"


def honest_error(exc: Exception, httpx: Any, request: Any = None) -> Exception | None:
    """The httpx error the aiohttp transport should have raised for ``exc``, or None when ``exc``
    is right. A ``ConnectTimeout`` whose aiohttp cause is not a ``TimeoutError`` was a refused
    connection (``ConnectError``), a failing proxy (``ProxyError``) or a connection that broke
    after it was made: reset, or the server hung up (``ReadError``)."""
    cause = exc.__cause__
    if not isinstance(exc, httpx.ConnectTimeout) or cause is None or isinstance(cause, TimeoutError):
        return None
    import aiohttp

    if isinstance(cause, aiohttp.ClientProxyConnectionError):
        kind = httpx.ProxyError
    elif isinstance(cause, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    else:
        kind = httpx.ReadError
    return kind(str(exc) or type(cause).__name__, request=request)


@functools.cache
def aiohttp_client_class(sdk: ModuleType) -> type:
    """``sdk.DefaultAioHttpClient`` whose ``send`` raises :func:`honest_error`'s errors."""
    httpx = httpx_of(sdk)

    class HonestAioHttpClient(sdk.DefaultAioHttpClient):  # type: ignore[misc,name-defined]
        async def send(self, request: Any, **kwargs: Any) -> Any:
            url = request.url
            if url.userinfo:
                # httpx sends a base URL's user:password@ as Basic auth (in place of the SDK's key
                # header); aiohttp refuses a URL with credentials next to an Authorization
                # header. Do what httpx does, through its own BasicAuth, and send the bare URL.
                next(httpx.BasicAuth(url.username, url.password).auth_flow(request))
                request.url = url.copy_with(username=None, password=None)
            try:
                return await super().send(request, **kwargs)
            except httpx.ConnectTimeout as exc:
                honest = honest_error(exc, httpx, request)
                if honest is None:
                    raise
                raise honest from exc.__cause__

    HonestAioHttpClient.__qualname__ = HonestAioHttpClient.__name__ = f"HonestAioHttpClient[{sdk.__name__}]"
    return HonestAioHttpClient


def http_client(sdk: ModuleType, transport: str, *, connections: int, timeout: float,
                verify: Any = True) -> Any:
    """The httpx client under one SDK client: ``transport`` (from :func:`choose`), a pool of
    ``connections``, every timeout of it ``timeout`` seconds."""
    limits = httpx_of(sdk).Limits(max_connections=connections, max_keepalive_connections=connections)
    kwargs: dict[str, Any] = {"timeout": timeout, "verify": verify, "limits": limits}
    kind = aiohttp_client_class(sdk) if transport == "aiohttp" else sdk.DefaultAsyncHttpxClient
    return kind(**kwargs)
