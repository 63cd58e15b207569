"""Provider batches of a run, persisted in the run folder so a crash never pays twice.

One JSON file per batch under ``RUN_DIR/batches/``. The order of writes is the whole point:

1. ``intent``: the request manifest (custom_id → response_id) is written BEFORE anything is
   sent, with a local ``key`` that is also sent to the provider (OpenAI batch metadata);
2. ``uploaded`` (OpenAI): the input file id;
3. ``submitted``: the provider's batch id, written the moment the create call returns;
4. ``ended``: the provider finished; results are being joined;
5. ``ingested``: rows are in shards and answers in the cache; nothing left to do.

A rerun finds every record short of ``ingested`` and attaches to it instead of resubmitting.
A record stuck at ``intent``/``uploaded`` (killed between the create call and step 3) is
matched to a provider batch by its key (OpenAI metadata) or, on Anthropic (no metadata), by
the custom ids of an ended batch's results, before anything new is submitted; a batch that
cannot be proven ours is never attached to. A record whose batch the provider refused to
create is deleted (:func:`forget`). Every write is temp file + fsync + rename.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.atomic import atomic_write_json
from schemas.errors import UserError
from schemas.ids import sha256_hex

STATE_DIR = "batches"
PHASES = ("intent", "uploaded", "submitted", "ended", "ingested")


@dataclass
class BatchRecord:
    """What we know about one provider batch of this run."""

    key: str  # local id, unique in the run folder; also the file name
    provider: str  # a name in labeler.batch.registry.TRANSPORTS
    judge: str
    fingerprint: str
    manifest: dict[str, str]  # custom_id -> response_id
    phase: str = "intent"
    job: str = ""  # the run folder's job tag ("k0-of-4-" with --num-shards): machines sharing a
    # folder each attach only to their own batches
    created_at: float = field(default_factory=time.time)
    request_bytes: int = 0
    base_url: str | None = None  # where the batch lives (never a key); `stepdpo batches` polls it
    estimated_cost_usd: float | None = None  # at batch price, from the judge's token estimate
    file_id: str | None = None
    batch_id: str | None = None
    submitted_at: float | None = None
    status: str | None = None  # the provider's last reported status
    counts: dict[str, int] = field(default_factory=dict)
    message: str | None = None  # the provider's reason when a batch failed as a whole
    updated_at: float | None = None
    # Filled while results are joined: rows by status and what they cost (batch price).
    rows: dict[str, int] = field(default_factory=dict)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cancel_requested: bool = False

    @property
    def n_requests(self) -> int:
        return len(self.manifest)

    @property
    def done(self) -> bool:
        return self.phase == "ingested"


def state_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STATE_DIR


def new_key(provider: str, fingerprint: str, custom_ids: list[str], job: str = "") -> str:
    """A key naming this batch: job tag, provider, time and a hash of its requests."""
    digest = sha256_hex({"fp": fingerprint, "ids": sorted(custom_ids), "t": time.time_ns()})[:10]
    return f"{job}{provider}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest}"


def save(run_dir: str | os.PathLike, record: BatchRecord) -> Path:
    """Write ``record`` atomically (a reader sees the old or the new file, never half)."""
    record.updated_at = time.time()
    path = state_dir(run_dir) / f"{record.key}.json"
    atomic_write_json(path, asdict(record), indent=None)
    return path


def forget(run_dir: str | os.PathLike, record: BatchRecord) -> None:
    """Delete the record of a batch that was never created (the provider refused it), so that
    nothing lists or attaches to it."""
    (state_dir(run_dir) / f"{record.key}.json").unlink(missing_ok=True)


def load_all(run_dir: str | os.PathLike) -> list[BatchRecord]:
    """Every batch record of the run, oldest first."""
    folder = state_dir(run_dir)
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            records.append(BatchRecord(**data))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path}: unreadable batch record ({exc}); move it away to ignore it") from exc
    records.sort(key=lambda r: (r.created_at, r.key))
    return records


def in_flight(run_dir: str | os.PathLike, fingerprint: str | None = None, job: str = "") -> list[BatchRecord]:
    """Records of job ``job`` not yet ingested (optionally of one judge fingerprint only)."""
    return [
        r for r in load_all(run_dir)
        if not r.done and r.job == job and (fingerprint is None or r.fingerprint == fingerprint)
    ]
