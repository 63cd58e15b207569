"""Pair shards → a `datasets` source the trainer streams from.

Shards are read as a streaming Parquet source (an `IterableDataset`), so memory stays flat
however many pairs there are: rows are decoded one record batch at a time and tokenized on
the fly. Every file's schema stamp is checked first (cheap: only footers are read), so a wrong
file fails with one clear line before any model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from schemas.convert import format_completion, format_prompt
from schemas.errors import UserError
from schemas.tables import PAIRS, parquet_files, validate

# Columns the trainer keeps from a pairs row (besides the formatted prompt/chosen/rejected).
STEP_COLUMNS = (
    "prefix_steps",
    "chosen_steps",
    "rejected_steps",
    "chosen_scores",
    "rejected_scores",
    "chosen_reward",
    "rejected_reward",
    "strategy",
    "ref_chosen_step_logps",
    "ref_rejected_step_logps",
)


def pair_files(path: str | os.PathLike) -> list[Path]:
    """The shards of a pairs folder (or one file), each checked to be a `pairs` file."""
    files = parquet_files(path)
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise UserError(f"{f}: not a readable Parquet file ({exc})") from exc
        validate(schema.empty_table(), PAIRS, f)
    return files


def has_precomputed_ref(path: str | os.PathLike) -> bool:
    """True when every shard has both reference step log-prob columns, with no null row."""
    cols = ["ref_chosen_step_logps", "ref_rejected_step_logps"]
    for f in pair_files(path):
        if not set(cols) <= set(pq.read_schema(f).names):
            return False
        table = pq.read_table(f, columns=cols)  # two list columns of one shard at a time
        if any(table.column(c).null_count for c in cols):
            return False
    return True


def to_example(row: Mapping[str, Any], sep: str) -> dict[str, Any]:
    """A pairs row as a TRL preference row (prompt/chosen/rejected text) plus the step columns.

    The shared prefix goes into the prompt with `schemas.convert.format_prompt`, the one place
    the text layout is defined, so the labeler and the trainer cannot disagree on it. The bare
    problem (``question``) and ``prefix_steps`` are kept for `alignment.chat_prompt`.
    """
    out = {
        "prompt": format_prompt(row["prompt"], row.get("prefix_steps") or (), sep),
        "chosen": format_completion(row["chosen_steps"], sep),
        "rejected": format_completion(row["rejected_steps"], sep),
        "question": row["prompt"],  # the bare problem, for `chat_template`
    }
    for key in STEP_COLUMNS:
        out[key] = row.get(key)
    out["prefix_steps"] = list(out["prefix_steps"] or [])
    return out


SHUFFLE_BUFFER = 1_000  # datasets' default: mixes ~hundreds of problems, a few MB of rows


def load_pairs(
    path: str | os.PathLike, sep: str = "\n", streaming: bool = True, shuffle_seed: int | None = None,
    buffer_size: int = SHUFFLE_BUFFER,
):
    """The pair shards under ``path`` as a `datasets` (Iterable)Dataset of preference rows.

    Shards hold a problem's pairs next to each other, and the Trainer cannot sample an
    `IterableDataset`, so pass ``shuffle_seed`` to shuffle the shard order and the rows within a
    ``buffer_size`` window (reshuffled every epoch: the Trainer calls ``set_epoch``), as TRL's
    default random sampler does for a map-style dataset.
    """
    import datasets

    # `datasets` cannot stream a 0-row Parquet file (an Arrow "BatchSize" error): skip those.
    files = [str(f) for f in pair_files(path) if pq.ParquetFile(f).metadata.num_rows > 0]
    if not files:
        raise UserError(f"{path}: no pairs to train on (every shard is empty)")
    ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
    if shuffle_seed is not None:
        # One input shard at a time: interleaving several makes `datasets` sleep 5 s at every
        # epoch end (an Arrow thread-shutdown workaround); the shard order is shuffled anyway.
        ds = (ds.shuffle(seed=shuffle_seed, buffer_size=buffer_size, max_buffer_input_shards=1) if streaming
              else ds.shuffle(seed=shuffle_seed))
    drop = [c for c in (ds.column_names or []) if c not in STEP_COLUMNS]
    return ds.map(to_example, fn_kwargs={"sep": sep}, remove_columns=drop)
