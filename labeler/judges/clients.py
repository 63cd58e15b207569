"""SDK clients whose connection pools fit the requests the engine keeps in flight.

The SDKs' default pool (1,000 connections, 100 kept alive) is sized for every workload at once,
and httpcore walks every pooled connection of a client twice per request (once when the request
joins the pool, once when it leaves), probing each idle socket with a ``poll()``. At 64 requests
in flight that scan was the largest CPU cost of a request after the SDK's typed transform.
:class:`ClientPool` therefore holds ``ceil(in_flight / CONNECTIONS_PER_CLIENT)`` SDK clients,
each with a pool of ``CONNECTIONS_PER_CLIENT`` connections, and sends each request through the
least busy one. Least busy is enough to never queue: while fewer than ``clients × per_client``
requests are in flight, some client has a free connection.

The clients are the official SDK's own (``openai.AsyncOpenAI`` / ``anthropic.AsyncAnthropic``,
each on the SDK's ``DefaultAsyncHttpxClient`` with its socket options and proxy handling), so
keys, base URLs, headers and error classes are exactly the SDK's; they share one TLS context
(loading the CA bundle once, not once per client). Without a known in-flight count (a judge used
outside the engine) there is one client with the SDK's default pool.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

#: Connections in one client's pool: the pool scan per request is O(this), not O(in flight).
CONNECTIONS_PER_CLIENT = 8


def httpx_of(sdk: ModuleType) -> ModuleType:
    """The httpx package ``sdk`` is built on (``httpx2`` for openai ≥ 3 / anthropic ≥ 2,
    ``httpx`` before): its ``Limits``, ``Response`` and TLS helper are the ones the SDK accepts."""
    base = next(c for c in sdk.DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient")
    return sys.modules[base.__module__.partition(".")[0]]


def split(in_flight: int, per_client: int = CONNECTIONS_PER_CLIENT) -> list[int]:
    """Pool sizes of the clients serving ``in_flight`` requests: as even as possible, each at
    most ``per_client``, together exactly ``in_flight``."""
    n = max(1, -(-in_flight // per_client))
    return [in_flight // n + (i < in_flight % n) for i in range(n)]


class ClientPool:
    """``await pool.send(lambda client: client.post(...))`` through the least busy SDK client.

    ``make(http_client)`` builds one SDK client on the given httpx client (None: the SDK's
    default). Clients are built on the first send, inside the running event loop."""

    def __init__(self, sdk: ModuleType, make: Callable[[Any], Any], in_flight: int | None,
                 timeout: float) -> None:
        self.sdk = sdk
        self.httpx = httpx_of(sdk)
        self._make = make
        self.in_flight = in_flight
        self._timeout = timeout
        self.clients: list[Any] = []
        self.busy: list[int] = []

    @property
    def sizes(self) -> list[int] | None:
        """Each client's connection limit (None: one client, the SDK's default pool)."""
        return None if self.in_flight is None else split(self.in_flight)

    def _build(self) -> None:
        sizes = self.sizes
        if sizes is None:
            self.clients = [self._make(None)]
        else:
            tls = self.httpx.create_ssl_context()
            self.clients = [self._make(self.sdk.DefaultAsyncHttpxClient(
                limits=self.httpx.Limits(max_connections=n, max_keepalive_connections=n),
                timeout=self._timeout, verify=tls)) for n in sizes]
        self.busy = [0] * len(self.clients)

    async def send(self, call: Callable[[Any], Awaitable[T]]) -> T:
        if not self.clients:
            self._build()
        busy = self.busy
        i = busy.index(min(busy)) if len(busy) > 1 else 0
        busy[i] += 1
        try:
            return await call(self.clients[i])
        finally:
            busy[i] -= 1

    async def aclose(self) -> None:
        clients, self.clients, self.busy = self.clients, [], []
        for client in clients:
            await client.close()
