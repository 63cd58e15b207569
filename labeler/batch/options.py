"""`--batch`'s options, apart from the batch machinery: `stepdpo label/generate` build their parser
from :class:`BatchOptions` without importing the transports, state and collect loop (~7 ms of
every start-up and `--help`); :mod:`labeler.batch.collect` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatchOptions:
    poll_interval: float = field(
        default=60.0, metadata={"help": "--batch: seconds between status polls of provider batches"}
    )
    batch_retry: str = field(
        default="batch",
        metadata={"help": "--batch: how rows that failed inside a batch (errored, expired, canceled) are "
                          "retried by the next run: in a new batch or online",
                  "choices": ["batch", "online"]},
    )
    batch_max_requests: int | None = field(
        default=None,
        metadata={"help": "--batch: requests per batch at most (default: the provider's limit, "
                          "OpenAI 50000, Anthropic 100000)"},
    )
    batch_max_mb: float | None = field(
        default=None,
        metadata={"help": "--batch: MB of requests per batch at most (default: OpenAI 200, Anthropic 256)"},
    )
    batch_wait: bool = field(
        default=True,
        metadata={"help": "--batch: wait until the batches end and write their rows; --no-batch-wait "
                          "submits, records the batch ids and exits (rerun to collect)"},
    )
    batch_max_wait: float | None = field(
        default=None,
        metadata={"help": "--batch: stop waiting after this many seconds; the batches keep running "
                          "and a rerun collects them"},
    )
