"""Fake provider batch endpoints: OpenAI Batch API and Anthropic Message Batches.

Speaks the wire protocol the official SDKs use, so tests drive the real ``openai`` and
``anthropic`` clients over loopback HTTP. Each request inside a batch is answered by the SAME
function that answers the online endpoint (``answer_openai`` / ``answer_anthropic``), so a
test can compare online and batch scores on identical answers.

Behaviour a batch client must cope with, all deterministic (driven by polls, not wall time):
- statuses move one step per retrieve: OpenAI validating → in_progress → finalizing →
  completed (or expired); Anthropic in_progress → ended;
- results come back in a shuffled order (join by ``custom_id``, never by position);
- partial failures: ``fault(custom_id)`` returning ``"errored"`` or ``"expired"`` (by default
  a request is faulted only the first time its custom_id is seen, so a retry succeeds);
- ``submissions`` counts batch creations per provider, so a test can assert that a resumed run
  did not submit twice.

Handlers are plain functions of a :class:`Request`; :meth:`BatchAPI.routes` lists them for a
host server (tests/fakes/llm_server.py) and :func:`serve` runs them standalone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import email.parser
import email.policy
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # lower-cased keys
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode())


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    # One body that both SDKs parse: OpenAI reads error.message, Anthropic error.type/message.
    return _json({"type": "error", "error": {"type": kind, "message": message}}, status)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat().replace("+00:00", "Z")


OPENAI_STATUSES = ("validating", "in_progress", "finalizing", "completed")


@dataclass
class _OpenAIBatch:
    id: str
    input_file_id: str
    endpoint: str
    created_at: int
    metadata: dict[str, str] | None
    polls: int = 0
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    cancelled: bool = False
    errors: list[dict[str, Any]] | None = None  # validation errors of a "failed" batch


@dataclass
class _AnthropicBatch:
    id: str
    requests: list[dict[str, Any]]
    created_at: float
    polls: int = 0
    status: str = "in_progress"
    cancel_at: float | None = None
    ended_at: float | None = None
    results: list[dict[str, Any]] | None = None


class BatchAPI:
    """State of both providers' fake batch services (thread-safe)."""

    def __init__(
        self,
        answer_openai: Answer,
        answer_anthropic: Answer,
        *,
        polls_to_finish: int = 3,
        fault: Callable[[str], str | None] | None = None,
        fault_once: bool = True,
        seed: int = 0,
    ) -> None:
        self.answer_openai = answer_openai
        self.answer_anthropic = answer_anthropic
        self.polls_to_finish = polls_to_finish
        self.fault = fault
        self.fault_once = fault_once
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self.files: dict[str, dict[str, Any]] = {}
        self.openai_batches: dict[str, _OpenAIBatch] = {}
        self.anthropic_batches: dict[str, _AnthropicBatch] = {}
        self.submissions = {"openai": 0, "anthropic": 0}
        self.requests_answered = {"openai": 0, "anthropic": 0}
        self._n = 0

    # ------------------------------------------------------------------ helpers
    def _new_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n:06d}{self._rng.getrandbits(32):08x}"

    def _fault_for(self, provider: str, custom_id: str) -> str | None:
        if self.fault is None:
            return None
        if self.fault_once and (provider, custom_id) in self._seen:
            return None
        self._seen.add((provider, custom_id))
        return self.fault(custom_id)

    def routes(self) -> list[tuple[str, str, Callable[[Request], Response]]]:
        """(method, path regex, handler) for a host server; regexes match the whole path."""
        return [
            ("POST", r"/v1/files", self.openai_upload),
            ("GET", r"/v1/files/(?P<id>[^/]+)/content", self.openai_file_content),
            ("GET", r"/v1/files/(?P<id>[^/]+)", self.openai_file),
            ("POST", r"/v1/batches", self.openai_create),
            ("GET", r"/v1/batches", self.openai_list),
            ("GET", r"/v1/batches/(?P<id>[^/]+)", self.openai_retrieve),
            ("POST", r"/v1/batches/(?P<id>[^/]+)/cancel", self.openai_cancel),
            ("POST", r"/v1/messages/batches", self.anthropic_create),
            ("GET", r"/v1/messages/batches", self.anthropic_list),
            ("GET", r"/v1/messages/batches/(?P<id>[^/]+)", self.anthropic_retrieve),
            ("GET", r"/v1/messages/batches/(?P<id>[^/]+)/results", self.anthropic_results),
            ("POST", r"/v1/messages/batches/(?P<id>[^/]+)/cancel", self.anthropic_cancel),
        ]

    def dispatch(self, req: Request) -> Response | None:
        """Answer ``req`` if it is a batch endpoint, else None (the host handles it)."""
        for method, pattern, handler in self.routes():
            m = re.fullmatch(pattern, req.path)
            if m and method == req.method:
                with self._lock:
                    return handler(req, **m.groupdict())
        return None

    def handle_http(self, h: BaseHTTPRequestHandler, method: str, path: str, raw: bytes) -> bool:
        """Answer a host server's request if it is a batch endpoint; False leaves it to the host."""
        req = Request(method, path, {k.lower(): v for k, v in h.headers.items()}, raw)
        resp = self.dispatch(req)
        if resp is None:
            return False
        _send(h, resp)
        return True

    # ------------------------------------------------------------------ OpenAI
    def openai_upload(self, req: Request) -> Response:
        ctype = req.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return _error(400, f"expected multipart/form-data, got {ctype!r}")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + req.body
        )
        fields: dict[str, Any] = {}
        filename = "upload.jsonl"
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                filename = part.get_filename()
            fields[name] = part.get_payload(decode=True)
        if fields.get("purpose", b"").decode() != "batch":
            return _error(400, "purpose must be 'batch'")
        content = fields.get("file")
        if not content:
            return _error(400, "no file part")
        fid = self._new_id("file")
        obj = {
            "id": fid,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch",
            "status": "processed",
        }
        self.files[fid] = {"meta": obj, "content": content}
        return _json(obj)

    def _add_output_file(self, lines: list[dict[str, Any]], name: str, purpose: str) -> str:
        content = "".join(json.dumps(x) + "\n" for x in lines).encode()
        fid = self._new_id("file")
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": name, "purpose": purpose, "status": "processed"}
        self.files[fid] = {"meta": obj, "content": content}
        return fid

    def openai_file(self, req: Request, id: str) -> Response:
        if id not in self.files:
            return _error(404, f"no file {id}")
        return _json(self.files[id]["meta"])

    def openai_file_content(self, req: Request, id: str) -> Response:
        if id not in self.files:
            return _error(404, f"no file {id}")
        return Response(200, self.files[id]["content"], "application/octet-stream")

    def _openai_obj(self, b: _OpenAIBatch) -> dict[str, Any]:
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "input_file_id": b.input_file_id,
            "completion_window": "24h", "status": b.status, "created_at": b.created_at,
            "expires_at": b.created_at + 86400, "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id, "request_counts": dict(b.counts), "metadata": b.metadata,
            "errors": {"object": "list", "data": b.errors} if b.errors else None,
        }

    def openai_create(self, req: Request) -> Response:
        body = req.json()
        fid = body.get("input_file_id")
        if fid not in self.files:
            return _error(400, f"input file {fid} not found")
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return _error(400, "this fake supports endpoint /v1/chat/completions with a 24h window")
        lines = self.files[fid]["content"].decode().splitlines()
        ids = [json.loads(x)["custom_id"] for x in lines if x.strip()]
        if len(set(ids)) != len(ids):
            return _error(400, "custom_id values must be unique within a batch")
        self.submissions["openai"] += 1
        b = _OpenAIBatch(self._new_id("batch"), fid, body["endpoint"], int(time.time()), body.get("metadata"))
        b.counts["total"] = len(ids)
        self.openai_batches[b.id] = b
        return _json(self._openai_obj(b))

    def openai_list(self, req: Request) -> Response:
        data = [self._openai_obj(b) for b in reversed(list(self.openai_batches.values()))]
        return _json({"object": "list", "data": data, "has_more": False,
                      "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    def _openai_finish(self, b: _OpenAIBatch) -> None:
        out, err = [], []
        expired = False
        for n, raw in enumerate(self.files[b.input_file_id]["content"].decode().splitlines()):
            if not raw.strip():
                continue
            line = json.loads(raw)
            cid = line["custom_id"]
            rid = f"batch_req_{b.id}_{n}"
            fault = "canceled" if b.cancelled else self._fault_for("openai", cid)
            if fault == "expired" or fault == "canceled":
                expired = expired or fault == "expired"
                code = "batch_expired" if fault == "expired" else "batch_cancelled"
                err.append({"id": rid, "custom_id": cid, "response": None,
                            "error": {"code": code, "message": f"request not executed ({code})"}})
            elif fault == "errored":
                err.append({"id": rid, "custom_id": cid, "error": None, "response": {
                    "status_code": 500, "request_id": f"req_{n}",
                    "body": {"error": {"message": "fake server error", "type": "server_error"}}}})
            else:
                try:
                    answer = self.answer_openai(line["body"])
                except _Failed as exc:
                    err.append({"id": rid, "custom_id": cid, "error": None, "response": {
                        "status_code": exc.code, "request_id": f"req_{n}", "body": exc.body}})
                    continue
                self.requests_answered["openai"] += 1
                out.append({"id": rid, "custom_id": cid, "error": None, "response": {
                    "status_code": 200, "request_id": f"req_{n}", "body": answer}})
        self._rng.shuffle(out)
        self._rng.shuffle(err)
        b.counts.update(completed=len(out), failed=len(err))
        b.output_file_id = self._add_output_file(out, "batch_output.jsonl", "batch_output") if out else None
        b.error_file_id = self._add_output_file(err, "batch_errors.jsonl", "batch_output") if err else None
        b.status = "cancelled" if b.cancelled else "expired" if expired else "completed"

    def openai_retrieve(self, req: Request, id: str) -> Response:
        b = self.openai_batches.get(id)
        if b is None:
            return _error(404, f"no batch {id}")
        if b.status not in ("completed", "expired", "cancelled", "failed"):
            b.polls += 1
            if b.status == "validating" and self._openai_validate(b):
                b.status = "failed"
            elif b.status == "cancelling" or b.polls >= self.polls_to_finish:
                self._openai_finish(b)
            else:
                b.status = OPENAI_STATUSES[min(b.polls, 2)]
        return _json(self._openai_obj(b))

    def _openai_validate(self, b: _OpenAIBatch) -> bool:
        """Like OpenAI, check the input file's lines after creation; True if the batch failed."""
        errors = []
        for n, raw in enumerate(self.files[b.input_file_id]["content"].decode().splitlines(), 1):
            line = json.loads(raw) if raw.strip() else {}
            if line.get("url") != b.endpoint or line.get("method") != "POST" or not isinstance(line.get("body"), dict):
                errors.append({"code": "invalid_request", "line": n, "param": "url",
                               "message": f"line {n}: url must be {b.endpoint} with method POST and a body"})
        b.errors = errors[:10] or None
        return bool(errors)

    def openai_cancel(self, req: Request, id: str) -> Response:
        b = self.openai_batches.get(id)
        if b is None:
            return _error(404, f"no batch {id}")
        if b.status in ("completed", "expired", "cancelled", "failed"):  # as OpenAI answers
            return _error(409, f"Cannot cancel a batch with status '{b.status}'.")
        if b.status in ("validating", "in_progress", "finalizing"):
            b.cancelled = True
            b.status = "cancelling"
        return _json(self._openai_obj(b))

    # ------------------------------------------------------------------ Anthropic
    def _anthropic_obj(self, b: _AnthropicBatch, host: str) -> dict[str, Any]:
        n = len(b.requests)
        if b.results is None:
            counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        else:
            counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
            for r in b.results:
                counts[r["result"]["type"]] += 1
        return {
            "id": b.id, "type": "message_batch", "processing_status": b.status,
            "request_counts": counts, "created_at": _iso(b.created_at),
            "expires_at": _iso(b.created_at + 86400), "ended_at": _iso(b.ended_at) if b.ended_at else None,
            "cancel_initiated_at": _iso(b.cancel_at) if b.cancel_at else None, "archived_at": None,
            "results_url": f"http://{host}/v1/messages/batches/{b.id}/results" if b.status == "ended" else None,
        }

    def anthropic_create(self, req: Request) -> Response:
        body = req.json()
        reqs = body.get("requests") or []
        ids = [r.get("custom_id") for r in reqs]
        if not reqs or len(set(ids)) != len(ids):
            return _error(400, "requests must be non-empty with unique custom_id values")
        if any(not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i or "") for i in ids):
            return _error(400, "custom_id must match ^[a-zA-Z0-9_-]{1,64}$")
        self.submissions["anthropic"] += 1
        b = _AnthropicBatch(self._new_id("msgbatch"), reqs, time.time())
        self.anthropic_batches[b.id] = b
        return _json(self._anthropic_obj(b, req.headers.get("host", "127.0.0.1")))

    def anthropic_list(self, req: Request) -> Response:
        host = req.headers.get("host", "127.0.0.1")
        data = [self._anthropic_obj(b, host) for b in reversed(list(self.anthropic_batches.values()))]
        return _json({"data": data, "has_more": False,
                      "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    def _anthropic_finish(self, b: _AnthropicBatch) -> None:
        results = []
        for r in b.requests:
            cid = r["custom_id"]
            fault = "canceled" if b.cancel_at else self._fault_for("anthropic", cid)
            if fault == "errored":
                result: dict[str, Any] = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "fake server error"}}}
            elif fault in ("expired", "canceled"):
                result = {"type": fault}
            else:
                try:
                    result = {"type": "succeeded", "message": self.answer_anthropic(r["params"])}
                    self.requests_answered["anthropic"] += 1
                except _Failed as exc:
                    result = {"type": "errored", "error": exc.body}
            results.append({"custom_id": cid, "result": result})
        self._rng.shuffle(results)
        b.results = results
        b.status = "ended"
        b.ended_at = time.time()

    def anthropic_retrieve(self, req: Request, id: str) -> Response:
        b = self.anthropic_batches.get(id)
        if b is None:
            return _error(404, f"no message batch {id}", "not_found_error")
        if b.status != "ended":
            b.polls += 1
            if b.status == "canceling" or b.polls >= self.polls_to_finish:
                self._anthropic_finish(b)
        return _json(self._anthropic_obj(b, req.headers.get("host", "127.0.0.1")))

    def anthropic_results(self, req: Request, id: str) -> Response:
        b = self.anthropic_batches.get(id)
        if b is None:
            return _error(404, f"no message batch {id}", "not_found_error")
        if b.results is None:
            return _error(400, f"message batch {id} has not ended")
        content = "".join(json.dumps(r) + "\n" for r in b.results).encode()
        return Response(200, content, "application/binary")

    def anthropic_cancel(self, req: Request, id: str) -> Response:
        b = self.anthropic_batches.get(id)
        if b is None:
            return _error(404, f"no message batch {id}", "not_found_error")
        if b.status == "ended":
            return _error(409, f"Batch {id} has already ended and cannot be canceled.", "invalid_request_error")
        if b.status == "in_progress":
            b.status = "canceling"
            b.cancel_at = time.time()
        return _json(self._anthropic_obj(b, req.headers.get("host", "127.0.0.1")))


# ---------------------------------------------------------------------- host server glue
class _Capture:
    """Stands in for the HTTP handler the online fake answers through, keeping the answer."""

    def __init__(self) -> None:
        self.code = 0
        self.body: Any = None

    def send_json(self, code: int, body: Any, headers: dict[str, str]) -> None:
        self.code, self.body = code, body


def _online_answer(fake: Any, method: Callable[..., None]) -> Answer:
    """The online fake's answer to ``body`` as a function: same scores, same fault draws.

    A non-200 online answer (an injected 429/500) becomes an error body; the batch then
    reports that request as failed, as a provider does.
    """

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        cap = _Capture()
        method(fake, cap, body)
        if cap.code != 200:
            raise _Failed(cap.code, cap.body)
        return cap.body

    return answer


class _Failed(Exception):
    def __init__(self, code: int, body: Any) -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.body = code, body


def attach(fake: Any, **kwargs: Any) -> BatchAPI:
    """Serve batch endpoints from the online fake ``fake`` (tests/fakes/llm_server.py).

    Requests inside a batch are answered by the fake's own ``chat_completions`` / ``messages``
    handlers, so batch and online scores agree by construction.
    """
    api = BatchAPI(_online_answer(fake, type(fake).chat_completions),
                   _online_answer(fake, type(fake).messages), **kwargs)
    fake.batch_api = api
    return api


# ---------------------------------------------------------------------- standalone server
def _send(h: BaseHTTPRequestHandler, resp: Response) -> None:
    try:
        h.send_response(resp.status)
        h.send_header("content-type", resp.content_type)
        h.send_header("content-length", str(len(resp.body)))
        for k, v in resp.headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(resp.body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up
        pass


def _handler_class(api: BatchAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _do(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(self.command, self.path.split("?", 1)[0],
                          {k.lower(): v for k, v in self.headers.items()}, body)
            resp = api.dispatch(req) or _error(404, f"no route {req.method} {req.path}", "not_found_error")
            _send(self, resp)

        do_GET = do_POST = do_DELETE = _do

    return Handler


@contextlib.contextmanager
def serve(api: BatchAPI) -> Iterator[str]:
    """Run ``api`` on 127.0.0.1 (port 0); yields the base URL ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(api))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
