"""Summaries of responses / step_scores / pairs files and run folders.

Everything is columnar: list columns are exploded once into flat numpy arrays (value, row,
position) with ``list_flatten`` / ``list_parent_indices`` / ``list_value_length``, so a 100k-row
file costs a few vector operations, never a Python loop per row. Only the columns a summary
needs are read: step text, prompts and raw judge output are the bulk of a file and a summary
never looks at them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.errors import UserError
from schemas.folders import require_complete
from schemas.tables import KINDS, Kind, parquet_files, read_kind, read_table, validate

# The columns each summary reads; tests check that nothing else is loaded.
COLUMNS: dict[str, list[str]] = {
    "responses": ["response_id", "source", "steps", "reference_scores"],
    "step_scores": [
        "response_id", "judge", "judge_fingerprint", "scores", "reference_scores", "status",
        "error", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "latency_s",
    ],
    "pairs": [
        "pair_id", "strategy", "judge_fingerprint", "chosen_reward", "rejected_reward",
        "chosen_scores", "rejected_scores", "ref_chosen_step_logps",
    ],
}

# Manifests that vouch for a pairs folder: `stepdpo pairs` or `stepdpo precompute-ref` wrote it.
PAIRS_MANIFESTS = ("pairs.json", "precompute.json")
PAIRS_MANIFEST_KEYS = ("strategy", "aggregation", "step_threshold", "judge_fingerprints", "counts")
PAIRS_FIX = "rebuild it with `stepdpo pairs ... --overwrite` (or rerun `stepdpo precompute-ref`)"

SCORE_BINS = 10  # histogram bins of scores in [0, 1]
MAX_POSITION = 20  # positions past this are pooled into one "20+" bucket


@dataclass
class Loaded:
    """One input: its kind, the needed columns, and the run manifest when it is a run folder."""

    path: Path
    kind: Kind
    files: list[Path]
    table: pa.Table
    manifest: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Row i of ``table`` is row kept[i] of the files (None: every row, in order).
    kept: np.ndarray | None = None
    superseded: int = 0


def winning_rows(table: pa.Table) -> np.ndarray | None:
    """Indices of the rows that count, by the run folder's resume rule, or None if all do.

    A run killed after writing a shard but before its final compaction can hold a response
    twice (an earlier error row and the new ok row). Per (response, judge fingerprint) the first
    ok row wins, else the latest error row, as ``stepdpo label`` decides on its next run; so
    ``inspect`` between a kill and the rerun counts each response once.
    """
    if table.num_rows == 0 or "status" not in table.column_names:
        return None
    rids = table.column("response_id")
    if pc.count_distinct(rids).as_py() == table.num_rows:
        return None  # the usual case: nothing to decide (one vector op)
    fps = (table.column("judge_fingerprint").to_pylist() if "judge_fingerprint" in table.column_names
           else [None] * table.num_rows)
    winner: dict[tuple[str, Any], tuple[int, bool]] = {}
    for i, (rid, fp, status) in enumerate(zip(rids.to_pylist(), fps, table.column("status").to_pylist(),
                                              strict=True)):
        prev = winner.get((rid, fp))
        if prev is None or not prev[1]:
            winner[(rid, fp)] = (i, status == "ok")
    if len(winner) == table.num_rows:
        return None
    return np.sort(np.fromiter((i for i, _ in winner.values()), dtype=np.int64, count=len(winner)))


def load(path: str | os.PathLike, columns: list[str] | None = None) -> Loaded:
    """Read ``path`` (file or folder of shards) keeping only the summary's columns."""
    path = Path(path)
    name = read_kind(path)
    if name not in KINDS:
        hint = ""
        if name == "eval_problems":  # `stepdpo eval`'s folder: its numbers are already summarised
            folder = path if path.is_dir() else path.parent
            hint = (f"; an eval result: its numbers are in {folder / 'summary.json'}, and `stepdpo eval ... "
                    f"--baseline {folder}` compares another eval with it")
        raise UserError(f"{path}: holds '{name}' data; inspect reads {', '.join(KINDS)} files{hint}")
    kind = KINDS[name]
    extra: dict[str, Any] = {}
    if name == "pairs":  # a killed or mixed pairs folder would be summarised as if whole
        manifest = require_complete(path, PAIRS_MANIFESTS, fix=PAIRS_FIX)
        if manifest is not None:
            extra["pairs_manifest"] = {k: manifest[k] for k in PAIRS_MANIFEST_KEYS if k in manifest}
    files = parquet_files(path)
    table = read_table(path, kind, columns=columns if columns is not None else COLUMNS[name])
    kept = winning_rows(table) if name == "step_scores" else None
    superseded = 0
    if kept is not None:
        superseded = table.num_rows - len(kept)
        table = table.take(pa.array(kept))
    return Loaded(path=path, kind=kind, files=files, table=table, manifest=read_manifests(path),
                  extra=extra, kept=kept, superseded=superseded)


def read_manifests(path: Path) -> dict[str, Any] | None:
    """A run folder's ``run.json``; a job split across machines has one ``run-kK-of-N.json``
    per machine, returned as {file name: manifest}."""
    if not path.is_dir():
        return None
    single = path / "run.json"
    names = [single] if single.exists() else sorted(path.glob("run-k*-of-*.json"))
    found = {}
    for f in names:
        try:
            found[f.name] = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{f}: not valid JSON ({exc})") from exc
    if not found:
        return None
    return found["run.json"] if "run.json" in found else found


def take_rows(loaded: Loaded, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` for the given rows of ``loaded`` (global indices, in that order).

    Only the Parquet row groups holding those rows are read, so ``--show 5`` on a run of many
    shards decodes the step text of one or a few shards, not of the whole run.
    """
    import pyarrow.parquet as pq

    rows = np.asarray(rows, dtype=np.int64)
    if loaded.kept is not None:
        rows = loaded.kept[rows]
    kind = loaded.kind
    partial = Kind(kind.name, kind.version, pa.schema([kind.schema.field(c) for c in columns]),
                   kind.optional)
    pieces, where = [], np.empty(len(rows), dtype=np.int64)
    base = got = 0
    for f in loaded.files:
        pf = pq.ParquetFile(f)
        present = [c for c in columns if c in pf.schema_arrow.names]
        for rg in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            hit = np.flatnonzero((rows >= base) & (rows < base + n))
            if len(hit):
                piece = validate(pf.read_row_group(rg, columns=present), partial, f)
                pieces.append(piece.take(pa.array(rows[hit] - base)))
                where[hit] = got + np.arange(len(hit))
                got += len(hit)
            base += n
    if not pieces:
        return partial.stamped.empty_table()
    return pa.concat_tables(pieces).take(pa.array(where))


# ----------------------------------------------------------------------------- list columns


@dataclass
class Exploded:
    """A list<float> column flattened: ``values[i]`` is step ``pos[i]`` of row ``row[i]``.

    ``lengths[r]`` is the list length of row r, or -1 where the list itself is null.
    Null items become NaN.
    """

    values: np.ndarray
    row: np.ndarray
    pos: np.ndarray
    lengths: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.lengths)


def _as_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 0:
            return pa.array([], type=col.type)
        return col.combine_chunks() if col.num_chunks > 1 else col.chunk(0)
    return col


def explode(col: pa.ChunkedArray | pa.Array) -> Exploded:
    arr = _as_array(col)
    lengths = pc.list_value_length(arr).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(arr)
    row = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.maximum(lengths, 0)
    starts = np.cumsum(counts) - counts
    pos = np.arange(len(flat), dtype=np.int64) - starts[row] if len(flat) else np.zeros(0, np.int64)
    if pa.types.is_floating(flat.type) or pa.types.is_integer(flat.type):
        values = flat.cast(pa.float64()).to_numpy(zero_copy_only=False)
    else:  # e.g. list<string>: only lengths matter
        values = np.full(len(flat), np.nan)
    return Exploded(values=np.asarray(values, dtype=np.float64), row=row, pos=pos, lengths=lengths)


def first_errors(ex: Exploded, threshold: float) -> np.ndarray:
    """Per row, the first step scored below ``threshold`` (-1 if none), like
    ``schemas.aggregate.first_error``: null scores are not errors."""
    out = np.full(ex.num_rows, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        mask = ex.values < threshold  # NaN compares False
    rows = ex.row[mask]
    if len(rows):
        uniq, idx = np.unique(rows, return_index=True)  # rows ascend, so idx = first hit
        out[uniq] = ex.pos[mask][idx]
    return out


# ----------------------------------------------------------------------------- small helpers


def json_number(x: Any) -> Any:
    """numpy scalar → JSON-friendly Python number (NaN → None)."""
    if x is None:
        return None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if np.isnan(x) else round(x, 6)
    return x


def describe(values: np.ndarray) -> dict[str, Any]:
    """count / mean / min / p10 / p50 / p90 / max of the non-NaN values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return {"count": 0}
    p10, p50, p90 = np.percentile(v, [10, 50, 90])
    return {
        "count": int(len(v)), "mean": json_number(v.mean()), "min": json_number(v.min()), "p10": json_number(p10),
        "p50": json_number(p50), "p90": json_number(p90), "max": json_number(v.max()),
    }


def int_histogram(values: np.ndarray) -> dict[str, int]:
    """Counts of each integer value, keys as strings (JSON objects need string keys)."""
    v = np.asarray(values, dtype=np.int64)
    if not len(v):
        return {}
    uniq, counts = np.unique(v, return_counts=True)
    return {str(int(u)): int(c) for u, c in zip(uniq, counts, strict=True)}


def score_histogram(values: np.ndarray, bins: int = SCORE_BINS) -> dict[str, list]:
    v = values[~np.isnan(values)]
    counts, edges = np.histogram(np.clip(v, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def value_counts(col: pa.ChunkedArray, null_as: str = "(none)") -> dict[str, int]:
    counts = pc.value_counts(_as_array(col).fill_null(null_as)) if len(col) else []
    items = [(c["values"].as_py(), c["counts"].as_py()) for c in counts]
    return dict(sorted(items, key=lambda kv: (-kv[1], str(kv[0]))))


def by_position(ex: Exploded, threshold: float) -> list[dict[str, Any]]:
    """Score distribution at each step position (loop over positions, not rows)."""
    ok = ~np.isnan(ex.values)
    vals, pos = ex.values[ok], np.minimum(ex.pos[ok], MAX_POSITION)
    out = []
    for p in np.unique(pos):
        v = vals[pos == p]
        d = describe(v)
        d.pop("min", None)
        d.pop("max", None)
        label = f"{MAX_POSITION}+" if p == MAX_POSITION else str(int(p))
        out.append({"position": label, **d, "below_threshold": json_number(float((v < threshold).mean()))})
    return out


def step_counts(lengths: np.ndarray) -> dict[str, Any]:
    known = lengths[lengths >= 0]
    return {
        "total": int(known.sum()),
        "per_response": describe(known.astype(np.float64)),
        "histogram": int_histogram(known),
    }


def _sum(table: pa.Table, name: str) -> Any:
    return json_number(pc.sum(table.column(name)).as_py() or 0)


# ----------------------------------------------------------------------------- summaries


def _header(loaded: Loaded) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": str(loaded.path),
        "kind": loaded.kind.name,
        "files": len(loaded.files),
        "rows": loaded.table.num_rows,
    }
    if loaded.superseded:
        out["superseded_rows"] = loaded.superseded
    if loaded.manifest is not None:
        out["run_manifest"] = loaded.manifest
    return out


def _reference_summary(table: pa.Table, threshold: float) -> dict[str, Any] | None:
    ref = explode(table.column("reference_scores"))
    labeled = ref.lengths >= 0
    if not labeled.any():
        return None
    fe = first_errors(ref, threshold)[labeled]
    return {
        "responses_labeled": int(labeled.sum()),
        "labels": _label_counts(ref.values),
        "first_error": {"none": int((fe == -1).sum()), "histogram": int_histogram(fe[fe >= 0])},
    }


def _label_counts(values: np.ndarray) -> dict[str, int]:
    v = values[~np.isnan(values)]
    uniq, counts = np.unique(v, return_counts=True)
    return {f"{float(u):g}": int(c) for u, c in zip(uniq, counts, strict=True)}


def summarize_responses(loaded: Loaded, threshold: float) -> dict[str, Any]:
    t = loaded.table
    out = _header(loaded)
    out["sources"] = value_counts(t.column("source"))
    out["steps"] = step_counts(explode(t.column("steps")).lengths)
    ref = _reference_summary(t, threshold)
    if ref is not None:
        out["reference"] = ref
    return out


def _unpriced(t: pa.Table) -> pa.ChunkedArray:
    """Rows that spent tokens but carry no cost: their model had no price (cost unknown)."""
    tokens = pc.add(t.column("input_tokens").fill_null(0), t.column("output_tokens").fill_null(0))
    return pc.and_(pc.is_null(t.column("cost_usd")), pc.greater(tokens, 0))


def _judges(t: pa.Table) -> list[dict[str, Any]]:
    """Per (judge, fingerprint): rows, status, tokens, cost, and cost per 1k scored steps."""
    steps = np.maximum(explode(t.column("scores")).lengths, 0)
    ok = pc.equal(t.column("status"), "ok").fill_null(False)
    work = pa.table({
        "judge": t.column("judge"),
        "judge_fingerprint": t.column("judge_fingerprint"),
        "ok": pc.cast(ok, pa.int64()),
        "steps": pa.array(steps),
        "input_tokens": t.column("input_tokens").fill_null(0),
        "output_tokens": t.column("output_tokens").fill_null(0),
        "cached_tokens": t.column("cached_tokens").fill_null(0),
        "cost_usd": t.column("cost_usd").fill_null(0.0),
        "unpriced": pc.cast(_unpriced(t), pa.int64()),
        "latency_s": t.column("latency_s"),
    })
    grouped = work.group_by(["judge", "judge_fingerprint"]).aggregate([
        ([], "count_all"), ("ok", "sum"), ("steps", "sum"), ("input_tokens", "sum"),
        ("output_tokens", "sum"), ("cached_tokens", "sum"), ("cost_usd", "sum"),
        ("unpriced", "sum"), ("latency_s", "mean"),
    ]).to_pylist()
    out = []
    for g in sorted(grouped, key=lambda g: (g["judge"], g["judge_fingerprint"])):
        rows, ok_rows, n_steps = g["count_all"], g["ok_sum"], g["steps_sum"]
        out.append({
            "judge": g["judge"],
            "judge_fingerprint": g["judge_fingerprint"],
            "rows": rows,
            "ok": ok_rows,
            "error": rows - ok_rows,
            "steps": n_steps,
            "input_tokens": g["input_tokens_sum"],
            "output_tokens": g["output_tokens_sum"],
            "cached_tokens": g["cached_tokens_sum"],
            # Rows that used tokens of a model with no known price: the cost is unknown, not 0.
            "cost_usd": None if g["unpriced_sum"] else json_number(g["cost_usd_sum"]),
            "cost_per_1k_steps": json_number(1000.0 * g["cost_usd_sum"] / n_steps)
            if n_steps and not g["unpriced_sum"] else None,
            "tokens_per_step": json_number((g["input_tokens_sum"] + g["output_tokens_sum"]) / n_steps)
            if n_steps else None,
            "mean_latency_s": json_number(g["latency_s_mean"]),
        })
    return out


def summarize_step_scores(loaded: Loaded, threshold: float) -> dict[str, Any]:
    t = loaded.table
    out = _header(loaded)
    out["status"] = value_counts(t.column("status"))
    errors = t.filter(pc.equal(t.column("status"), "error").fill_null(False)).column("error")
    out["top_errors"] = [{"error": k, "count": v} for k, v in list(value_counts(errors).items())[:5]]
    out["judges"] = _judges(t)
    out["tokens"] = {
        "input": _sum(t, "input_tokens"), "output": _sum(t, "output_tokens"),
        "cached": _sum(t, "cached_tokens"),
    }
    out["cost_usd"] = None if pc.any(_unpriced(t)).as_py() else _sum(t, "cost_usd")
    ex = explode(t.column("scores"))
    out["steps"] = step_counts(ex.lengths)
    scored = ex.lengths >= 0
    out["scores"] = {
        "count": int((~np.isnan(ex.values)).sum()),
        "null": int(np.isnan(ex.values).sum()),
        "mean": json_number(np.nanmean(ex.values)) if (~np.isnan(ex.values)).any() else None,
        "histogram": score_histogram(ex.values),
        "by_position": by_position(ex, threshold),
    }
    fe = first_errors(ex, threshold)[scored]
    out["first_error"] = {
        "threshold": threshold,
        "responses": int(scored.sum()),
        "none": int((fe == -1).sum()),
        "histogram": int_histogram(fe[fe >= 0]),
    }
    ref = _reference_summary(t, threshold)
    if ref is not None:
        out["reference"] = ref
    return out


def summarize_pairs(loaded: Loaded, threshold: float) -> dict[str, Any]:
    t = loaded.table
    out = _header(loaded)
    out["strategies"] = value_counts(t.column("strategy"))
    if "pairs_manifest" in loaded.extra:
        out["pairs_manifest"] = loaded.extra["pairs_manifest"]
    out["judge_fingerprints"] = value_counts(t.column("judge_fingerprint"))
    chosen = t.column("chosen_reward").to_numpy().astype(np.float64)
    rejected = t.column("rejected_reward").to_numpy().astype(np.float64)
    margin = chosen - rejected
    out["chosen_reward"] = describe(chosen)
    out["rejected_reward"] = describe(rejected)
    out["margin"] = {
        **describe(margin),
        "nonpositive": int((margin[~np.isnan(margin)] <= 0).sum()),
        "histogram": _margin_histogram(margin),
    }
    out["chosen_steps"] = step_counts(explode(t.column("chosen_scores")).lengths)
    out["rejected_steps"] = step_counts(explode(t.column("rejected_scores")).lengths)
    out["with_ref_logps"] = int(t.num_rows - t.column("ref_chosen_step_logps").null_count)
    return out


def _margin_histogram(margin: np.ndarray) -> dict[str, list]:
    m = margin[~np.isnan(margin)]
    counts, edges = np.histogram(np.clip(m, -1.0, 1.0), bins=20, range=(-1.0, 1.0))
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


SUMMARIZERS = {
    "responses": summarize_responses,
    "step_scores": summarize_step_scores,
    "pairs": summarize_pairs,
}


def summarize(loaded: Loaded, threshold: float = 0.5) -> dict[str, Any]:
    """The JSON-able summary of one input (agreement is added by the caller)."""
    return SUMMARIZERS[loaded.kind.name](loaded, threshold)
