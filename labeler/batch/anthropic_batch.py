"""Anthropic Message Batches transport, through the official SDK.

All requests of a batch go in one create call (each with its ``custom_id`` and the exact
``/v1/messages`` params); the batch is polled until ``ended`` and the results are streamed
line by line (constant memory) and joined by ``custom_id``. ``errored``, ``expired`` and
``canceled`` results become errors on their rows.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterator
from typing import Any

from labeler.batch.base import Limits, Poll, Result, Transport, error_text
from labeler.batch.state import BatchRecord

LIMITS = Limits(max_requests=100_000, max_bytes=256 * 1024 * 1024)


class AnthropicBatchTransport(Transport):
    provider = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    url_env = "ANTHROPIC_BASE_URL"
    default_limits = LIMITS
    final_statuses = frozenset({"ended"})
    succeeded_counts = ("succeeded",)
    finished_counts = ("succeeded", "errored", "canceled", "expired")

    def _make_client(self, key: str, base_url: str | None, timeout: float) -> Any:
        import anthropic

        return anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=3, timeout=timeout)

    def encode(self, custom_id: str, body: dict[str, Any]) -> bytes:
        req = {"custom_id": custom_id, "params": body}
        return json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def submit(self, record: BatchRecord, lines: list[bytes], save: Callable[[BatchRecord], Any]) -> None:
        import anthropic

        requests = [json.loads(line) for line in lines]
        try:
            batch = self.client.messages.batches.create(requests=requests)
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
            raise self.submit_error(exc, "create") from None
        record.batch_id = batch.id
        record.status = batch.processing_status
        record.phase = "submitted"
        save(record)

    def find_orphan(self, record: BatchRecord, claimed: set[str]) -> str | None:
        """A batch is ours only if it provably is: Message Batches carry no metadata, and a
        same-size batch created after our intent may be another job's (attaching to it wrote
        its answers as ours). So a candidate (created after the intent, same size, not
        claimed) must have ENDED, and the custom ids of its results must be exactly this
        record's. A candidate still running cannot be proven ours: None, and the rows go into
        a new batch."""
        after = _dt.datetime.fromtimestamp(record.created_at - 5, tz=_dt.timezone.utc)
        ours = set(record.manifest)
        for batch in self.client.messages.batches.list(limit=100):
            if batch.created_at < after:
                break
            c = batch.request_counts
            total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
            if batch.id in claimed or total != record.n_requests or batch.processing_status != "ended":
                continue
            if {res.custom_id for res in self.results(batch.id)} == ours:
                return batch.id
        return None

    def _poll(self, batch: Any) -> Poll:
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        return Poll(batch.processing_status, counts, self.is_final(batch.processing_status))

    def poll(self, batch_id: str) -> Poll:
        return self._poll(self.client.messages.batches.retrieve(batch_id))

    def cancel(self, batch_id: str) -> Poll:
        import anthropic

        try:
            return self._poll(self.client.messages.batches.cancel(batch_id))
        except anthropic.APIStatusError as exc:  # a batch that already ended
            if exc.status_code >= 500:
                raise
            return self._refusal(exc, batch_id)

    def results(self, batch_id: str) -> Iterator[Result]:
        with self.client.messages.batches.with_streaming_response.results(batch_id) as resp:
            for raw in resp.iter_lines():
                if raw.strip():
                    yield _result(json.loads(raw))

    def close(self) -> None:
        self.client.close()


def _result(line: dict[str, Any]) -> Result:
    cid = line["custom_id"]
    result = line.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        return Result(cid, body=result.get("message"))
    if kind == "errored":
        return Result(cid, error=f"batch errored: {error_text(result.get('error'))}", kind="errored")
    if kind in ("expired", "canceled"):
        return Result(cid, error=f"batch {kind}: request not processed", kind=kind)
    return Result(cid, error=f"batch errored: unknown result type {kind!r}", kind="errored")
