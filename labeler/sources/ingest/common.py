"""What every ingest source shares: reading records with their file:line, building checked
`responses` rows, and a streaming writer that counts, skips and summarises.

Sources (gsm8k.py, prm800k.py, generic.py) only turn one record into one row or raise
:class:`RecordError`; where the record came from, whether to stop or skip, and how the file is
written are decided here once, so every source reports bad input the same way.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from labeler.sources.splitters import SplitError, native_steps
from schemas.atomic import atomic_open
from schemas.errors import UserError
from schemas.ids import canonical_json, response_id, sha256_hex
from schemas.tables import RESPONSES, from_rows

ROW_GROUP = 4096  # rows buffered before they are written as one Parquet row group


class RecordError(ValueError):
    """One record is invalid; the message is one sentence without the location."""


@dataclass(frozen=True)
class Record:
    """One input object and where it came from (for error messages and meta)."""

    where: str  # "data.jsonl:17", "items.json:4" (line of the item's start), "t.parquet:row 9"
    value: Any


# ----------------------------------------------------------------------------- reading


def _decode(raw: bytes, name: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        ) from exc


def _iter_jsonl(path: Path) -> Iterator[Record | tuple[str, RecordError]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path.name}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = _decode(raw, path.name, lineno)
                if not text.strip():
                    continue  # blank lines (e.g. a trailing newline) are not records
                try:
                    value = json.loads(text.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise RecordError(f"malformed JSON ({exc.msg} at column {exc.colno})") from exc
            except RecordError as exc:
                yield where, exc
                continue
            yield Record(where, value)


def _iter_json_array(path: Path) -> Iterator[Record | tuple[str, RecordError]]:
    # raw_decode item by item gives each item's line number, which json.load cannot.
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path.name}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})"
        ) from exc
    decoder = json.JSONDecoder()
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    pos = skip_ws(0)
    if pos >= n or text[pos] != "[":
        raise UserError(f"{path.name}:{line_of(pos)}: expected a JSON array ('[') of objects")
    pos = skip_ws(pos + 1)
    if pos < n and text[pos] == "]":
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            # A broken item cannot be skipped: we would not know where the next one starts.
            raise UserError(f"{path.name}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
        yield Record(f"{path.name}:{line_of(pos)}", value)
        pos = skip_ws(end)
        if pos < n and text[pos] == ",":
            pos = skip_ws(pos + 1)
            continue
        if pos < n and text[pos] == "]":
            return
        raise UserError(f"{path.name}:{line_of(pos)}: malformed JSON array (expected ',' or ']')")


def _iter_parquet(path: Path) -> Iterator[Record | tuple[str, RecordError]]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path.name}: not a readable Parquet file ({exc})") from exc
    row = 0
    for batch in pf.iter_batches(batch_size=ROW_GROUP):
        for value in batch.to_pylist():
            row += 1
            yield Record(f"{path.name}:row {row}", value)


def iter_records(path: str | os.PathLike) -> Iterator[Record | tuple[str, RecordError]]:
    """Records of a JSONL file, a JSON array file or a Parquet file, in order.

    ``.parquet`` files are read as tables; any other file is a JSON array when its first
    non-blank character is ``[`` and JSON lines otherwise.

    Yields a :class:`Record`, or ``(where, RecordError)`` for a line that cannot be read (bad
    UTF-8, malformed JSON) so that ``--skip-invalid`` can skip it. Problems with the whole
    file (missing, not Parquet, a broken JSON array) raise UserError at once.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give its files, e.g. {path}/*.jsonl")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        return _iter_parquet(path)
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    # Sniff rather than trust the suffix: `datasets` writes JSON lines into ".json" files.
    if head.startswith(b"["):
        return _iter_json_array(path)
    return _iter_jsonl(path)


# ----------------------------------------------------------------------------- fields


def get_field(obj: Any, name: str) -> Any:
    """``obj[name]``, where a dotted name walks nested objects (``question.problem``).

    A key that itself contains dots wins over walking, so flat Parquet column names work too.
    """
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {_type_name(obj)}")
    if name in obj:
        return obj[name]
    cur: Any = obj
    walked: list[str] = []
    for part in name.split("."):
        if not isinstance(cur, dict):
            raise RecordError(f"field '{'.'.join(walked)}' is {_type_name(cur)}, not an object")
        if part not in cur:
            raise RecordError(f"field '{name}' is missing")
        cur = cur[part]
        walked.append(part)
    return cur


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def text_field(obj: Any, name: str, *, required: bool = True) -> str | None:
    """A non-empty string field (required) or an optional answer-like field.

    Numbers are accepted for optional fields (answers are often stored as ints) and written
    as their JSON text; booleans, lists and objects are type errors.
    """
    value = get_field(obj, name)
    if value is None and not required:
        return None
    if isinstance(value, str):
        if required and not value.strip():
            raise RecordError(f"field '{name}' is empty")
        return value
    if not required and isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    raise RecordError(f"field '{name}' must be a string, got {_type_name(value)}")


def stable_problem_id(source: str, prompt: str) -> str:
    """Same problem text → same id on every run and machine."""
    return f"{source}:{sha256_hex(prompt)[:16]}"


def check_scores(
    scores: Sequence[Any] | None, n_steps: int, what: str = "reference scores"
) -> list[float | None] | None:
    """Reference scores: one per step, each null or a number in [0, 1]."""
    if scores is None:
        return None
    out: list[float | None] = []
    if len(scores) != n_steps:
        raise RecordError(f"{what}: {len(scores)} value(s) for {n_steps} step(s)")
    for k, s in enumerate(scores):
        if s is None:
            out.append(None)
            continue
        if isinstance(s, bool):
            out.append(1.0 if s else 0.0)
            continue
        if not isinstance(s, (int, float)) or math.isnan(s) or not 0.0 <= s <= 1.0:
            raise RecordError(
                f"{what}: value {s!r} at step {k + 1} is not in [0, 1], true/false or null"
            )
        out.append(float(s))
    return out


def make_row(
    *,
    prompt: str,
    steps: Sequence[str],
    source: str,
    problem_id: str | None = None,
    final_answer: str | None = None,
    gold_answer: str | None = None,
    reference_scores: Sequence[Any] | None = None,
    meta: dict[str, Any] | None = None,
    annotation: Any = None,
) -> dict[str, Any]:
    """One checked `responses` row; the response id hashes the problem text and the steps, and
    ``annotation`` when the row is one human annotation of a solution (see ``response_id``)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RecordError("the problem text is empty")
    try:
        steps = native_steps(list(steps) if not isinstance(steps, str) else steps)
    except SplitError as exc:
        raise RecordError(str(exc)) from exc
    scores = check_scores(reference_scores, len(steps))
    if annotation is not None:
        annotation = {"annotation": annotation, "labels": scores}
    return {
        "response_id": response_id(prompt, steps, annotation),
        "problem_id": problem_id if problem_id is not None else stable_problem_id(source, prompt),
        "source": source,
        "prompt": prompt,
        "steps": steps,
        "final_answer": final_answer,
        "gold_answer": gold_answer,
        "reference_scores": scores,
        "meta": canonical_json(meta) if meta else None,
    }


# ----------------------------------------------------------------------------- writing


@dataclass
class IngestStats:
    rows: int = 0
    skipped: int = 0
    steps: int = 0
    min_steps: int = 0
    max_steps: int = 0
    labeled: int = 0
    duplicates: int = 0
    reannotated: int = 0  # rows annotating a solution (problem + steps) an earlier row also has
    id_conflicts: int = 0  # records whose problem id an earlier record used for another problem
    skipped_path: Path | None = None
    inputs: list[str] = field(default_factory=list)

    def summary(self, output: Path) -> str:
        mean = self.steps / self.rows if self.rows else 0.0
        lines = [
            f"wrote {self.rows:,} responses to {output} (from {', '.join(self.inputs)})",
            f"steps per response: min {self.min_steps}, mean {mean:.2f}, max {self.max_steps}; "
            f"{self.steps:,} steps in all",
            f"with reference scores: {self.labeled:,}; duplicate responses (same problem and "
            f"steps): {self.duplicates:,}",
        ]
        if self.reannotated:
            lines.append(f"human annotations: {self.rows:,} rows, {self.reannotated:,} of them "
                         "another annotation of a solution already read (each kept as its own row)")
        if self.id_conflicts:
            lines.append(f"problem ids reused for a different problem text: {self.id_conflicts:,} "
                         "record(s), skipped")
        if self.skipped:
            lines.append(f"skipped {self.skipped:,} invalid record(s); reasons in {self.skipped_path}")
        else:
            lines.append("skipped 0 invalid records")
        return "\n".join(lines)


class ResponsesWriter:
    """Streams rows into ``output`` in row groups, atomically (temp file + rename).

    Without ``skip_invalid`` the first bad record raises UserError naming its file and line and
    nothing is written; with it, the record's location and reason go to ``OUT.skipped.jsonl``.
    """

    def __init__(self, output: str | os.PathLike, *, skip_invalid: bool = False, limit: int | None = None):
        self.output = Path(output)
        if self.output.suffix.lower() != ".parquet":
            raise UserError(f"{self.output}: the output must be a .parquet file")
        self.skip_invalid = skip_invalid
        self.limit = limit
        self.stats = IngestStats()
        self.skipped_path = self.output.with_name(self.output.stem + ".skipped.jsonl")
        self._buffer: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._solutions: set[str] = set()
        self._problems: dict[str, tuple[str, str]] = {}  # problem id -> (text hash, first where)
        self._skips: list[dict[str, str]] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None

    @property
    def full(self) -> bool:
        return self.limit is not None and self.stats.rows >= self.limit

    def __enter__(self) -> ResponsesWriter:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.output.name}.", suffix=".tmp", dir=self.output.parent)
        os.close(fd)
        return self

    def check_problem_id(self, row: dict[str, Any], where: str) -> None:
        """One problem id, one problem text: rows of an id reused for another problem would be
        grouped and paired as one problem downstream ("What is 1+1?" against a 7×8 solution)."""
        pid, text = row["problem_id"], sha256_hex(row["prompt"])
        first = self._problems.setdefault(pid, (text, where))
        if first[0] != text:
            self.stats.id_conflicts += 1
            raise RecordError(f"problem id {pid!r} was used for a different problem text at "
                              f"{first[1]}; give each problem its own id")

    def add(self, row: dict[str, Any]) -> None:
        if self.full:
            return
        st = self.stats
        n = len(row["steps"])
        st.min_steps = n if st.rows == 0 else min(st.min_steps, n)
        st.max_steps = max(st.max_steps, n)
        st.rows += 1
        st.steps += n
        st.labeled += row["reference_scores"] is not None
        if row["response_id"] in self._seen:
            st.duplicates += 1
        else:
            solution = response_id(row["prompt"], row["steps"])
            st.reannotated += solution != row["response_id"] and solution in self._solutions
            self._solutions.add(solution)
        self._seen.add(row["response_id"])
        self._buffer.append(row)
        if len(self._buffer) >= ROW_GROUP:
            self._flush()

    def reject(self, where: str, error: Exception) -> None:
        """A bad record: stop with a one-line error, or record and skip it."""
        if not self.skip_invalid:
            raise UserError(f"{where}: {error} (use --skip-invalid to skip such records)")
        self.stats.skipped += 1
        self._skips.append({"where": where, "error": str(error)})

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = from_rows(self._buffer, RESPONSES)
        self._buffer = []
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, RESPONSES.stamped, compression="zstd")
        self._writer.write_table(table, row_group_size=ROW_GROUP)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()
                if self._writer is None:  # no rows: still a valid, stamped, empty file
                    self._writer = pq.ParquetWriter(self._tmp, RESPONSES.stamped, compression="zstd")
                self._writer.close()
                self._writer = None
                with open(self._tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(self._tmp, self.output)
                self._tmp = None
                self._write_skips()
        finally:
            if self._writer is not None:
                self._writer.close()
            if self._tmp is not None and os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def _write_skips(self) -> None:
        if not self._skips:
            # A stale sidecar from an earlier run would describe records that are now fine.
            self.skipped_path.unlink(missing_ok=True)
            return
        with atomic_open(self.skipped_path, "w") as fh:
            for item in self._skips:
                fh.write(json.dumps(item, ensure_ascii=False) + "\n")
        self.stats.skipped_path = self.skipped_path


def ingest_records(
    paths: Sequence[str | os.PathLike],
    writer: ResponsesWriter,
    to_row: Any,
) -> IngestStats:
    """Feed every record of ``paths`` through ``to_row(record) -> row`` into ``writer``."""
    for path in paths:
        writer.stats.inputs.append(str(path))
        for item in iter_records(path):
            if writer.full:
                return writer.stats
            if isinstance(item, tuple):
                writer.reject(*item)
                continue
            try:
                row = to_row(item)
                writer.check_problem_id(row, item.where)
            except (RecordError, SplitError) as exc:
                writer.reject(item.where, exc)
                continue
            writer.add(row)
    return writer.stats
