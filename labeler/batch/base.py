"""What the runner needs from a provider's batch service, and how jobs are cut to its limits.

Transports are synchronous on purpose: batch control calls are few (upload, create, a poll
every minute, one download), so there is nothing to overlap, and the SDK's own retries
(``max_retries``) are enough for them.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from labeler.batch.state import BatchRecord
from schemas.errors import UserError


@dataclass(frozen=True)
class Limits:
    """Per-batch limits of a provider (requests and bytes of the request payload)."""

    max_requests: int
    max_bytes: int


@dataclass
class Poll:
    """One look at a batch: provider status, request counts, and whether it is over."""

    status: str
    counts: dict[str, int] = field(default_factory=dict)
    final: bool = False
    message: str | None = None  # why a batch failed as a whole (OpenAI validation errors)
    #: After :meth:`Transport.cancel`: why the provider would not cancel it (it had already
    #: ended: OpenAI answers 409 "Cannot cancel a batch with status 'completed'"), else None.
    refused: str | None = None


class SubmitError(Exception):
    """A batch could not be submitted. ``maybe_created``: the provider may have created it
    anyway (the create call timed out or the connection dropped), so its record must be kept
    for the next run to find; otherwise nothing exists and the record is dropped.
    ``no_batch_api``: the server has no batch endpoints at all (404/405)."""

    def __init__(self, message: str, *, maybe_created: bool = False, no_batch_api: bool = False) -> None:
        super().__init__(message)
        self.maybe_created = maybe_created
        self.no_batch_api = no_batch_api


@dataclass
class Result:
    """One request's outcome: the response body exactly as the online endpoint returns it,
    or an error message (errored, expired, canceled)."""

    custom_id: str
    body: dict[str, Any] | None = None
    error: str | None = None
    kind: str = "succeeded"  # succeeded | errored | expired | canceled


class Transport(abc.ABC):
    """One provider's batch API. A subclass says who it is (``provider``, the name in
    :mod:`labeler.batch.registry`), where its key and URL come from, its limits, its price
    discount and which of its statuses are final, and implements the calls below."""

    provider: ClassVar[str]
    #: Environment variables of the key and base URL (the online judges read the same ones).
    key_env: ClassVar[str]
    url_env: ClassVar[str]
    default_limits: ClassVar[Limits]
    #: Provider statuses after which a batch will not change any more.
    final_statuses: ClassVar[frozenset[str]]
    #: Request counts (as :meth:`poll` reports them) of requests that were answered, and of
    #: requests that are over in any way (answered, failed, expired, canceled).
    succeeded_counts: ClassVar[tuple[str, ...]]
    finished_counts: ClassVar[tuple[str, ...]]
    #: Batch price as a fraction of the online price (both providers today: half).
    discount: ClassVar[float] = 0.5
    base_url: str | None = None

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None,
                 limits: Limits | None = None, timeout: float = 600.0) -> None:
        key = api_key or os.environ.get(self.key_env)
        if not key:
            raise UserError(f"{self.key_env} is not set; batch mode needs it to submit and poll batches")
        self.limits = limits or self.default_limits
        self.client = self._make_client(key, base_url or os.environ.get(self.url_env), timeout)
        self.base_url = str(self.client.base_url).rstrip("/")

    @abc.abstractmethod
    def _make_client(self, key: str, base_url: str | None, timeout: float) -> Any:
        """The SDK's sync client (its own few retries are fine here: polls are idempotent)."""

    @abc.abstractmethod
    def encode(self, custom_id: str, body: dict[str, Any]) -> bytes:
        """One request as the provider's batch format, for sizing and submission."""

    @abc.abstractmethod
    def submit(self, record: BatchRecord, lines: list[bytes], save: Callable[[BatchRecord], Any]) -> None:
        """Send one batch, filling ``record.file_id`` / ``record.batch_id`` and calling
        ``save(record)`` after each id arrives (the crash-safety contract)."""

    @abc.abstractmethod
    def find_orphan(self, record: BatchRecord, claimed: set[str]) -> str | None:
        """The batch id of a batch created for ``record`` whose id we never wrote down."""

    @abc.abstractmethod
    def poll(self, batch_id: str) -> Poll: ...

    @abc.abstractmethod
    def results(self, batch_id: str) -> Iterator[Result]:
        """Every request's outcome (any order; missing ones are reported by the runner)."""

    @abc.abstractmethod
    def cancel(self, batch_id: str) -> Poll:
        """Ask the provider to cancel; a batch it will not cancel (already over) comes back as
        its current :class:`Poll` with ``refused`` set, never as an exception."""

    @classmethod
    def is_final(cls, status: str) -> bool:
        return status in cls.final_statuses

    @classmethod
    def succeeded(cls, counts: Mapping[str, int]) -> int:
        """Requests of a batch answered so far, from its last polled counts."""
        return sum(counts.get(k, 0) for k in cls.succeeded_counts)

    @classmethod
    def finished(cls, counts: Mapping[str, int]) -> int:
        """Requests of a batch over so far (answered or not), from its last polled counts."""
        return sum(counts.get(k, 0) for k in cls.finished_counts)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the HTTP client."""

    def submit_error(self, exc: Exception, step: str) -> SubmitError:
        """A :class:`SubmitError` for an SDK failure of ``step`` (``upload`` or ``create``): an
        HTTP status means the provider refused (nothing created; 404/405: no batch API there);
        a lost connection during ``create`` may hide a created batch. Keys are scrubbed, and a body
        that is not the provider's JSON error (a proxy's HTML page) is excerpted on one line, as
        online (:func:`labeler.judges.provider.status_message`)."""
        from labeler.judges.provider import scrub, status_message

        code = getattr(exc, "status_code", None)
        where = self.base_url or "the provider"
        if code is not None:
            text = scrub(f"{step} refused: HTTP {code}: {status_message(exc, self.client.api_key)}",
                         self.client.api_key)
            return SubmitError(f"{self.provider} batch API at {where}: {text}", no_batch_api=code in (404, 405))
        text = scrub(f"{step} failed: {type(exc).__name__}: {exc}", self.client.api_key)
        return SubmitError(f"{self.provider} batch API at {where}: {text}", maybe_created=step == "create")

    def _refusal(self, exc: Exception, batch_id: str) -> Poll:
        """The current state of a batch the provider would not cancel (HTTP 4xx)."""
        from labeler.judges.provider import scrub, status_message

        poll = self.poll(batch_id)
        key = self.client.api_key
        poll.refused = scrub(f"HTTP {getattr(exc, 'status_code', '?')}: {status_message(exc, key)}", key)
        return poll


def chunk(encoded: Iterable[tuple[str, bytes]], limits: Limits, overhead: int = 0) -> list[list[tuple[str, bytes]]]:
    """Cut (custom_id, encoded request) pairs into batches within ``limits``, in order.

    A single request larger than the byte limit gets a batch of its own (the provider will
    reject it, and that error is then recorded on its row rather than blocking the others).
    """
    batches: list[list[tuple[str, bytes]]] = []
    current: list[tuple[str, bytes]] = []
    size = overhead
    for cid, line in encoded:
        n = len(line) + 1
        if current and (len(current) >= limits.max_requests or size + n > limits.max_bytes):
            batches.append(current)
            current, size = [], overhead
        current.append((cid, line))
        size += n
    if current:
        batches.append(current)
    return batches


def error_text(obj: Any) -> str:
    """A one-line message from a provider error object (dict or str)."""
    if isinstance(obj, dict):
        inner = obj.get("error", obj)
        if isinstance(inner, dict):
            msg = inner.get("message") or inner.get("type") or json.dumps(inner)
            kind = inner.get("type") or inner.get("code")
            return f"{kind}: {msg}" if kind and kind != msg else str(msg)
        return str(inner)
    return str(obj)
