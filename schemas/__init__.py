"""Data contracts shared by the labeler and the trainer (pyarrow and the standard library only).

The pure-Python helpers load eagerly; the table helpers of ``schemas.tables`` load on first
use (PEP 562), because pyarrow alone takes about half a second to import and ``stepdpo --help``
(which needs only ``UserError``) must stay instant. ``from schemas import read_table`` works
as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from schemas.aggregate import AGGREGATIONS, DEFAULT_STEP_THRESHOLD, aggregate, first_error
from schemas.convert import (
    DEFAULT_SEPARATOR,
    format_completion,
    format_prompt,
    pair_to_preference,
    pair_to_stepwise_supervision,
    scores_to_stepwise_supervision,
    step_char_spans,
)
from schemas.errors import UserError
from schemas.ids import canonical_json, pair_id, response_id, sha256_hex, shard_of

_TABLES = (
    "KINDS", "PAIRS", "RESPONSES", "SCHEMA_KEY", "STEP_SCORES", "Kind", "from_rows",
    "parquet_files", "read_kind", "read_table", "validate", "write_table",
)

__all__ = [
    "AGGREGATIONS", "DEFAULT_SEPARATOR", "DEFAULT_STEP_THRESHOLD", "KINDS", "PAIRS", "RESPONSES", "SCHEMA_KEY",
    "STEP_SCORES", "Kind", "UserError", "aggregate", "canonical_json", "first_error",
    "format_completion", "format_prompt", "from_rows", "pair_id", "pair_to_preference",
    "pair_to_stepwise_supervision", "parquet_files", "read_kind", "read_table", "response_id",
    "scores_to_stepwise_supervision", "sha256_hex", "shard_of", "step_char_spans", "validate",
    "write_table",
]


def __getattr__(name: str) -> Any:
    if name in _TABLES:
        value = getattr(importlib.import_module("schemas.tables"), name)
    elif name == "tables":
        value = importlib.import_module("schemas.tables")
    else:
        raise AttributeError(f"module 'schemas' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers see the lazy names as ordinary imports
    from schemas.tables import (  # noqa: F401
        KINDS,
        PAIRS,
        RESPONSES,
        SCHEMA_KEY,
        STEP_SCORES,
        Kind,
        from_rows,
        parquet_files,
        read_kind,
        read_table,
        validate,
        write_table,
    )
