"""Error bodies that are not the provider's JSON error say why (labeler/judges/provider.py).

A gateway or proxy in front of an OpenAI-compatible or Anthropic endpoint answers an HTML 403
page or a plain-text 502; the openai SDK dropped that body ("HTTP 403: Error code: 403") and the
anthropic SDK kept all of it, markup and newlines included. The oracle: the loopback fake
(tests/fakes/llm_server.py, ``PROXY_FAULTS``) answers known bodies over real HTTP to the real
SDKs, on both transports; the row's error in the shard and the one-line stop of a 403 carry the
body's excerpt, on one line, with no key; a provider JSON error reads exactly as the SDK says it.
A batch submission refused by such a proxy (`label --batch`) says why the same way.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labeler.judges import provider
from labeler.judges.clients import ClientPool
from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.llm_server import PROXY_FAULTS, FaultConfig
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent
GSM8K = [REPO / "data" / "gsm8k" / "test_sample.jsonl"]
KEY = "gw-0123456789abcdef"  # a gateway key of no known shape: only the exact-secret scrub can hide it
FAST = ["--backoff", "0.01", "--max-backoff", "0.05", "--progress", "none", "--no-cache"]
JUDGES = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
PATH = {"openai": "/chat/completions", "anthropic": "/v1/messages"}
#: What a person must read in the message of each proxy fault (tests/fakes/llm_server.py).
SAYS = {"html403": "HTTP 403: 403 Forbidden Key *** is not allowed from this network & region. nginx/1.25.3",
        "text502": "HTTP 502: upstream connect error or disconnect/reset before headers. reset reason: connection "
                   "failure, transport failure reason: delayed connect error: 111",
        "html400": "HTTP 400: Bad Request: Request header or cookie too large padding padding"}


# -- the excerpt itself ---------------------------------------------------------------------------

def test_excerpt_of_html_text_and_long_bodies():
    nginx = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
             "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    assert provider.body_excerpt(nginx, "text/html") == "502 Bad Gateway nginx"
    cloudflare = ("<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title><script>x = 1 < 2;"
                  "</script><style>p{}</style></head><body><!-- ray --><h1>Sorry, you have been blocked</h1>"
                  "<p>You are unable&nbsp;to access</p></body></html>")
    assert provider.body_excerpt(cloudflare) == ("Attention Required! | Cloudflare: Sorry, you have been blocked "
                                                 "You are unable to access")
    assert provider.body_excerpt("line one\n\n\tline\x00two  ") == "line one line two"
    long = provider.body_excerpt("word " * 100)
    assert len(long) == provider.EXCERPT_CHARS and long.endswith("…") and "\n" not in long
    assert provider.body_excerpt("<html><title>T</title></html>", "text/html") == "T"
    huge = "<html><title>Too big</title><body>" + "<p>x</p>" * 2_000_000 + "</body></html>"
    assert provider.body_excerpt(huge).startswith("Too big x x x")  # read from its top only


# -- the classification, on the wire -------------------------------------------------------------

def maker(name: str, url: str):
    sdk = importlib.import_module(name)
    cls = sdk.AsyncOpenAI if name == "openai" else sdk.AsyncAnthropic
    base = url + "/v1" if name == "openai" else url
    return lambda http: cls(base_url=base, api_key=KEY, max_retries=0, timeout=5.0, http_client=http)


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_proxy_bodies_are_excerpted_and_provider_errors_read_as_the_sdk_says(fake, name, transport):
    """Through the direct sender (a pool with an in-flight size) and the SDK's ``client.post``
    (one without), on both transports: each proxy body gives its excerpt; the fake's JSON 401
    (which echoes the key) reads exactly ``HTTP 401: `` + the SDK's own message, key scrubbed."""
    sdk = importlib.import_module(name)

    async def go() -> list[tuple[str, Exception, Exception]]:
        out = []
        for in_flight in (9, None):
            pool = ClientPool(sdk, maker(name, fake.url), in_flight, 5.0, transport)
            try:
                for fault in [*SAYS, "401"]:
                    fake.faults = FaultConfig(script=[fault, fault])
                    try:  # the SDK's own error: the oracle of the JSON case
                        await pool.post(PATH[name], b"{}")
                    except sdk.APIStatusError as exc:
                        raw = exc
                    try:
                        await provider.call(pool, PATH[name], b"{}", timeout=5.0, secret=KEY)
                    except Exception as exc:  # noqa: BLE001 - the classified error is the outcome
                        out.append((fault, raw, exc))
            finally:
                await pool.aclose()
        return out

    outcomes = asyncio.run(go())
    assert len(outcomes) == 8
    for fault, raw, got in outcomes:
        text = str(got)
        assert KEY not in text and "\n" not in text, (fault, text)
        if fault == "401":
            assert text == f"HTTP 401: {raw.message}".replace(KEY, "***"), text
            assert KEY in raw.message  # the fake did echo it: the scrub is tested
            continue
        assert text.startswith(SAYS[fault]) and len(text) <= len("HTTP 400: ") + provider.EXCERPT_CHARS, text
        assert "<" not in text and "var k" not in text and "color:red" not in text
    kinds = {fault: type(got).__name__ for fault, _, got in outcomes}
    assert kinds == {"html403": "FatalError", "text502": "RetryableError", "html400": "FatalError",
                     "401": "FatalError"}
    assert [getattr(got, "abort", None) for fault, _, got in outcomes if fault == "html403"] == [True, True]


def test_a_json_body_without_a_message_is_shown_not_dropped(fake):
    """openai keeps only ``error.message`` of a JSON body: a gateway's ``{"detail": ...}`` left
    the bare ``Error code: 403``; it is excerpted like any other body the SDK did not show."""
    import openai

    async def go() -> Exception:
        pool = ClientPool(openai, maker("openai", fake.url), 2, 5.0, "httpx")
        original = fake.routes[("POST", "/v1/chat/completions")]
        fake.routes[("POST", "/v1/chat/completions")] = lambda fake_, h, body: h.send_json(
            403, {"detail": f"Not authenticated ({KEY})"}, {})
        try:
            await provider.call(pool, PATH["openai"], b"{}", timeout=5.0, secret=KEY)
        except Exception as exc:  # noqa: BLE001
            return exc
        finally:
            fake.routes[("POST", "/v1/chat/completions")] = original
            await pool.aclose()
        raise AssertionError("no error")

    assert str(asyncio.run(go())) == 'HTTP 403: {"detail": "Not authenticated (***)"}'


# -- end to end: the shard's row errors and the one-line stop ------------------------------------

@pytest.fixture
def env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    return tmp_path


def marked(n: int, markers: list[str]) -> list[dict]:
    from schemas.ids import response_id

    rows = gsm8k_rows(GSM8K, n)
    for row, marker in zip(rows, markers, strict=False):
        row["steps"] = [row["steps"][0] + " " + marker, *row["steps"][1:]]
        row["response_id"] = response_id(row["prompt"], row["steps"])
    return rows


@pytest.mark.parametrize("judge", JUDGES)
def test_label_records_the_excerpt_in_the_row_and_stops_on_a_403_with_it(env, fake, capsys, judge, transport):
    rows = marked(6, ["[[html400]]", "[[text502]]"])
    inp = write_responses(rows, env / "in.parquet")
    fake.faults = FaultConfig(rules={"[[html400]]": "html400", "[[text502]]": "text502"}, retry_after=0.01)
    rc = main(["label", str(inp), "--judge", judge, "-o", str(env / "run"), "--max-attempts", "2",
               "--http-transport", transport, *FAST])
    log = capsys.readouterr()
    assert rc == 1, log
    errors = {r["response_id"]: r["error"] for r in read_table(env / "run", STEP_SCORES).to_pylist()}
    assert len(errors) == 6 and sum(e is None for e in errors.values()) == 4  # the others are scored
    assert SAYS["html400"] in errors[rows[0]["response_id"]]
    assert SAYS["text502"] in errors[rows[1]["response_id"]]
    assert fake.fault_counts["text502"] == 2 and fake.fault_counts["html400"] == 1  # 5xx retried, 400 not
    assert all(KEY not in (e or "") and "\n" not in (e or "") for e in errors.values())

    fake.faults = FaultConfig(rules={"[[html403]]": "html403"})
    rc = main(["label", str(write_responses(marked(6, ["[[html403]]"] * 6), env / "all.parquet")), "--judge", judge,
               "-o", str(env / "stopped"), "--http-transport", transport, *FAST])
    log = capsys.readouterr()
    lines = [line for line in log.err.splitlines() if "HTTP 403" in line]
    assert rc == 2 and len(lines) == 1, log
    assert SAYS["html403"] in lines[0] and KEY not in log.err + log.out, log
    assert json.loads((env / "stopped" / "run.json").read_text())["state"] == "aborted"


@pytest.mark.parametrize("backend", JUDGES)
def test_generate_stops_on_a_403_page_with_its_excerpt(env, fake, capsys, backend, transport):
    from tests.fakes.policy_server import write_problems

    problems = write_problems(env / "problems.jsonl", [(3, 4), (10, 25)])
    fake.faults = FaultConfig(rules={"messages": "html403"})  # every request's body names its messages
    rc = main(["generate", str(problems), "--generator", backend, "--template", "chat", "-o", str(env / "gen"),
               "-n", "2", "--http-transport", transport, *FAST])
    log = capsys.readouterr()
    lines = [line for line in log.err.splitlines() if "HTTP 403" in line]
    assert rc == 2 and len(lines) == 1, log
    assert SAYS["html403"] in lines[0] and KEY not in log.err + log.out, log


class Gateway(ThreadingHTTPServer):
    """A proxy that refuses every request with its HTML 403 page (the fake's ``html403``),
    echoing the key it was sent — whatever the route: the batch API's uploads included."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Refuse)

    def __enter__(self) -> Gateway:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Refuse(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        _, content_type, page = PROXY_FAULTS["html403"]
        key = (self.headers.get("authorization") or self.headers.get("x-api-key") or "").removeprefix("Bearer ")
        data = page.replace("{key}", key).encode()
        self.send_response(403)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST  # noqa: N815


@pytest.mark.parametrize("judge", JUDGES)
def test_a_batch_submission_refused_by_a_proxy_says_why_on_one_line(tmp_path, capsys, monkeypatch, judge):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with Gateway() as gateway:
        url = f"http://127.0.0.1:{gateway.server_address[1]}"
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
        inp = write_responses(gsm8k_rows(GSM8K, 2), tmp_path / "in.parquet")
        rc = main(["label", str(inp), "--judge", judge, "-o", str(tmp_path / "run"), "--batch", "--poll-interval",
                   "0.01", *FAST])
    log = capsys.readouterr()
    lines = log.err.strip().splitlines()
    assert rc == 2 and "Traceback" not in log.err, log
    assert "refused: HTTP 403: " + SAYS["html403"].removeprefix("HTTP 403: ") in lines[-1], log
    assert KEY not in log.err + log.out
