"""``--http-transport``: the SDKs' aiohttp transport and httpx's own behave the same on the wire
(labeler/judges/transports.py), through the real SDK clients against loopback servers.

Oracles: the exception class the SDK raises (a dead server is a connection error, never a
timeout), the aiohttp exception underneath (so an aiohttp test cannot pass on httpx), the
deadline a hung server is given up at, and which server a request reached (a loopback forward
proxy that records every request line, or the fake itself) under HTTP_PROXY / HTTPS_PROXY /
NO_PROXY.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import socketserver
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from labeler.judges.clients import ClientPool
from labeler.judges.config import JudgeConfig
from labeler.judges.registry import create_judge
from labeler.judges.transports import aiohttp_ready, choose, http_client, httpx_of
from schemas.errors import UserError
from stepdpo.cli import main
from tests.fakes.llm_server import FakeLLMServer, FaultConfig
from tests.fakes.policy_server import write_problems

KEY = "sk-test-transports-0123456789"
SDKS = ["openai", "anthropic"]
PATHS = {"openai": "/chat/completions", "anthropic": "/v1/messages"}
BODIES = {"openai": b'{"model":"m","messages":[{"role":"user","content":"Step 1: a"}]}',
          "anthropic": b'{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"Step 1: a"}],'
                       b'"tools":[{"name":"t","input_schema":{"type":"object","properties":{}}}]}'}


def base_url(sdk: str, root: str) -> str:
    return root + "/v1" if sdk == "openai" else root


def make(sdk: str, url: str, timeout: float = 5.0):
    """``make`` as the judges' ``_make_client``: the SDK client, its timeout the judge's."""
    module = importlib.import_module(sdk)
    cls = module.AsyncOpenAI if sdk == "openai" else module.AsyncAnthropic
    return lambda http_client: cls(api_key=KEY, base_url=url, max_retries=0, timeout=timeout,
                                   http_client=http_client)


def post(sdk: str, url: str, transport: str, timeout: float = 5.0, limit: float = 20.0, via: str = "direct"):
    """One POST: ``(response or exception, seconds)``. ``via="direct"``: through a two-connection
    ClientPool's own ``post`` (its direct sender); ``"sdk"``: the SDK client's own ``post`` on the
    httpx client such a pool builds for it (``http_client``), the path of a client the direct
    sender cannot serve."""
    module = importlib.import_module(sdk)

    async def go():
        if via == "sdk":  # one SDK client on the httpx client a pool of two connections builds
            http = http_client(module, choose(transport, module), connections=2, timeout=timeout,
                               verify=httpx_of(module).create_ssl_context())
            client = make(sdk, url, timeout)(http)
            try:
                return await asyncio.wait_for(
                    client.post(PATHS[sdk], content=BODIES[sdk], cast_to=httpx_of(module).Response), limit)
            finally:
                await client.close()
        pool = ClientPool(module, make(sdk, url, timeout), 2, timeout, transport)
        try:
            result = await asyncio.wait_for(pool.post(PATHS[sdk], BODIES[sdk]), limit)
            assert pool.senders and all(pool.senders), "not the direct sender"
            return result
        finally:
            await pool.aclose()

    start = time.monotonic()
    try:
        result = asyncio.run(go())
    except Exception as exc:  # the SDK's error is the result under test
        result = exc
    return result, time.monotonic() - start


def causes(exc: BaseException) -> list[BaseException]:
    out = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def assert_carried_by(exc: BaseException, transport: str) -> None:
    """The aiohttp transport raised it (an aiohttp error underneath), or httpx's did (none)."""
    from_aiohttp = any(type(e).__module__.startswith("aiohttp") for e in causes(exc))
    assert from_aiohttp == (transport == "aiohttp"), [type(e) for e in causes(exc)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Loopback(socketserver.ThreadingTCPServer):
    """A loopback server whose ``with`` block stops its loop before closing its socket
    (socketserver's own ``__exit__`` only closes it: the loop thread then spins on the closed
    socket for the rest of the session, and every later test runs at a fraction of its speed)."""

    daemon_threads = True
    allow_reuse_address = True

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        super().__exit__(*exc)


class HangUp(_Loopback):
    """Accepts, reads the request, and closes without a byte of answer (a server that died)."""

    def __init__(self) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ForwardProxy(_Loopback):
    """A loopback HTTP proxy: forwards absolute-form requests (``POST http://host/path``) one per
    connection, refuses ``CONNECT`` with 403; ``lines`` holds every request line it was sent."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                head, _, body = head.partition(b"\r\n\r\n")
                line, *headers = head.decode("latin-1").split("\r\n")
                proxy.lines.append(line)
                method, target, _ = line.split(" ")
                if method == "CONNECT":
                    self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0)
                while len(body) < length and (chunk := self.request.recv(65536)):
                    body += chunk
                url = urlsplit(target)
                kept = [h for h in headers if not h.lower().startswith(("connection:", "proxy-", "keep-alive:"))]
                upstream = f"{method} {url.path or '/'} HTTP/1.1\r\n" + "\r\n".join([*kept, "Connection: close"])
                with socket.create_connection((url.hostname, url.port)) as up:
                    up.sendall(upstream.encode("latin-1") + b"\r\n\r\n" + body)
                    answer = b""
                    while chunk := up.recv(65536):
                        answer += chunk
                status, _, rest = answer.partition(b"\r\n\r\n")
                lines = [h for h in status.split(b"\r\n") if not h.lower().startswith(b"connection:")]
                self.request.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake():
    with FakeLLMServer(FaultConfig()) as server:
        yield server


@pytest.fixture
def no_proxy_env(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    return monkeypatch


# -- choice ------------------------------------------------------------------------------------
def test_auto_is_aiohttp_when_installed_and_the_pool_is_built_on_it(fake):
    """The test install has the api extra, so auto must take aiohttp (the fast path the bench
    measures), and the pool's clients are the SDK's aiohttp client with our fix on top."""
    import openai

    assert aiohttp_ready(openai) and choose("auto", openai) == "aiohttp"
    assert choose("httpx", openai) == "httpx"
    for transport, expected in (("auto", "HonestAioHttpClient"), ("httpx", "AsyncHttpxClient")):
        async def go(transport=transport):
            pool = ClientPool(openai, make("openai", fake.url + "/v1"), 3, 5.0, transport)
            await pool.post(PATHS["openai"], BODIES["openai"])
            built = [type(http).__name__ for http in pool.https]
            await pool.aclose()
            return built

        built = asyncio.run(go())
        assert built and all(expected in name for name in built), built
    assert fake.total_requests == 2


def test_aiohttp_forced_without_the_package_is_one_line(monkeypatch, capsys, tmp_path):
    """``--http-transport aiohttp`` where aiohttp cannot be imported: one line naming the extra,
    before any request; ``auto`` falls back to httpx."""
    import openai

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp -> ImportError
    assert choose("auto", openai) == "httpx"
    with pytest.raises(UserError, match=r"needs the aiohttp package: pip install 'stepwise-dpo\[api\]'"):
        choose("aiohttp", openai)
    with pytest.raises(UserError, match="--http-transport must be one of auto, aiohttp, httpx"):
        choose("h2", openai)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(UserError, match="stepwise-dpo\\[api\\]"):
        create_judge("openai:gpt-4o-mini", JudgeConfig(http_transport="aiohttp"))
    inp = write_problems(tmp_path / "problems.jsonl", [(1, 2)])
    rc = main(["generate", str(inp), "--generator", "openai-compatible:m@http://127.0.0.1:9/v1", "-o",
               str(tmp_path / "gen"), "--http-transport", "aiohttp"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("stepdpo generate: error:")]
    assert rc == 2 and len(lines) == 1 and "stepwise-dpo[api]" in lines[0] and "Traceback" not in err, err


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["direct", "sdk"])
@pytest.mark.parametrize("sdk", SDKS)
def test_refused_and_hung_up_are_connection_errors_not_timeouts(sdk, via, transport):
    """The openai SDK's aiohttp transport said ConnectTimeout for both; the SDK then reported a
    timeout and the engine's dead-server line said "× timeout" for a server that is not there.
    Fixed under both ways a request leaves the pool."""
    module = importlib.import_module(sdk)
    refused, seconds = post(sdk, base_url(sdk, f"http://127.0.0.1:{closed_port()}"), transport, via=via)
    assert isinstance(refused, module.APIConnectionError) and not isinstance(refused, module.APITimeoutError), refused
    assert type(refused.__cause__).__name__ == "ConnectError" and seconds < 5
    assert_carried_by(refused, transport)
    with HangUp() as server:
        hung, _ = post(sdk, base_url(sdk, server.url), transport, via=via)
    assert isinstance(hung, module.APIConnectionError) and not isinstance(hung, module.APITimeoutError), hung
    assert_carried_by(hung, transport)


@pytest.mark.parametrize("sdk", SDKS)
def test_a_silent_server_times_out_at_the_clients_timeout(fake, sdk, transport):
    """No answer at all: the transport's own read timeout is the pool's (the judge's --timeout,
    0.5 s here), not aiohttp's 5-minute default nor the SDK's 10 minutes."""
    module = importlib.import_module(sdk)
    fake.faults = FaultConfig(script=["hang"], hang_s=30)
    error, seconds = post(sdk, base_url(sdk, fake.url), transport, timeout=0.5)
    assert isinstance(error, module.APITimeoutError), error
    assert 0.4 < seconds < 4, seconds
    assert_carried_by(error, transport)


# -- proxies -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sdk", SDKS)
def test_proxy_variables_are_honoured_alike(fake, no_proxy_env, sdk, transport):
    """HTTP_PROXY carries a plain-http request through the proxy; HTTPS_PROXY tunnels (CONNECT)
    an https one; NO_PROXY=127.0.0.1 sends both direct."""
    module = importlib.import_module(sdk)
    with ForwardProxy() as proxy:
        no_proxy_env.setenv("HTTP_PROXY", proxy.url)
        no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
        answer, _ = post(sdk, base_url(sdk, fake.url), transport)
        assert getattr(answer, "status_code", None) == 200, answer
        port = fake.url.rsplit(":", 1)[1]
        assert proxy.lines == [f"POST {base_url(sdk, fake.url)}{PATHS[sdk]} HTTP/1.1"]
        assert fake.total_requests == 1

        tunnel, _ = post(sdk, base_url(sdk, f"https://127.0.0.1:{port}"), transport)
        assert isinstance(tunnel, module.APIConnectionError), tunnel  # the proxy refused the tunnel
        assert proxy.lines[1:] == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]

        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        answer, _ = post(sdk, base_url(sdk, fake.url), transport)
        assert getattr(answer, "status_code", None) == 200, answer
        post(sdk, base_url(sdk, f"https://127.0.0.1:{closed_port()}"), transport)  # direct: refused
        assert len(proxy.lines) == 2 and fake.total_requests == 2


# -- credentials in the base URL ---------------------------------------------------------------
class _Recorder(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@pytest.mark.parametrize("via", ["direct", "sdk"])
@pytest.mark.parametrize("sdk", SDKS)
def test_credentials_in_the_base_url_are_basic_auth_on_both_transports(sdk, via, no_proxy_env):
    """``openai-compatible:M@http://user:pass@host/v1`` (a server behind basic auth): httpx sends
    the userinfo as Basic auth; aiohttp refused the URL outright (ValueError). Oracle: the
    Authorization header and request line a recording server sees are the same on both."""
    seen: list[tuple[str, str]] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline().decode().strip()
            headers, length = {}, 0
            while (h := self.rfile.readline().decode().strip()):
                k, _, v = h.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            self.rfile.read(length)
            seen.append((line, headers.get("authorization", "")))
            body = b"{}"
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    with _Recorder(("127.0.0.1", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        root = f"http://carol:p%40ss@127.0.0.1:{server.server_address[1]}"
        try:
            results = [post(sdk, base_url(sdk, root), transport, via=via)[0] for transport in ("httpx", "aiohttp")]
        finally:
            server.shutdown()
    assert all(getattr(r, "status_code", None) == 200 for r in results), results
    assert len(seen) == 2 and seen[0] == seen[1], seen
    assert seen[0][1] == "Basic Y2Fyb2w6cEBzcw==" and "carol" not in seen[0][0], seen  # base64("carol:p@ss")
