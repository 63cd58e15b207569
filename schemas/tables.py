"""The Arrow schemas of every file we write, and the read/write/validate helpers.

Each file carries ``stepdpo.schema = NAME/VERSION`` in its Arrow schema metadata. Readers check
it, so a trainer box never silently trains on a file of the wrong kind or from an older layout.
Steps are stored as ``list<string>``: they are the unit of work and are never re-split.

A file saved again by pandas, polars or duckdb keeps our columns but loses the stamp: it is
read when its columns make the kind needed (a one-line note says so) and refused otherwise with
an error that names the missing columns and the fix.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.atomic import atomic_open
from schemas.errors import UserError

SCHEMA_KEY = b"stepdpo.schema"

_str = pa.string()
_steps = pa.list_(pa.string())
_scores = pa.list_(pa.float64())  # items nullable: a step may have no score


@dataclass(frozen=True)
class Kind:
    """A named, versioned file layout."""

    name: str
    version: int
    schema: pa.Schema
    optional: frozenset[str] = frozenset()

    @property
    def tag(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def stamped(self) -> pa.Schema:
        meta = dict(self.schema.metadata or {})
        meta[SCHEMA_KEY] = self.tag.encode()
        return self.schema.with_metadata(meta)


_RESPONSE_FIELDS = [
    pa.field("response_id", _str, nullable=False),
    pa.field("problem_id", _str),
    pa.field("source", _str),
    pa.field("prompt", _str, nullable=False),
    pa.field("steps", _steps, nullable=False),
    pa.field("final_answer", _str),
    pa.field("gold_answer", _str),
    pa.field("reference_scores", _scores),
    pa.field("meta", _str),  # JSON object as text: source-specific extras
]

RESPONSES = Kind("responses", 1, pa.schema(_RESPONSE_FIELDS))

STEP_SCORES = Kind(
    "step_scores",
    1,
    pa.schema(
        _RESPONSE_FIELDS
        + [
            pa.field("judge", _str, nullable=False),
            pa.field("judge_fingerprint", _str, nullable=False),
            pa.field("scores", _scores),  # one per step, in [0, 1], null where none given
            pa.field("raw", _str),
            pa.field("status", _str, nullable=False),  # ok | error
            pa.field("error", _str),
            pa.field("attempts", pa.int32()),
            pa.field("input_tokens", pa.int64()),
            pa.field("output_tokens", pa.int64()),
            pa.field("cached_tokens", pa.int64()),
            pa.field("cost_usd", pa.float64()),
            pa.field("latency_s", pa.float64()),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
        ]
    ),
)

PAIRS = Kind(
    "pairs",
    1,
    pa.schema(
        [
            pa.field("pair_id", _str, nullable=False),
            pa.field("problem_id", _str),
            pa.field("prompt", _str, nullable=False),
            pa.field("prefix_steps", _steps, nullable=False),
            pa.field("chosen_steps", _steps, nullable=False),
            pa.field("rejected_steps", _steps, nullable=False),
            pa.field("chosen_scores", _scores),
            pa.field("rejected_scores", _scores),
            pa.field("chosen_reward", pa.float64()),
            pa.field("rejected_reward", pa.float64()),
            pa.field("strategy", _str, nullable=False),
            pa.field("judge_fingerprint", _str),
            pa.field("chosen_response_id", _str),
            pa.field("rejected_response_id", _str),
            # Per-step reference log-probs written by `stepdpo precompute-ref`; null until then.
            pa.field("ref_chosen_step_logps", _scores),
            pa.field("ref_rejected_step_logps", _scores),
        ]
    ),
    optional=frozenset({"ref_chosen_step_logps", "ref_rejected_step_logps"}),
)

KINDS: dict[str, Kind] = {k.name: k for k in (RESPONSES, STEP_SCORES, PAIRS)}


def kind_of_schema(schema: pa.Schema) -> str | None:
    """The ``NAME/VERSION`` tag stamped in a schema, or None for a foreign file."""
    meta = schema.metadata or {}
    tag = meta.get(SCHEMA_KEY)
    return tag.decode() if tag else None


def _describe(path: str | os.PathLike | None) -> str:
    return f"{path}: " if path is not None else ""


def validate(table: pa.Table, kind: Kind, path: str | os.PathLike | None = None) -> pa.Table:
    """Check ``table`` against ``kind`` and return it in canonical column order and types.

    Raises UserError naming the file and the first problem: a wrong kind or version stamp,
    a missing column, a column of the wrong type, or a null in a required column.
    """
    where = _describe(path)
    tag = kind_of_schema(table.schema)
    if tag is not None and tag != kind.tag:
        name, _, version = tag.partition("/")
        if name != kind.name:
            raise UserError(f"{where}this is a '{name}' file, but a '{kind.name}' file is needed here")
        raise UserError(
            f"{where}'{kind.name}' schema version {version} is not supported by this stepdpo "
            f"(it reads version {kind.version}); re-create the file with this version"
        )
    columns = []
    for field in kind.schema:
        if field.name not in table.column_names:
            if field.name in kind.optional:
                columns.append(pa.nulls(table.num_rows, field.type))
                continue
            raise UserError(f"{where}'{kind.name}' file is missing the column '{field.name}'")
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserError(
                    f"{where}column '{field.name}' has type {col.type}, expected {field.type}"
                ) from exc
        if not field.nullable and col.null_count:
            raise UserError(f"{where}column '{field.name}' has {col.null_count} null value(s); it is required")
        if field.name == "steps" and len(col):
            _check_steps(col, kind, where)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=kind.stamped)


def _check_steps(col: pa.ChunkedArray, kind: Kind, where: str) -> None:
    """A solution has at least one step and no step is null (judges index steps by position).

    Read from the list offsets, without pyarrow.compute: its import is ~20 ms of every
    command's start-up, and comparing with a Python 0 would make pyarrow import pandas."""
    empty, first, seen, nulls = 0, None, 0, 0
    for chunk in col.chunks:
        offsets = chunk.offsets.to_pylist()
        for i, (start, end) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            if start == end:
                empty += 1
                first = seen + i if first is None else first
        seen += len(chunk)
        nulls += chunk.values.slice(offsets[0], offsets[-1] - offsets[0]).null_count  # this chunk's steps
    if empty:
        raise UserError(f"{where}'{kind.name}' row {first}: 'steps' is empty ({empty} row(s) with no step)")
    if nulls:
        raise UserError(f"{where}column 'steps' holds {nulls} null step(s); every step must be a string")


def from_rows(rows: Sequence[dict[str, Any]], kind: Kind) -> pa.Table:
    """Build a stamped table from dicts; missing optional/nullable keys become null.

    The columns go through Arrow's JSON reader (:func:`_columns_via_json`), not ``pa.array``:
    pyarrow's first conversion of Python objects imports pandas when it is installed (~0.17 s,
    mid-run for ``stepdpo label``). Values JSON cannot carry exactly take ``pa.array``'s route,
    which also words the error for a value of the wrong type."""
    data = {f.name: [r.get(f.name) for r in rows] for f in kind.schema}
    for f in kind.schema:
        # Arrow would silently turn the string "abc" into the list ["a", "b", "c"].
        if pa.types.is_list(f.type):
            for i, value in enumerate(data[f.name]):
                if isinstance(value, str):
                    raise UserError(
                        f"cannot build a '{kind.name}' table: row {i}: '{f.name}' must be a list, "
                        "not a string"
                    )
    table = _columns_via_json(data, kind.schema)
    if table is None:
        try:
            table = pa.Table.from_pydict(data, schema=kind.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise UserError(f"cannot build a '{kind.name}' table: {exc}") from exc
    return validate(table, kind)


# ASCII out (non-ASCII as \u escapes, which the reader decodes); NaN and infinities refused.
_JSON = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _columns_via_json(data: dict[str, list[Any]], schema: pa.Schema) -> pa.Table | None:
    """``data`` (column name -> Python values) as a table of ``schema``, through
    ``pyarrow.json`` with the schema given: all columns as ONE JSON object of lists, parsed
    in C++, so no pandas import and no Python work per value beyond the JSON encoder's.

    None when JSON cannot carry the values as ``pa.array`` would take them: a value JSON has
    no form for (NaN, bytes, a numpy integer), a timestamp column holding anything but
    datetimes, or a value of the wrong type (the reader is strict: a number is never a
    string, a bool never a number, a float with a fraction never an int). The caller then
    converts with ``pa.array``. One difference remains: an int above 2**53 in a float
    column is rounded here where ``pa.array`` refuses it."""
    n = len(next(iter(data.values()), []))
    if n == 0:
        return schema.empty_table()
    columns = dict(data)
    for f in schema:
        if pa.types.is_timestamp(f.type):
            values = columns[f.name]
            if not all(v is None or isinstance(v, dt.datetime) for v in values):
                return None
            columns[f.name] = [None if v is None else v.isoformat() for v in values]
    try:
        text = _JSON.encode(columns).encode("ascii")
    except (TypeError, ValueError):
        return None
    if len(text) >= 2**31 - 1:  # one JSON object must fit one block of the reader
        return None
    import pyarrow.json as pj

    one_row = pa.schema([pa.field(f.name, pa.list_(f.type)) for f in schema])
    try:
        table = pj.read_json(
            io.BytesIO(text),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(text) + 1),
            parse_options=pj.ParseOptions(explicit_schema=one_row, unexpected_field_behavior="error"),
        )
    except pa.ArrowInvalid:
        return None
    return pa.Table.from_arrays([table.column(f.name).chunk(0).flatten() for f in schema], schema=schema)


def write_table(table: pa.Table, path: str | os.PathLike, kind: Kind) -> Path:
    """Validate and write ``table`` atomically: a reader never sees a half-written file.

    The data goes to a temporary file in the same folder, is fsynced, then renamed over
    ``path``; a crash leaves either the old file or the new one.
    """
    path = Path(path)
    table = validate(table, kind, path)
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    return path


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files behind ``path``: the file itself, or a folder's ``*.parquet`` sorted.

    Hidden and temporary files (a crashed writer's leftovers) are ignored.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise UserError(f"{path}: folder has no .parquet files")
        return files
    return [path]


def _missing(kind: Kind, names: Sequence[str]) -> list[str]:
    """Required columns of ``kind`` that a schema with column ``names`` lacks."""
    return [f.name for f in kind.schema if f.name not in names and f.name not in kind.optional]


# Most specific first: every step_scores file also has the columns of a responses file.
_INFER_ORDER = (STEP_SCORES, PAIRS, RESPONSES)


def infer_kind(schema: pa.Schema) -> Kind | None:
    """The kind whose columns an unstamped file has (a stepdpo file saved again by pandas,
    polars or duckdb keeps the columns but loses the stamp); None when none fits."""
    return next((k for k in _INFER_ORDER if not _missing(k, schema.names)), None)


def _unstamped(path: Path, schema: pa.Schema, wanted: Kind | None = None) -> UserError:
    """The one-line error for an unstamped file whose columns make no (or not the wanted) kind."""
    candidates = [wanted] if wanted is not None else list(_INFER_ORDER)
    kind = min(candidates, key=lambda k: len(_missing(k, schema.names)))
    missing = _missing(kind, schema.names)
    return UserError(
        f"{path}: not a stepdpo file (no '{SCHEMA_KEY.decode()}' metadata) and its columns do not "
        f"make a '{kind.name}' table (missing {', '.join(missing[:4])}{', …' if len(missing) > 4 else ''}); "
        "keep every column when you filter a stepdpo file with pandas/polars/duckdb, or turn "
        "your own data into responses with `stepdpo ingest jsonl`"
    )


def _say_unstamped(files: list[Path], kind: Kind) -> None:
    if files:
        more = f" and {len(files) - 1} more" if len(files) > 1 else ""
        print(f"stepdpo: note: {files[0]}{more}: no '{SCHEMA_KEY.decode()}' stamp (saved by another "
              f"tool?); its columns match '{kind.tag}', so it is read as such", file=sys.stderr)


def read_kind(path: str | os.PathLike) -> str:
    """The kind name stamped in a Parquet file (or a folder's first file); for an unstamped
    file, the kind its columns make (see :func:`infer_kind`)."""
    first = parquet_files(path)[0]
    try:
        schema = pq.read_schema(first)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{first}: not a readable Parquet file ({exc})") from exc
    tag = kind_of_schema(schema)
    if tag is None:
        kind = infer_kind(schema)
        if kind is None:
            raise _unstamped(first, schema)
        return kind.name
    return tag.partition("/")[0]


def read_parquet(path: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file as a table, as written (no check: :func:`read_table` checks).

    ``pq.read_table`` goes through ``pyarrow.dataset``, whose import pulls in pandas: about
    170 ms of start-up for every command that reads a file, spent before its first real work.
    ``ParquetFile`` reads the same columns without it."""
    with pq.ParquetFile(path) as f:
        if columns is None:
            return f.read()
        missing = [c for c in columns if c not in f.schema_arrow.names]
        if missing:  # as pq.read_table says it (ParquetFile would raise a bare KeyError)
            raise pa.ArrowInvalid(f"No match for FieldRef.Name({missing[0]}) in {path}")
        return f.read(columns=list(columns))


def read_table(
    path: str | os.PathLike, kind: Kind, columns: Iterable[str] | None = None
) -> pa.Table:
    """Read one file or a folder of shards of ``kind``, checked, optionally only some columns."""
    files = parquet_files(path)
    cols = list(columns) if columns is not None else None
    tables = []
    unstamped = []
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{f}: not a readable Parquet file ({exc})") from exc
        tag = kind_of_schema(schema)
        if tag is None:
            # Saved again by another tool: accepted when its columns make this kind; the
            # checked table below carries the stamp from here on.
            if _missing(kind, schema.names):
                raise _unstamped(f, schema, kind)
            unstamped.append(f)
        if cols is None:
            tables.append(validate(read_parquet(f), kind, f))
        else:
            unknown = [c for c in cols if c not in kind.schema.names]
            if unknown:
                raise UserError(f"'{kind.name}' files have no column(s) {', '.join(unknown)}")
            partial = Kind(
                kind.name,
                kind.version,
                pa.schema([kind.schema.field(c) for c in cols]),
                kind.optional,
            )
            present = [c for c in cols if c in schema.names]
            tables.append(validate(read_parquet(f, columns=present), partial, f))
    _say_unstamped(unstamped, kind)
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables)
