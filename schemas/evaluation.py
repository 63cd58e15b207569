"""The file `stepdpo eval` writes: one row per problem of an evaluation (eval_problems/1).

Kept apart from the labeler's and trainer's kinds in `tables.py`: nothing reads it but `eval
--baseline` and the user's own analysis (pandas, duckdb), and it never feeds training.
"""

from __future__ import annotations

import pyarrow as pa

from schemas.tables import Kind

EVAL_PROBLEMS = Kind(
    "eval_problems",
    1,
    pa.schema([
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("gold_answer", pa.string()),
        pa.field("n", pa.int32(), nullable=False),  # samples asked for
        pa.field("num_correct", pa.int32(), nullable=False),
        pa.field("answers", pa.list_(pa.string())),  # by sample index; null: no answer
        pa.field("correct", pa.list_(pa.bool_())),
        pa.field("finish_reasons", pa.list_(pa.string())),
        pa.field("missing", pa.int32()),  # samples the generator never wrote (count as wrong)
        pa.field("majority_answer", pa.string()),
        pa.field("majority_correct", pa.bool_()),
    ]),
)
