"""A loopback fake *policy*: OpenAI Completions / Chat Completions and Anthropic Messages that
answer math problems with scripted solutions — right, wrong, or cut off — so tests know exactly
which samples are right.

Problems look like ``"a=3 b=4: add a and b, then double the sum."`` (gold ``2*(a+b)``). The
three-step solution is ``Step 1: 3 + 4 = 7.`` / ``Step 2: 7 * 2 = 14.`` / ``Step 3: The answer
is \\boxed{14}.``; the *wrong* one miscomputes step 2 (``7 * 2 = 15``) and carries it into the
answer, so ``gsm8k-calc`` locates its first error at step index 1; the *cut* one stops inside
step 2 with ``finish_reason=length``. Which one a request gets is :func:`kind_of` of its
``seed`` (the generate command derives each sample's seed from its identity, so tests compute
the expected kind of every (problem, sample)). A request whose text ends with a step marker
(``Step 2: ``: a prefilled answer, e.g. a continuation of a correct prefix) gets the rest of the
solution from that step on.

Real HTTP on 127.0.0.1 (the real SDKs talk to it); optional latency per request, a scripted
list of faults (``429`` with retry-after, ``500``), and a count of requests per route.
:meth:`FakePolicyServer.attach_batches` adds the provider batch endpoints
(tests/fakes/batch_api.py) on the same port, answering each request inside a batch with the same
scripted answer as online (without counting it as an online request).
Run ``python -m tests.fakes.policy_server --latency 0.1`` to serve from another process
(benchmarks); it prints ``PORT <n>``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROBLEM_RE = re.compile(r"a=(\d+) b=(\d+)")
TAIL_MARKER = re.compile(r"Step (\d+): ?$")
KINDS = ("right", "wrong", "cut")


def problem_text(a: int, b: int) -> str:
    return f"a={a} b={b}: add a and b, then double the sum."


def gold_of(a: int, b: int) -> str:
    return str(2 * (a + b))


def write_problems(path: Any, problems: list[tuple[int, int]], text_field: str = "question") -> Any:
    """A problems JSONL for these ``(a, b)``: ids ``p0, p1, …``, the problem under ``text_field``,
    the gold answer under ``answer``. Returns ``path``."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, (a, b) in enumerate(problems):
            fh.write(json.dumps({"id": f"p{i}", text_field: problem_text(a, b), "answer": gold_of(a, b)}) + "\n")
    return path


def kind_of(seed: int, continuation: bool = False) -> str:
    """The scripted outcome of a request with ``seed``: continuations are right or wrong, fresh
    samples right, wrong or cut off."""
    return KINDS[seed % 2] if continuation else KINDS[seed % 3]


def solution_steps(a: int, b: int, kind: str) -> list[str]:
    s = a + b
    if kind == "right":
        return [f"Step 1: {a} + {b} = {s}.", f"Step 2: {s} * 2 = {2 * s}.", f"Step 3: The answer is \\boxed{{{2 * s}}}."]
    if kind == "wrong":
        return [f"Step 1: {a} + {b} = {s}.", f"Step 2: {s} * 2 = {2 * s + 1}.",
                f"Step 3: The answer is \\boxed{{{2 * s + 1}}}."]
    return [f"Step 1: {a} + {b} = {s}.", f"Step 2: {s} * 2 ="]


def flawed_steps(a: int, b: int, k: int) -> list[str]:
    """The fake's flawed rewrite of the right solution with its mistake at step ``k`` (1-based)."""
    s = a + b
    if k == 1:
        return [f"Step 1: {a} + {b} = {s + 1}.", f"Step 2: {s + 1} * 2 = {2 * s + 2}.",
                f"Step 3: The answer is \\boxed{{{2 * s + 2}}}."]
    if k == 2:
        return solution_steps(a, b, "wrong")
    return solution_steps(a, b, "right")[:2] + [f"Step 3: The answer is \\boxed{{{2 * s + 2}}}."]


FLAW_RE = re.compile(r"Rewrite this solution from step (\d+) on")


def answer_for(text: str, seed: int) -> tuple[str, str]:
    """(generated text, finish_reason) for a request whose whole visible text is ``text``."""
    m = PROBLEM_RE.search(text)
    if m is None:
        return "I do not know.", "stop"
    a, b = int(m.group(1)), int(m.group(2))
    flaw = FLAW_RE.search(text)
    if flaw:  # a --flaw request: the rewritten steps from step k on
        k = int(flaw.group(1))
        return "\n".join(flawed_steps(a, b, k)[k - 1:]), "stop"
    tail = TAIL_MARKER.search(text)
    start = int(tail.group(1)) if tail else 1
    continuation = start > 1
    kind = kind_of(seed, continuation)
    steps = solution_steps(a, b, kind)[start - 1:]
    body = "\n".join(steps)
    if tail:  # the marker is already written: continue after it
        body = body[len(f"Step {start}: "):]
    return body, "length" if kind == "cut" else "stop"


class FakePolicyServer:
    """``with FakePolicyServer(latency=0.0) as srv: srv.url`` (OpenAI base URL: ``srv.url + '/v1'``)."""

    def __init__(self, latency: float = 0.0, port: int = 0) -> None:
        self.latency = latency
        self.faults: list[str | None] = []
        #: Answer the first N requests, then drop every later one's connection unanswered (a server
        #: killed mid-run); None = never.
        self.die_after: int | None = None
        self.dropped = 0  # requests dropped unanswered (not in ``counts``)
        self.admitted = 0  # online POSTs seen, dropped ones included
        self.counts: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.batch_api: Any = None  # tests/fakes/batch_api.BatchAPI, see attach_batches
        self.headers: list[dict[str, str]] = []  # of each online request (lower-cased keys)
        self.peers: set[tuple[str, int]] = set()  # client connections seen
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # TCP_NODELAY, as real servers set: no 40 ms delayed-ACK stall per answer

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?")[0]
                if server.batch_api is not None and server.batch_api.handle_http(self, "POST", path, raw):
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:  # e.g. a batch file upload to a server without batch endpoints
                    body = {}
                with server._lock:  # decided under the lock: exactly die_after are answered
                    dropped = server.die_after is not None and server.admitted >= server.die_after
                    server.admitted += 1
                    server.dropped += dropped
                if dropped:
                    self.close_connection = True  # no answer: the connection just goes away
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                with server._lock:
                    server.peers.add(self.client_address)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, payload, headers = server.handle(path, body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the batch endpoints and /_stats are read with GET
                path = self.path.split("?")[0]
                if server.batch_api is not None and server.batch_api.handle_http(self, "GET", path, b""):
                    return
                found = path == "/_stats"  # for a server in another process (QA, benchmarks)
                data = json.dumps(server.stats() if found else {"error": {"message": f"no route GET {path}"}}).encode()
                self.send_response(200 if found else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog of 5 refuses bursts of concurrent clients

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients killed mid-request (kill -9 tests)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def stats(self) -> dict[str, Any]:
        """Online requests per route, and batch submissions / requests answered per provider."""
        with self._lock:
            out: dict[str, Any] = {"counts": dict(self.counts), "total": self.requests}
        if self.batch_api is not None:
            out["batch_submissions"] = dict(self.batch_api.submissions)
            out["batch_requests"] = dict(self.batch_api.requests_answered)
        return out

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.counts[path] += 1
            self.bodies.append(body)
            fault = self.faults.pop(0) if self.faults else None
        if self.latency:
            time.sleep(self.latency)
        if fault == "429":
            return 429, {"error": {"message": "rate limited", "type": "rate_limit_error"}}, {"retry-after": "0.05"}
        if fault == "500":
            return 500, {"error": {"message": "boom", "type": "server_error"}}, {}
        return self.answer(path, body)

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The scripted answer to ``body`` at ``path`` (no latency, no fault, not counted)."""
        seed = int(body.get("seed") or 0)
        if path.endswith("/completions") and "prompt" in body:
            text, reason = answer_for(body["prompt"], seed)
            return 200, {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body.get("model"),
                         "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
                         "usage": self._usage(body["prompt"], text)}, {}
        if path.endswith("/chat/completions"):
            visible = "\n".join(str(m.get("content")) for m in body.get("messages", []))
            text, reason = answer_for(visible, seed)
            return 200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": reason}],
                         "usage": self._usage(visible, text)}, {}
        if path.endswith("/messages"):
            visible = "\n".join(str(m.get("content")) for m in body.get("messages", []))
            # Anthropic continues a prefill whose trailing space was stripped: add it back.
            text, reason = answer_for(visible + (" " if visible.endswith(":") else ""), seed)
            if visible.endswith(":"):
                text = " " + text
            usage = self._usage(visible, text)
            return 200, {"id": "msg_1", "type": "message", "role": "assistant", "model": body.get("model"),
                         "content": [{"type": "text", "text": text}],
                         "stop_reason": "max_tokens" if reason == "length" else "end_turn", "stop_sequence": None,
                         "usage": {"input_tokens": usage["prompt_tokens"],
                                   "output_tokens": usage["completion_tokens"]}}, {}
        return 404, {"error": {"message": f"no route {path}"}}, {}

    def attach_batches(self, **kwargs: Any) -> Any:
        """Serve the OpenAI and Anthropic batch endpoints here too (``kwargs``: BatchAPI's
        ``polls_to_finish``, ``fault``...); each request in a batch gets the online answer."""
        from tests.fakes.batch_api import BatchAPI

        def via(path: str) -> Any:
            def answer(body: dict[str, Any]) -> dict[str, Any]:
                status, payload, _ = self.answer(path, body)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {payload}")
                return payload
            return answer

        self.batch_api = BatchAPI(via("/v1/chat/completions"), via("/v1/messages"), **kwargs)
        return self.batch_api

    @staticmethod
    def _usage(prompt: str, text: str) -> dict[str, int]:
        p, c = max(1, len(prompt) // 4), max(1, len(text) // 4)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def start(self) -> FakePolicyServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakePolicyServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def failing_share(share: float) -> Any:
    """A batch ``fault`` that errors a stable ``share`` of custom_ids (by hash; each only the first
    time it is seen, so a rerun's redraw succeeds)."""
    import hashlib

    def fault(custom_id: str) -> str | None:
        h = int(hashlib.sha256(custom_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return "errored" if h < share else None
    return fault


if __name__ == "__main__":  # pragma: no cover - for benchmarks and by-hand QA
    ap = argparse.ArgumentParser(description="Serve the scripted policy on 127.0.0.1; prints PORT <n>. "
                                 "GET /_stats gives request counts (and batch submissions with --batch).")
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--batch", action="store_true", help="serve the OpenAI and Anthropic batch endpoints too")
    ap.add_argument("--polls-to-finish", type=int, default=3, help="--batch: status polls before a batch ends")
    ap.add_argument("--batch-fail", type=float, default=0.0,
                    help="--batch: share of batch requests answered 'errored' (the first time only)")
    ns = ap.parse_args()
    srv = FakePolicyServer(latency=ns.latency, port=ns.port)
    if ns.batch:
        srv.attach_batches(polls_to_finish=ns.polls_to_finish,
                           fault=failing_share(ns.batch_fail) if ns.batch_fail else None)
    print(f"PORT {srv.port}", flush=True)
    srv.httpd.serve_forever()
