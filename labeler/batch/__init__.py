"""Provider batch mode: the same judge requests sent through the OpenAI Batch API or Anthropic
Message Batches (half price, hours of latency), with batch ids persisted in the run folder so a
crashed run attaches to its batches instead of paying twice.

``run_batch_label`` (runner) is the whole job on the engine's public API; ``submit_and_collect``
(collect) the submit / persist / poll / join loop; a ``Transport`` (base) per provider, found by
name in ``TRANSPORTS`` (registry) as judges are in the judge registry; ``BatchRecord`` (state)
what the run folder remembers of each batch. Names load their module on first use (the
transports import the provider SDKs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "run_batch_label": "labeler.batch.runner",
    "batch_costs": "labeler.batch.runner",
    "batch_error_ids": "labeler.batch.runner",
    "BatchOptions": "labeler.batch.options",
    "BatchSummary": "labeler.batch.collect",
    "Sink": "labeler.batch.collect",
    "make_transport": "labeler.batch.collect",
    "submit_and_collect": "labeler.batch.collect",
    "Transport": "labeler.batch.base",
    "Limits": "labeler.batch.base",
    "Poll": "labeler.batch.base",
    "Result": "labeler.batch.base",
    "TRANSPORTS": "labeler.batch.registry",
    "create_transport": "labeler.batch.registry",
    "provider_for": "labeler.batch.registry",
    "transport_class": "labeler.batch.registry",
    "BatchRecord": "labeler.batch.state",
    "RunSink": "labeler.batch.sink",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'labeler.batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers see the lazy names as ordinary imports
    from labeler.batch.base import Limits, Poll, Result, Transport  # noqa: F401
    from labeler.batch.collect import (  # noqa: F401
        BatchSummary,
        Sink,
        make_transport,
        submit_and_collect,
    )
    from labeler.batch.options import BatchOptions  # noqa: F401
    from labeler.batch.registry import TRANSPORTS, create_transport, provider_for, transport_class  # noqa: F401
    from labeler.batch.runner import batch_costs, batch_error_ids, run_batch_label  # noqa: F401
    from labeler.batch.sink import RunSink  # noqa: F401
    from labeler.batch.state import BatchRecord  # noqa: F401
