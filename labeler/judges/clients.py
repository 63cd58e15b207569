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
each on the httpx client of the chosen transport: the SDK's aiohttp one, or its
``DefaultAsyncHttpxClient``; see :mod:`labeler.judges.transports`), so keys, base URLs, headers,
proxies and error classes are exactly the SDK's; they share one TLS context (loading the CA bundle
once, not once per client). Without a known in-flight count (a judge used outside the engine)
there is one SDK client on its own default httpx client and pool, whatever the transport.

:meth:`ClientPool.post` is the one way requests leave: wire-ready bytes POSTed through the least
busy client, by a :class:`labeler.judges.direct.DirectSender` (the request prebuilt once per
client and endpoint by the SDK itself, then sent through that client's httpx client) or, where
a request cannot be prebuilt, the SDK's own ``client.post``. Either way the response is the
whole HTTP response and the errors are the SDK's.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from labeler.judges.direct import DirectSender, direct_senders
from labeler.judges.transports import choose, http_client, httpx_of

__all__ = ["CONNECTIONS_PER_CLIENT", "ClientPool", "httpx_of", "split"]


#: Connections in one client's pool: the pool scan per request is O(this), not O(in flight).
CONNECTIONS_PER_CLIENT = 8


def split(in_flight: int, per_client: int = CONNECTIONS_PER_CLIENT) -> list[int]:
    """Pool sizes of the clients serving ``in_flight`` requests: as even as possible, each at
    most ``per_client``, together exactly ``in_flight``."""
    n = max(1, -(-in_flight // per_client))
    return [in_flight // n + (i < in_flight % n) for i in range(n)]


class ClientPool:
    """``await pool.post(path, data)`` through the least busy SDK client.

    ``make(http_client)`` builds one SDK client on the given httpx client (None: the SDK's
    default). Clients are built on the first request, inside the running event loop, on the
    transport that ``--http-transport`` chooses (:func:`labeler.judges.transports.choose`; the
    judges and generators call it up front too, so a missing aiohttp is a UserError before any
    request)."""

    def __init__(self, sdk: ModuleType, make: Callable[[Any], Any], in_flight: int | None,
                 timeout: float, transport: str = "auto") -> None:
        self.sdk = sdk
        self.httpx = httpx_of(sdk)
        self.transport = choose(transport, sdk)
        self._make = make
        self.in_flight = in_flight
        self._timeout = timeout
        self.clients: list[Any] = []
        #: The httpx client each SDK client was built on (None: the SDK's default, not ours).
        self.https: list[Any] = []
        #: Each client's direct sender (None: requests go through the SDK's ``client.post``).
        self.senders: list[DirectSender | None] = []
        self.busy: list[int] = []

    @property
    def sizes(self) -> list[int] | None:
        """Each client's connection limit (None: one client, the SDK's default pool)."""
        return None if self.in_flight is None else split(self.in_flight)

    def _build(self) -> None:
        sizes = self.sizes
        if sizes is None:  # the SDK's own default client: what a library caller of a judge expects
            self.https = [None]
        else:
            tls = self.httpx.create_ssl_context()
            self.https = [http_client(self.sdk, self.transport, connections=n, timeout=self._timeout, verify=tls)
                          for n in sizes]
        self.clients = [self._make(http) for http in self.https]
        self.senders = direct_senders(self.sdk, self.httpx, self._make, self.clients, self.https)
        self.busy = [0] * len(self.clients)

    def _least_busy(self) -> int:
        if not self.clients:
            self._build()
        busy = self.busy
        return busy.index(min(busy)) if len(busy) > 1 else 0

    async def post(self, path: str, data: bytes) -> Any:
        """POST wire-ready ``data`` to ``path`` (relative to the base URL) through the least busy
        client: the whole HTTP response (body read), or the SDK's error for it."""
        i = self._least_busy()
        busy = self.busy
        busy[i] += 1
        try:
            sender = self.senders[i]
            if sender is not None:
                return await sender.post(path, data)
            return await self.clients[i].post(path, content=data, cast_to=self.httpx.Response)
        finally:
            busy[i] -= 1

    async def aclose(self) -> None:
        clients, senders = self.clients, self.senders
        self.clients, self.https, self.senders, self.busy = [], [], [], []
        for client in clients:
            await client.close()
        for replay in {sender.replay for sender in senders if sender is not None}:
            await replay.aclose()
