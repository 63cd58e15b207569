"""A loopback fake of the OpenAI Chat Completions and Anthropic Messages HTTP APIs.

The real ``openai`` / ``anthropic`` SDKs talk to it over real HTTP (respx cannot intercept the
httpx2 transport of openai ≥ 3), so tests exercise the exact code paths a paid run uses.

* Answers follow the JSON schema the request carries (``response_format.json_schema.schema`` or
  the forced tool's ``input_schema``): one array item per ``Step N:`` line of the prompt, with a
  deterministic score derived from the step text (:func:`score_of`), so tests assert exact values.
* Sends OpenAI ``x-ratelimit-*`` / Anthropic ``anthropic-ratelimit-*`` headers; an optional
  server-side requests/min limit (token bucket) answers 429 with ``retry-after`` beyond it.
* Injects faults on demand: a scripted sequence first, then seeded probabilities — ``429``,
  ``500``, ``529``, ``slow`` (sleeps past the client's timeout), ``malformed`` (not JSON),
  ``schema`` (valid JSON that violates the schema). The transport faults of a broken server:
  ``hang`` (reads the request, never answers), ``drip`` (headers, then the body one byte per
  ``drip_s``), ``close`` (headers and half the body, then the connection is dropped), ``null``
  and ``list`` (a 200 whose JSON body is ``null`` / ``[]``). The answers of a gateway or proxy in
  front of the API, not the provider's JSON (:data:`PROXY_FAULTS`): ``html403`` (an nginx-style
  HTML page that echoes the key it refused), ``html400``, ``text502`` (Envoy's plain-text
  ``upstream connect error``). ``rules`` pin a fault to every request whose text contains a
  marker, so a test knows which rows are hit.
* Counts requests per route and records request bodies and headers, the most requests it
  answered at once (``max_in_flight``) and the client ports it saw (``peers``: one a connection).

Routes live in :attr:`FakeLLMServer.routes` (``(method, path) -> handler``) so batch endpoints can
be added next to these. Run ``python -m tests.fakes.llm_server --latency 0.1`` to serve from a
separate process (benchmarks), it prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "529", "slow", "malformed", "schema", "401", "400", "hang", "drip", "close", "null", "list",
          "html403", "html400", "text502")
#: Faults that answer 200 and break the body or the connection (sent by :meth:`FakeLLMServer._answer`).
BODY_FAULTS = ("drip", "close", "null", "list")
STEP_RE = re.compile(r"^Step (\d+): ", re.M)
#: fault -> (status, content type, body; ``{key}`` is the credential the request carried).
PROXY_FAULTS = {
    "html403": (403, "text/html", "<html>\r\n<head><title>403 Forbidden</title>\n<style>body{color:red}</style></head>\r\n"
                "<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<p>Key {key} is not allowed from this "
                "network &amp; region.</p>\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"),
    "html400": (400, "text/html; charset=utf-8", "<!DOCTYPE html><html><head><title>Bad Request</title>"
                "<script>var k = '{key}';</script></head><body><h1>Request header or cookie too large</h1>"
                "<p>" + "padding " * 80 + "</p></body></html>"),
    "text502": (502, "text/plain", "upstream connect error or disconnect/reset before headers.\n"
                "reset reason: connection failure, transport failure reason: delayed connect error: 111\n"),
}


def score_of(step: str) -> float:
    """The fake judge's score of one step: a stable function of its text, in [0, 1]."""
    return int(hashlib.sha256(step.encode("utf-8")).hexdigest()[:8], 16) % 1001 / 1000


def verdict_of(step: str) -> str:
    return "correct" if score_of(step) >= 0.5 else "incorrect"


TAG_RE = re.compile(r"<(step|paragraph)_(\d+)>\n(.*?)\n</\1_\2>", re.S)


def split_steps(text: str) -> list[str]:
    """Recover the step texts from a prompt: tagged ``<step_N>`` / ``<paragraph_N>`` blocks (the
    judges' format), else lines numbered ``Step N: ...``."""
    tagged = TAG_RE.findall(text)
    if tagged:
        return [body for _, _, body in tagged]
    marks = list(STEP_RE.finditer(text))
    steps = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        steps.append(text[m.end():end].rstrip("\n"))
    if steps:  # the last step runs to the end of the prompt: cut any trailing instructions
        steps[-1] = steps[-1].split("\n\n")[0]
    return steps


def ntokens(text: str) -> int:
    return max(1, len(text) // 4)


@dataclass
class FaultConfig:
    """What the server does besides answering; change fields at any time (guarded by a lock)."""

    p429: float = 0.0
    p500: float = 0.0
    p529: float = 0.0
    p_slow: float = 0.0
    p_malformed: float = 0.0
    p_schema: float = 0.0
    seed: int = 0
    #: Faults to inject first, in order, one per request (``None`` entries answer normally).
    script: list[str | None] = field(default_factory=list)
    #: marker → fault for every request whose body contains the marker (before script and odds).
    rules: dict[str, str] = field(default_factory=dict)
    #: Probability of ``hang`` (the request is read and never answered).
    p_hang: float = 0.0
    #: How long a hung request is held (or until the server stops).
    hang_s: float = 60.0
    #: Seconds between the bytes of a dripped body.
    drip_s: float = 0.2
    retry_after: float = 0.05
    slow_s: float = 2.0
    latency_s: float = 0.0
    #: Answer the first N requests, then drop every later one's connection unanswered (a server
    #: killed mid-run: the client sees a connection error); None = never.
    die_after: int | None = None
    #: Server-side limit (requests per minute); None = unlimited.
    rpm_limit: float | None = None
    #: Bucket size of the server-side limit in seconds of traffic.
    burst_s: float = 2.0
    #: Advertised in rate-limit headers when no rpm_limit is set.
    advertised_rpm: int = 30_000  # an OpenAI tier-5 gpt-4o-mini account
    advertised_tpm: int = 150_000_000


class _Bucket:
    def __init__(self, rate_per_s: float, capacity: float) -> None:
        self.rate, self.capacity = rate_per_s, capacity
        self.level, self.t = capacity, time.monotonic()

    def take(self) -> float:
        """0 if a request may pass now, else the seconds until one may."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


Handler = Callable[["FakeLLMServer", "_RequestHandler", dict], None]


class FakeLLMServer:
    """Start with :meth:`start` (or as a context manager); ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, faults: FaultConfig | None = None) -> None:
        self.faults = faults or FaultConfig()
        self.lock = threading.Lock()
        self.rng = random.Random(self.faults.seed)
        self.counts: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []  # {"path", "headers", "body"}
        self.record = True  # keep request bodies (benchmarks turn it off)
        self.seen_prefixes: set[str] = set()
        self.in_flight = 0  # requests being answered now, and the most at once
        self.max_in_flight = 0
        self.peers: set[int] = set()  # client ports seen: one per TCP connection
        self.first_request_at: float | None = None  # time.time() of the first API request (start-up bench)
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): FakeLLMServer.chat_completions,
            ("POST", "/v1/messages"): FakeLLMServer.messages,
            # Control routes, for a server in another process (benchmarks).
            ("GET", "/_stats"): FakeLLMServer.stats_route,
            ("POST", "/_config"): FakeLLMServer.config_route,
            ("POST", "/_reset"): FakeLLMServer.reset_route,
        }
        self._bucket: _Bucket | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self.closing = threading.Event()  # ends hung and dripping requests when the server stops

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, port: int = 0) -> FakeLLMServer:
        server = self

        class Bound(_RequestHandler):
            fake = server

        self._httpd = _Server(("127.0.0.1", port), Bound)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.closing.set()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset_counts(self) -> None:
        with self.lock:
            self.counts.clear()
            self.fault_counts.clear()
            self.requests.clear()
            self.first_request_at = None

    @property
    def total_requests(self) -> int:
        return sum(v for k, v in self.counts.items() if not k.startswith("/_"))

    def stats_route(self, h: _RequestHandler, body: dict) -> None:
        with self.lock:
            counts = {k: v for k, v in self.counts.items() if not k.startswith("/_")}
            faults = dict(self.fault_counts)
        h.send_json(200, {"counts": counts, "total": sum(counts.values()), "faults": faults,
                          "first_request_at": self.first_request_at}, {})

    def config_route(self, h: _RequestHandler, body: dict) -> None:
        with self.lock:
            for k, v in body.items():
                setattr(self.faults, k, v)
            self._bucket = None
        h.send_json(200, {"ok": True}, {})

    def reset_route(self, h: _RequestHandler, body: dict) -> None:
        self.reset_counts()
        h.send_json(200, {"ok": True}, {})

    # -- fault and limit decisions ---------------------------------------------------------
    def _draw_fault(self, body: dict | None = None) -> str | None:
        f = self.faults
        if f.rules and body is not None:
            text = json.dumps(body, ensure_ascii=False)
            for marker, fault in f.rules.items():
                if marker in text:
                    with self.lock:
                        self.fault_counts[fault] += 1
                    return fault
        with self.lock:
            if f.script:
                fault = f.script.pop(0)
                if fault in BODY_FAULTS or fault in PROXY_FAULTS or fault == "hang":
                    self.fault_counts[fault] += 1
                return fault
            r = self.rng.random()
            for name, p in (("429", f.p429), ("500", f.p500), ("529", f.p529), ("slow", f.p_slow),
                            ("malformed", f.p_malformed), ("schema", f.p_schema), ("hang", f.p_hang)):
                if r < p:
                    if name == "hang":
                        self.fault_counts[name] += 1
                    return name
                r -= p
        return None

    def _over_limit(self) -> float:
        f = self.faults
        if not f.rpm_limit:
            return 0.0
        with self.lock:
            rate = f.rpm_limit / 60
            if self._bucket is None or self._bucket.rate != rate:
                self._bucket = _Bucket(rate, max(1.0, rate * f.burst_s))
            return self._bucket.take()

    def _limit_numbers(self) -> tuple[int, int]:
        rpm = int(self.faults.rpm_limit or self.faults.advertised_rpm)
        level = int(self._bucket.level) if self._bucket else rpm
        return rpm, max(0, level)

    # -- answers -----------------------------------------------------------------------------
    @staticmethod
    def fill(schema: dict, steps: list[str], index: int | None = None) -> Any:
        """A value matching ``schema``; arrays get one item per step, numbers the step's score."""
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next(k for k in kind if k != "null")
        step = steps[index] if index is not None and index < len(steps) else ""
        if kind == "object":
            return {k: FakeLLMServer.fill(v, steps, index) for k, v in schema.get("properties", {}).items()}
        if kind == "array":
            return [FakeLLMServer.fill(schema.get("items", {}), steps, i) for i in range(len(steps))]
        if kind == "integer":
            return (index or 0) + 1
        if kind == "number":
            return score_of(step)
        if kind == "boolean":
            return score_of(step) >= 0.5
        if "enum" in schema:
            options = schema["enum"]
            if "correct" in options and "incorrect" in options:
                return verdict_of(step)
            return options[0]
        return "ok"

    @staticmethod
    def violate(schema: dict, steps: list[str]) -> Any:
        """Valid JSON that breaks the schema: one step short and a score out of range."""
        good = FakeLLMServer.fill(schema, steps)
        for value in good.values():
            if isinstance(value, list) and value:
                value.pop()
                if value and isinstance(value[0], dict):
                    for k, v in value[0].items():
                        if isinstance(v, float):
                            value[0][k] = 7.5
        return good

    def _common_fault(self, h: _RequestHandler, fault: str | None, anthropic: bool) -> bool:
        """Send a transport-level fault; True if the request is answered."""
        rpm, remaining = self._limit_numbers()
        wait = self._over_limit()
        if wait or fault == "429":
            after = max(wait, self.faults.retry_after)
            self._send_error(h, 429, "rate_limit_error", "Rate limit reached (fake)", anthropic,
                             {"retry-after": f"{after:.3f}", **self._rl_headers(anthropic, rpm, 0)})
            return True
        if fault in ("401", "400"):
            # A real 401 echoes (part of) the key it got: the client must scrub it from its errors.
            auth = h.headers.get("authorization", "") or h.headers.get("x-api-key", "")
            message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}" if fault == "401" \
                else "Invalid request (fake)"
            etype = "authentication_error" if fault == "401" else "invalid_request_error"
            self._send_error(h, int(fault), etype, message, anthropic, {})
            return True
        if fault in PROXY_FAULTS:
            code, content_type, text = PROXY_FAULTS[fault]
            auth = h.headers.get("authorization", "") or h.headers.get("x-api-key", "")
            h.send_text(code, content_type, text.replace("{key}", auth.removeprefix("Bearer ")))
            return True
        if fault == "500":
            self._send_error(h, 500, "api_error", "Internal server error (fake)", anthropic, {})
            return True
        if fault == "529":
            self._send_error(h, 529, "overloaded_error", "Overloaded (fake)", anthropic, {})
            return True
        if fault == "hang":  # read, never answered: the client's deadline must end it
            self.closing.wait(self.faults.hang_s)
            h.close_connection = True
            return True
        if fault == "slow":
            time.sleep(self.faults.slow_s)
        if self.faults.latency_s:
            time.sleep(self.faults.latency_s)
        return False

    def _rl_headers(self, anthropic: bool, rpm: int, remaining: int) -> dict[str, str]:
        tpm = self.faults.advertised_tpm
        if anthropic:
            reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
            return {"anthropic-ratelimit-requests-limit": str(rpm),
                    "anthropic-ratelimit-requests-remaining": str(remaining),
                    "anthropic-ratelimit-requests-reset": reset,
                    "anthropic-ratelimit-tokens-limit": str(tpm),
                    "anthropic-ratelimit-tokens-remaining": str(tpm)}
        return {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": str(remaining),
                "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": str(tpm),
                "x-ratelimit-remaining-tokens": str(tpm), "x-ratelimit-reset-tokens": "0s"}

    def _send_error(self, h: _RequestHandler, code: int, etype: str, message: str, anthropic: bool,
                    headers: dict[str, str]) -> None:
        with self.lock:
            self.fault_counts[str(code)] += 1
        if anthropic:
            body = {"type": "error", "error": {"type": etype, "message": message}}
        else:
            body = {"error": {"message": message, "type": etype, "param": None, "code": None}}
        h.send_json(code, body, headers)

    def _answer(self, h: _RequestHandler, fault: str | None, body: Any, headers: dict[str, str]) -> None:
        """Send a 200 answer, or break it the way ``fault`` says."""
        if fault == "null":
            h.send_json(200, None, headers)
        elif fault == "list":
            h.send_json(200, [], headers)
        elif fault in ("drip", "close"):
            h.send_broken(json.dumps(body).encode(), headers, fault, self.faults.drip_s, self.closing)
        else:
            h.send_json(200, body, headers)

    def _cached_tokens(self, prefix: str) -> int:
        with self.lock:
            hit = prefix in self.seen_prefixes
            self.seen_prefixes.add(prefix)
        return ntokens(prefix) if hit else 0

    def chat_completions(self, h: _RequestHandler, body: dict) -> None:
        fault = self._draw_fault(body)
        if fault in ("malformed", "schema", "slow"):
            with self.lock:
                self.fault_counts[fault] += 1
        if self._common_fault(h, fault, anthropic=False):
            return
        messages = body.get("messages", [])
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        if isinstance(user, list):
            user = "".join(part.get("text", "") for part in user)
        prompt = "".join(m["content"] if isinstance(m["content"], str) else "" for m in messages)
        steps = split_steps(user)
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object", "properties": {}}
        if fault == "malformed":
            text = '{"steps": [{"step": 1, "verdict": "corr'
        elif fault == "schema":
            text = json.dumps(self.violate(schema, steps))
        else:
            text = json.dumps(self.fill(schema, steps))
        first = TAG_RE.search(prompt) or STEP_RE.search(prompt)
        cached = self._cached_tokens(prompt[: first.start()] if first else prompt)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None,
                                  "message": {"role": "assistant", "content": text, "refusal": None}}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": self._logprobs(text, steps, body.get("top_logprobs") or 0),
                                  "refusal": None}
        out_tokens = ntokens(text)
        in_tokens = ntokens(prompt)
        rpm, remaining = self._limit_numbers()
        self._answer(h, fault, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "fake"), "choices": [choice],
            "usage": {"prompt_tokens": in_tokens, "completion_tokens": out_tokens,
                      "total_tokens": in_tokens + out_tokens,
                      "prompt_tokens_details": {"cached_tokens": min(cached, in_tokens)}},
        }, {"x-request-id": uuid.uuid4().hex, **self._rl_headers(False, rpm, remaining)})

    @staticmethod
    def _logprobs(text: str, steps: list[str], top: int) -> list[dict[str, Any]]:
        """Tokens of ``text`` with top_logprobs at each verdict: P(correct) = 0.2 + 0.6·score."""
        pieces = re.findall(r'"(?:correct|incorrect)|[A-Za-z_]+|\d+(?:\.\d+)?|\s+|.', text)
        out, k = [], 0
        for piece in pieces:
            entry: dict[str, Any] = {"token": piece, "logprob": 0.0, "bytes": list(piece.encode()),
                                     "top_logprobs": []}
            if piece in ('"correct', '"incorrect') and k < len(steps):
                import math

                p = 0.2 + 0.6 * score_of(steps[k])
                alts = [('"correct', p), ('"incorrect', 1 - p)][: max(top, 1)]
                entry["logprob"] = math.log(p if piece == '"correct' else 1 - p)
                entry["top_logprobs"] = [{"token": t, "logprob": math.log(q), "bytes": list(t.encode())}
                                         for t, q in alts]
                k += 1
            out.append(entry)
        return out

    def messages(self, h: _RequestHandler, body: dict) -> None:
        fault = self._draw_fault(body)
        if fault in ("malformed", "schema", "slow"):
            with self.lock:
                self.fault_counts[fault] += 1
        if self._common_fault(h, fault, anthropic=True):
            return
        system = body.get("system") or ""
        if isinstance(system, list):
            system = "".join(b.get("text", "") for b in system)
        prefix, user = "", ""
        for m in body.get("messages", []):
            content = m.get("content")
            if isinstance(content, str):
                user += content
                continue
            for block in content:
                user += block.get("text", "")
                if block.get("cache_control"):
                    prefix = system + user
        steps = split_steps(user)
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {}
        tool = next((t for t in tools if t.get("name") == choice.get("name")), tools[0] if tools else None)
        if tool is None:
            h.send_json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "fake needs a tool"}}, {})
            return
        schema = tool["input_schema"]
        if fault == "malformed":
            content = [{"type": "text", "text": "I think step 1 is corr"}]
        elif fault == "schema":
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": tool["name"],
                        "input": self.violate(schema, steps)}]
        else:
            content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": tool["name"],
                        "input": self.fill(schema, steps)}]
        read = self._cached_tokens(prefix) if prefix else 0
        total = ntokens(system + user)
        rpm, remaining = self._limit_numbers()
        self._answer(h, fault, {
            "id": f"msg_{uuid.uuid4().hex[:12]}", "type": "message", "role": "assistant",
            "model": body.get("model", "fake"), "content": content, "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": max(1, total - read), "output_tokens": ntokens(json.dumps(content)),
                      "cache_creation_input_tokens": 0 if read or not prefix else ntokens(prefix),
                      "cache_read_input_tokens": read},
        }, {"request-id": uuid.uuid4().hex, **self._rl_headers(True, rpm, remaining)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 refuses bursts of concurrent clients


class _RequestHandler(BaseHTTPRequestHandler):
    fake: FakeLLMServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def send_json(self, code: int, body: Any, headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def send_text(self, code: int, content_type: str, text: str) -> None:
        data = text.encode()
        try:
            self.send_response(code)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def send_broken(self, data: bytes, headers: dict[str, str], how: str, drip_s: float,
                    closing: threading.Event) -> None:
        """A 200 whose body never arrives whole: ``drip`` sends it a byte per ``drip_s``, ``close``
        sends half of it and drops the connection."""
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if how == "close":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            for i in range(len(data)):
                if closing.wait(drip_s):
                    break
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
        except OSError:  # the client gave up (its deadline): exactly what is being tested
            self.close_connection = True

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?")[0]
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        batch = getattr(self.fake, "batch_api", None)  # provider batch endpoints: tests/fakes/batch_api.py
        if batch is not None and batch.handle_http(self, method, path, raw):
            return
        handler = self.fake.routes.get((method, path))
        if handler is None:  # e.g. a provider's batch routes on a server that has none
            with self.fake.lock:
                self.fake.counts[path] += 1
            self.send_json(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}}, {})
            return
        with self.fake.lock:
            self.fake.counts[path] += 1
            if self.fake.first_request_at is None and not path.startswith("/_"):
                self.fake.first_request_at = time.time()
            dead = self.fake.faults.die_after
            dropped = dead is not None and not path.startswith("/_") and self.fake.total_requests > dead
            if dropped:
                self.fake.fault_counts["dead"] += 1
            body = json.loads(raw) if raw else {}
            if self.fake.record:
                self.fake.requests.append({"path": path, "body": body,
                                           "headers": {k.lower(): v for k, v in self.headers.items()}})
        if handler is None:
            self.send_json(404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}}, {})
            return
        if dropped:
            self.close_connection = True  # no answer: the connection just goes away
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        with self.fake.lock:
            self.fake.in_flight += 1
            self.fake.max_in_flight = max(self.fake.max_in_flight, self.fake.in_flight)
            self.fake.peers.add(self.client_address[1])
        try:
            handler(self.fake, self, body)
        finally:
            with self.fake.lock:
                self.fake.in_flight -= 1

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm-limit", type=float, default=None)
    args = parser.parse_args()
    server = FakeLLMServer(FaultConfig(latency_s=args.latency, rpm_limit=args.rpm_limit)).start(args.port)
    server.record = False
    print(f"PORT {server.port}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
