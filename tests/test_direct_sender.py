"""The direct sender (labeler/judges/direct.py) against its oracle, the SDK's own ``client.post``.

For openai AND anthropic, one scripted loopback server answers both senders the same way; the
request each puts on the wire (method, path, headers, body bytes) and what each raises (class,
status code, message, body, response headers) must be equal, for every status the judges see,
a non-JSON error body and a 429 with retry-after / x-ratelimit headers. Plus: a refused
connection is ``APIConnectionError``, a server that never answers ``APITimeoutError``, and a
client whose auth cannot be prebuilt (Anthropic ``credentials=``) falls back to ``client.post``.
And the classification of those errors is one (labeler/judges/provider.py): a judge and a
generator answered the same error raise the same thing.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from labeler.judges.clients import ClientPool

KEY = "sk-test-direct-0123456789"
PATH = {"openai": "/chat/completions", "anthropic": "/v1/messages"}
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "2 + 2 = ?  é"}]},
                  ensure_ascii=False, separators=(",", ":")).encode()


class Scripted(ThreadingHTTPServer):
    """Answers every POST with ``self.reply`` = (status, headers, body bytes); keeps each request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
        self.seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = []


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.seen.append((self.command, self.path, list(self.headers.items()), body))
        status, headers, data = self.server.reply
        self.send_response(status)
        for k, v in {"content-type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = Scripted()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def maker(name: str, url: str, timeout: float = 5.0, **extra: Any):
    sdk = importlib.import_module(name)
    cls = sdk.AsyncOpenAI if name == "openai" else sdk.AsyncAnthropic
    base = url + "/v1" if name == "openai" else url
    auth = extra or {"api_key": KEY}
    return lambda http: cls(base_url=base, max_retries=0, timeout=timeout, http_client=http, **auth)


def pools(name: str, url: str, timeout: float = 5.0, **extra: Any) -> tuple[ClientPool, ClientPool]:
    """(direct, oracle): the same clients, one pool with an in-flight size (9: two clients, their
    requests through the direct sender), one without (the SDK's ``client.post``)."""
    sdk = importlib.import_module(name)
    make = maker(name, url, timeout, **extra)
    return ClientPool(sdk, make, 9, timeout), ClientPool(sdk, make, None, timeout)


async def outcome(pool: ClientPool, path: str) -> Any:
    try:
        response = await pool.post(path, BODY)
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return exc
    return response


def wire(seen: tuple[str, str, list[tuple[str, str]], bytes]) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """A recorded request without the one header that differs by connection, not by sender."""
    method, path, headers, body = seen
    return method, path, sorted((k.lower(), v) for k, v in headers if k.lower() != "host"), body


def same_headers(headers: Any) -> dict[str, str]:
    """Response headers without the server's clock."""
    return {k: v for k, v in headers.items() if k != "date"}


def error_of(name: str, status: int, kind: str) -> bytes:
    if name == "openai":
        return json.dumps({"error": {"message": f"{kind} happened", "type": kind, "code": None}}).encode()
    error: dict[str, Any] = {"type": kind, "message": f"{kind} happened"}
    if kind == "ramp_limit_exceeded":  # Anthropic's specific codes ride in error.details
        error = {"type": "rate_limit_error", "message": "slow down", "details": {"error_code": kind}}
    return json.dumps({"type": "error", "error": error}).encode()


KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 422: "unprocessable",
         429: "rate_limit_error", 500: "api_error", 503: "service_unavailable", 529: "overloaded_error"}

#: (label, status, response headers, error type in the body; None: the body is the label's text)
CASES: list[tuple[str, int, dict[str, str], str | None]] = [
    *[(f"{code}", code, {}, kind) for code, kind in KINDS.items()],
    ("429+headers", 429, {"retry-after": "7", "retry-after-ms": "6500", "x-ratelimit-remaining-requests": "0",
                          "x-ratelimit-reset-requests": "6.5s", "anthropic-ratelimit-requests-remaining": "0"},
     "rate_limit_error"),
    ("429 with a specific error type", 429, {}, "ramp_limit_exceeded"),
    ("<html>bad gateway</html>", 502, {"content-type": "text/html"}, None),
    ("", 500, {}, None),
]


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_wire_and_errors_equal_the_sdk_post(server, name):
    """Every case: the same request on the wire, the same answer or error as ``client.post``."""
    url = f"http://127.0.0.1:{server.server_address[1]}"
    direct, oracle = pools(name, url)
    sdk = importlib.import_module(name)

    async def go() -> None:
        try:
            server.reply = (200, {"x-request-id": "r1"}, b'{"ok": true}')
            for _ in range(2):  # the first request prepares the sender, the second is prebuilt
                server.seen.clear()
                got, want = await outcome(direct, PATH[name]), await outcome(oracle, PATH[name])
                assert [wire(s) for s in server.seen[:1]] == [wire(s) for s in server.seen[1:]]
                assert server.seen[0][3] == BODY and server.seen[0][1].endswith(PATH[name])
                assert got.status_code == want.status_code == 200 and got.text == want.text == '{"ok": true}'
                assert got.headers["x-request-id"] == "r1"
            assert oracle.senders == [None] and len(direct.senders) == 2  # 9 in flight: two clients,
            assert len({sender.replay for sender in direct.senders}) == 1  # one Replay builds for both
            for label, status, headers, kind in CASES:
                data = label.encode() if kind is None else error_of(name, status, kind)
                server.reply = (status, headers, data)
                server.seen.clear()
                got, want = await outcome(direct, PATH[name]), await outcome(oracle, PATH[name])
                assert isinstance(want, sdk.APIStatusError), label
                assert type(got) is type(want), label
                assert (got.status_code, got.message, got.body) == (want.status_code, want.message, want.body), label
                assert same_headers(got.response.headers) == same_headers(want.response.headers), label
                assert got.__cause__ is None and got.__suppress_context__ == want.__suppress_context__, label
                assert [wire(s) for s in server.seen[:1]] == [wire(s) for s in server.seen[1:]], label
        finally:
            await direct.aclose()
            await oracle.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_specific_error_classes(server, name):
    """The direct sender's errors are the SDK's specific classes (the comparison above is not
    two equal fallbacks): 401 AuthenticationError, 429 RateLimitError, and Anthropic's own
    table (413 ContentTooLargeError, 503 ServiceUnavailableError, 529 OverloadedError, a 429 of
    error_code ramp_limit_exceeded RampLimitExceededError)."""
    url = f"http://127.0.0.1:{server.server_address[1]}"
    direct, _ = pools(name, url)
    sdk = importlib.import_module(name)
    want = {401: sdk.AuthenticationError, 404: sdk.NotFoundError, 429: sdk.RateLimitError,
            503: sdk.InternalServerError}
    if name == "anthropic":  # the SDK's own table: a class per status, some per error type too
        want.update({413: sdk.ContentTooLargeError, 503: sdk.ServiceUnavailableError, 529: sdk.OverloadedError,
                     (429, "ramp_limit_exceeded"): sdk.RampLimitExceededError})

    async def go() -> dict[Any, type]:
        got = {}
        try:
            for case in want:
                status, kind = case if isinstance(case, tuple) else (case, KINDS[case])
                server.reply = (status, {}, error_of(name, status, kind))
                got[case] = type(await outcome(direct, PATH[name]))
        finally:
            await direct.aclose()
        return got

    assert asyncio.run(go()) == want


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_a_make_without_timeout_sends_what_client_post_sends(server, name):
    """A ``make`` that passes no timeout: the SDK client takes its httpx client's (7 s here), and
    the direct sender's request says so too (x-stainless-read-timeout), like ``client.post`` of
    the same pooled client."""
    sdk = importlib.import_module(name)
    cls = sdk.AsyncOpenAI if name == "openai" else sdk.AsyncAnthropic
    url = f"http://127.0.0.1:{server.server_address[1]}" + ("/v1" if name == "openai" else "")
    pool = ClientPool(sdk, lambda http: cls(base_url=url, api_key=KEY, max_retries=0, http_client=http), 2, 7.0)

    async def go() -> None:
        try:
            server.reply = (200, {}, b"{}")
            server.seen.clear()
            await pool.post(PATH[name], BODY)
            await pool.clients[0].post(PATH[name], content=BODY, cast_to=pool.httpx.Response)
        finally:
            await pool.aclose()

    asyncio.run(go())
    direct, oracle = (wire(s) for s in server.seen)
    assert direct == oracle and ("x-stainless-read-timeout", "7.0") in direct[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_refused_connection_and_timeout(name):
    """Nobody listening: APIConnectionError, chained to httpx's error, as from ``client.post``.
    A server that accepts and never answers: APITimeoutError within the client's timeout."""
    sdk = importlib.import_module(name)
    refused = pools(name, f"http://127.0.0.1:{free_port()}")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = pools(name, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)

        async def go() -> list[Any]:
            out = []
            for direct, oracle in (refused, hung):
                try:
                    out.append((await outcome(direct, PATH[name]), await outcome(oracle, PATH[name])))
                finally:
                    await direct.aclose()
                    await oracle.aclose()
            return out

        (got_r, want_r), (got_t, want_t) = asyncio.run(go())
    assert type(got_r) is type(want_r) is sdk.APIConnectionError
    assert type(got_r.__cause__) is type(want_r.__cause__) and got_r.message == want_r.message
    assert type(got_t) is type(want_t) is sdk.APITimeoutError
    assert type(got_t.__cause__) is type(want_t.__cause__)


def test_a_token_provider_falls_back_to_the_sdk_post(server):
    """Anthropic ``credentials=`` (a token provider: custom_auth) cannot be prebuilt: the pool
    keeps ``client.post``, and each request carries the provider's current token."""
    import anthropic

    url = f"http://127.0.0.1:{server.server_address[1]}"
    tokens = iter(["tok-1", "tok-2"])
    direct, _ = pools("anthropic", url, credentials=lambda force_refresh=False: anthropic.AccessToken(next(tokens), 0))

    async def go() -> None:
        try:
            server.reply = (200, {}, b"{}")
            server.seen.clear()
            await direct.post(PATH["anthropic"], BODY)
            await direct.post(PATH["anthropic"], BODY)
            assert direct.senders == [None, None]
        finally:
            await direct.aclose()

    asyncio.run(go())
    auth = [dict((k.lower(), v) for k, v in s[2]).get("authorization") for s in server.seen]
    assert auth == ["Bearer tok-1", "Bearer tok-2"]


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_judges_and_generation_classify_alike(server, name, monkeypatch):
    """One classification of provider errors (labeler/judges/provider.py): a judge and a
    generator of the same provider answered the same error raise the same class with the same
    message, retry-after, abort and down marks; the key never appears."""
    from labeler.errors import FatalError, RetryableError
    from labeler.judges.base import Item
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import create_judge
    from labeler.sources.generation.base import GenRequest, Sampling
    from labeler.sources.generation.registry import create_generator

    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    spec = {"openai": "openai:gpt-4o-mini", "anthropic": "anthropic:claude-haiku-4-5"}[name]
    judge, generator = create_judge(spec, JudgeConfig()), create_generator(spec)
    judge.use_concurrency(2)
    generator.use_concurrency(2)
    item = Item("r0", "What is 1 + 1?", ["1 + 1 = 2."])
    request = GenRequest("k0", "What is 1 + 1?", chat=True)
    cases = [(429, {"retry-after": "3"}, RetryableError, False, None), (503, {}, RetryableError, False, "HTTP 503"),
             (401, {}, FatalError, True, None), (400, {}, FatalError, False, None)]

    async def go() -> list[tuple[Any, Any]]:
        out = []
        try:
            for status, headers, _, _, _ in cases:
                body = error_of(name, status, KINDS[status]).replace(b"happened", f"happened for {KEY}".encode())
                server.reply = (status, headers, body)
                pair = []
                for ask in (lambda: judge.judge([item]), lambda: generator.generate([request], Sampling())):
                    try:
                        await ask()
                    except Exception as exc:  # noqa: BLE001 - the classified error is compared
                        pair.append(exc)
                out.append(tuple(pair))
        finally:
            await judge.aclose()
            await generator.aclose()
        return out

    for (status, _, cls, abort, down), (by_judge, by_generator) in zip(cases, asyncio.run(go()), strict=True):
        assert type(by_judge) is type(by_generator) is cls, status
        assert str(by_judge) == str(by_generator) and str(by_judge).startswith(f"HTTP {status}: ")
        assert KEY not in str(by_judge) and "***" in str(by_judge)
        assert getattr(by_judge, "abort", False) == getattr(by_generator, "abort", False) == abort
        assert getattr(by_judge, "down", None) == getattr(by_generator, "down", None) == down
        assert getattr(by_judge, "retry_after", None) == getattr(by_generator, "retry_after", None)
        assert getattr(by_judge, "retry_after", None) == (3.0 if status == 429 else None)
