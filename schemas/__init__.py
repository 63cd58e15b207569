"""Data contracts shared by the labeler and the trainer (pyarrow and the standard library only)."""

from schemas.aggregate import AGGREGATIONS, aggregate, first_error
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
from schemas.tables import (
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

__all__ = [
    "AGGREGATIONS", "DEFAULT_SEPARATOR", "KINDS", "PAIRS", "RESPONSES", "SCHEMA_KEY",
    "STEP_SCORES", "Kind", "UserError", "aggregate", "canonical_json", "first_error",
    "format_completion", "format_prompt", "from_rows", "pair_id", "pair_to_preference",
    "pair_to_stepwise_supervision", "parquet_files", "read_kind", "read_table", "response_id",
    "scores_to_stepwise_supervision", "sha256_hex", "shard_of", "step_char_spans", "validate",
    "write_table",
]
