"""OpenAI Batch API transport, through the official SDK.

Requests go up as one JSONL file (purpose ``batch``), a batch is created on
``/v1/chat/completions`` with a 24h window and our record key in its metadata (so a run
killed between "create" and "write the id down" can still find its batch), and the output and
error files are downloaded and joined by ``custom_id``: output order is not input order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from labeler.batch.base import Limits, Poll, Result, Transport, error_text
from labeler.batch.state import BatchRecord

ENDPOINT = "/v1/chat/completions"
LIMITS = Limits(max_requests=50_000, max_bytes=200 * 1024 * 1024)
META_KEY = "stepdpo_key"


class OpenAIBatchTransport(Transport):
    provider = "openai"
    key_env = "OPENAI_API_KEY"
    url_env = "OPENAI_BASE_URL"
    default_limits = LIMITS
    final_statuses = frozenset({"completed", "expired", "cancelled", "failed"})
    succeeded_counts = ("completed",)
    finished_counts = ("completed", "failed")

    def _make_client(self, key: str, base_url: str | None, timeout: float) -> Any:
        import openai

        return openai.OpenAI(api_key=key, base_url=base_url, max_retries=3, timeout=timeout)

    def encode(self, custom_id: str, body: dict[str, Any]) -> bytes:
        line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def submit(self, record: BatchRecord, lines: list[bytes], save: Callable[[BatchRecord], Any]) -> None:
        import openai

        if record.file_id is None:
            data = b"\n".join(lines) + b"\n"
            try:
                uploaded = self.client.files.create(file=(f"{record.key}.jsonl", data), purpose="batch")
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                raise self.submit_error(exc, "upload") from None
            record.file_id = uploaded.id
            record.phase = "uploaded"
            save(record)
        try:
            batch = self.client.batches.create(
                input_file_id=record.file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={META_KEY: record.key},
            )
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            raise self.submit_error(exc, "create") from None
        record.batch_id = batch.id
        record.status = batch.status
        record.phase = "submitted"
        save(record)

    def find_orphan(self, record: BatchRecord, claimed: set[str]) -> str | None:
        if record.file_id is None:
            return None  # nothing was uploaded, so nothing can have been created from it
        for batch in self.client.batches.list(limit=100):
            if batch.id in claimed:
                continue
            meta = batch.metadata or {}
            if meta.get(META_KEY) == record.key or batch.input_file_id == record.file_id:
                return batch.id
            if batch.created_at < record.created_at - 3600:
                break  # listed newest first; older ones cannot be ours
        return None

    def _poll(self, batch: Any) -> Poll:
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        errors = (batch.errors.data or []) if batch.errors else []
        message = "; ".join(e.message or e.code or "" for e in errors[:3]) or None
        return Poll(batch.status, counts, self.is_final(batch.status), message)

    def poll(self, batch_id: str) -> Poll:
        return self._poll(self.client.batches.retrieve(batch_id))

    def cancel(self, batch_id: str) -> Poll:
        import openai

        try:
            return self._poll(self.client.batches.cancel(batch_id))
        except openai.APIStatusError as exc:  # 409 on a batch that already ended
            if exc.status_code >= 500:
                raise
            return self._refusal(exc, batch_id)

    def results(self, batch_id: str) -> Iterator[Result]:
        batch = self.client.batches.retrieve(batch_id)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            # streamed line by line: an output file of 50,000 answers never sits in memory whole
            with self.client.files.with_streaming_response.content(file_id) as resp:
                for raw in resp.iter_lines():
                    if raw.strip():
                        yield _result(json.loads(raw))

    def close(self) -> None:
        self.client.close()


def _result(line: dict[str, Any]) -> Result:
    cid = line["custom_id"]
    response = line.get("response")
    if line.get("error"):
        err = line["error"]
        code = err.get("code") if isinstance(err, dict) else None
        kind = "expired" if code == "batch_expired" else "canceled" if code == "batch_cancelled" else "errored"
        return Result(cid, error=f"batch {kind}: {error_text(err)}", kind=kind)
    if not response:
        return Result(cid, error="batch errored: no response", kind="errored")
    status = response.get("status_code", 200)
    if status != 200:
        return Result(cid, error=f"batch errored: HTTP {status}: {error_text(response.get('body'))}", kind="errored")
    return Result(cid, body=response.get("body"))
