"""Pair shards → a `datasets` source the trainer streams from.

Shards are read as a streaming Parquet source (an `IterableDataset`), so memory stays flat
however many pairs there are: rows are decoded one record batch at a time and tokenized on
the fly. Before any model is loaded, every check that can fail is made with one clear line:
each file's schema stamp (footers only), the folder's manifest (`pairs.json`, written last by
`stepdpo pairs`: a folder without it, or with shards it does not list, is partial or mixed), and
the step scores (no more scores than steps, each in [0, 1]).

Steps both sides share at the start of a pair (a whole solution against its perturbed copy) are
moved into the prompt on read, whatever wrote the file: such a step has the same tokens and
context on both sides, so in DPO it must cancel, and a stepwise loss that weighted its two
copies differently would train on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.aggregate import DEFAULT_STEP_THRESHOLD
from schemas.convert import format_completion, format_prompt
from schemas.errors import UserError
from schemas.folders import require_complete
from schemas.tables import PAIRS, parquet_files, validate

# Columns the trainer keeps from a pairs row (besides the formatted prompt/chosen/rejected).
KEPT_PAIR_COLUMNS = (
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


MANIFEST = "pairs.json"  # written last, atomically, by `stepdpo pairs` (labeler/pairs/build.py)
PRECOMPUTE_MANIFEST = "precompute.json"  # written last by `stepdpo precompute-ref`


def pairs_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The `pairs.json` of a pairs folder (or of the folder a shard lies in), or None if absent."""
    path = Path(path)
    meta = (path if path.is_dir() else path.parent) / MANIFEST
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{meta}: unreadable manifest ({exc}); rerun `stepdpo pairs`".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise UserError(f"{meta}: not a pairs manifest; rerun `stepdpo pairs`")
    return data


def _check_manifest(path: Path) -> None:
    """A folder must carry a complete manifest listing exactly its shards (`schemas.folders`, the
    rule every reader shares); a single file stands alone, but one inside a pairs folder must be
    a shard that folder's manifest vouches for."""
    fix = "rerun `stepdpo pairs` (or `stepdpo precompute-ref`)"
    if path.is_dir():
        require_complete(path, (MANIFEST, PRECOMPUTE_MANIFEST), fix)
    elif (path.parent / MANIFEST).is_file():
        require_complete(path.parent, (MANIFEST, PRECOMPUTE_MANIFEST), fix)


def pair_files(path: str | os.PathLike) -> list[Path]:
    """The shards of a pairs folder (or one file), each checked to be a `pairs` file, the folder
    checked against its manifest."""
    files = parquet_files(path)
    _check_manifest(Path(path))
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


def count_pairs(path: str | os.PathLike) -> int:
    """Pairs under ``path``, from the shard footers (no row is read)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in pair_files(path))


def _first(values: list, pred) -> int:
    return next(i for i, v in enumerate(values) if pred(v))


def check_pair_rows(files: list[Path]) -> None:
    """Refuse rows with more step scores than steps, or a score outside [0, 1] (null is allowed:
    an unscored step). Reads only the step and score columns, one shard at a time."""
    for f in files:
        cols = ["pair_id"] + [f"{side}_{what}" for side in ("chosen", "rejected") for what in ("steps", "scores")]
        table = pq.read_table(f, columns=cols)
        for side in ("chosen", "rejected"):
            steps = pc.fill_null(pc.list_value_length(table[f"{side}_steps"]), 0)
            scores = pc.fill_null(pc.list_value_length(table[f"{side}_scores"]), 0)
            if pc.any(pc.greater(scores, steps)).as_py():
                i = _first(pc.greater(scores, steps).to_pylist(), bool)
                raise UserError(f"{f}: pair {table['pair_id'][i].as_py()} has {scores[i].as_py()} {side} scores for "
                                f"{steps[i].as_py()} steps")
            flat = pc.drop_null(pc.list_flatten(table[f"{side}_scores"]))
            flat = pc.filter(flat, pc.invert(pc.is_nan(flat))) if len(flat) else flat
            if len(flat) and (pc.min(flat).as_py() < 0.0 or pc.max(flat).as_py() > 1.0):
                rows = table[f"{side}_scores"].to_pylist()
                i = _first(rows, lambda r: any(x is not None and not math.isnan(x) and not 0.0 <= x <= 1.0
                                               for x in (r or [])))
                bad = next(x for x in rows[i] if x is not None and not math.isnan(x) and not 0.0 <= x <= 1.0)
                raise UserError(f"{f}: pair {table['pair_id'][i].as_py()} has a {side} score {bad:g} outside [0, 1]")


def recorded_aggregation(path: str | os.PathLike) -> str | None:
    """The aggregation `stepdpo pairs` computed chosen_reward/rejected_reward with, if recorded."""
    manifest = pairs_manifest(path) or {}
    for key in ("aggregation", "aggregate"):
        if isinstance(manifest.get(key), str):
            return manifest[key]
    config = manifest.get("config")
    if isinstance(config, dict) and isinstance(config.get("aggregate"), str):
        return config["aggregate"]
    return None


def recorded_threshold(path: str | os.PathLike, default: float = DEFAULT_STEP_THRESHOLD) -> float:
    """The score below which `stepdpo pairs` counted a step as an error, if recorded."""
    manifest = pairs_manifest(path) or {}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    for value in (manifest.get("step_threshold"), manifest.get("threshold"), config.get("threshold")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return default


def check_aggregation(path: str | os.PathLike, aggregation: str | None) -> None:
    """Re-aggregating step scores (``aggregation`` set) must use the aggregation the stored rewards
    were made with: anything else silently changes which side a margin/soft_label pair favours."""
    if aggregation is None:
        return
    recorded = recorded_aggregation(path)
    if recorded is not None and recorded != aggregation:
        raise UserError(f"--aggregation {aggregation}: {path} was built with --aggregate {recorded} (its stored "
                        f"rewards use it); leave --aggregation out to use the stored rewards, or pass "
                        f"--aggregation {recorded}")


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def pairs_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """Where a training run's pairs came from: the folder, its manifest's fingerprint, the judges
    and the options that made it (for stepwise_config.json and the model card)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    manifest = pairs_manifest(path) or {}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    out: dict[str, Any] = {
        "path": os.fspath(path.resolve()),
        "num_pairs": count_pairs(path),
        "manifest_sha256": _sha256(folder / MANIFEST),
        "judge_fingerprints": manifest.get("judge_fingerprints"),
        "strategy": config.get("strategy"),
        "aggregation": recorded_aggregation(path),
        "inputs": manifest.get("inputs"),
    }
    precompute = folder / PRECOMPUTE_MANIFEST
    if precompute.is_file():
        out["precompute_sha256"] = _sha256(precompute)
    return out


def shared_leading_steps(chosen: list[str], rejected: list[str]) -> int:
    """How many leading steps both sides share verbatim, leaving each side at least one step."""
    limit = min(len(chosen), len(rejected)) - 1
    n = 0
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    return n


def to_example(row: Mapping[str, Any], sep: str) -> dict[str, Any]:
    """A pairs row as a TRL preference row (prompt/chosen/rejected text) plus the step columns.

    The shared prefix goes into the prompt with `schemas.convert.format_prompt`, the one place
    the text layout is defined, so the labeler and the trainer cannot disagree on it; leading
    steps both sides share join it first (`shared_leading_steps`), with their scores and
    reference log-probs. The bare problem (``question``) and ``prefix_steps`` are kept for
    `alignment.chat_prompt`.
    """
    out = {key: row.get(key) for key in KEPT_PAIR_COLUMNS}
    chosen, rejected = list(row["chosen_steps"]), list(row["rejected_steps"])
    n = shared_leading_steps(chosen, rejected)
    prefix = list(row.get("prefix_steps") or []) + chosen[:n]
    if n:
        for key in ("chosen_steps", "rejected_steps", "chosen_scores", "rejected_scores",
                    "ref_chosen_step_logps", "ref_rejected_step_logps"):
            if out[key] is not None:
                out[key] = list(out[key])[n:]
    out.update({
        "prompt": format_prompt(row["prompt"], prefix, sep),
        "chosen": format_completion(out["chosen_steps"], sep),
        "rejected": format_completion(out["rejected_steps"], sep),
        "question": row["prompt"],  # the bare problem, for `chat_template`
        "prefix_steps": prefix,
    })
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
    checked = pair_files(path)
    check_pair_rows(checked)
    files = [str(f) for f in checked if pq.ParquetFile(f).metadata.num_rows > 0]
    if not files:
        raise UserError(f"{path}: no pairs to train on (every shard is empty)")
    ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
    if shuffle_seed is not None:
        # One input shard at a time: interleaving several makes `datasets` sleep 5 s at every
        # epoch end (an Arrow thread-shutdown workaround); the shard order is shuffled anyway.
        ds = (ds.shuffle(seed=shuffle_seed, buffer_size=buffer_size, max_buffer_input_shards=1) if streaming
              else ds.shuffle(seed=shuffle_seed))
    drop = [c for c in (ds.column_names or []) if c not in KEPT_PAIR_COLUMNS]
    return ds.map(to_example, fn_kwargs={"sep": sep}, remove_columns=drop)
