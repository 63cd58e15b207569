"""The run folder: step_scores shards plus a ``run.json`` manifest, and the resume rule.

Layout: ``RUN_DIR/part-NNNNN.parquet`` (``part-kK-of-N-NNNNN.parquet`` when the job is split
across machines with ``--num-shards``, so machines sharing a folder never write the same name)
and ``run.json`` (``run-kK-of-N.json``). Shards are written whole and atomically
(temp + rename), so a killed process leaves only complete shards and a hidden temp file that
the next run deletes.

Resume rule: a response with an ``ok`` row is done (an ``ok`` row of another job sharing the
folder counts too). A response with only ``error`` rows is
labeled again, and its new row supersedes the old: :meth:`RunDir.compact` rewrites shards so
each response appears exactly once (the first ok row is final; otherwise the latest error row
stands). Compaction runs at the start of a run (repairing whatever a crash left) and at
its end, so the folder always converges to one row per response.

Manifest: :meth:`RunDir.record_run` is the one writer of ``run.json``, for online and batch
runs alike: the job's header, every run so far, and totals recounted from the shards, written
last and atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.atomic import atomic_write_json
from schemas.errors import UserError
from schemas.tables import (
    STEP_SCORES,
    from_rows,
    kind_of_schema,
    read_parquet,
    validate,
    write_table,
)

#: ``schema`` of run.json; a new field is fine, a changed meaning needs a new version.
RUN_SCHEMA = "stepdpo.run/1"
_ANY_PART = re.compile(r"^part-(?:k\d+-of-\d+-)?\d{5,}\.parquet$")
_ANY_MANIFEST = re.compile(r"^run(?:-k\d+-of-\d+)?\.json$")
_TEMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]+\.tmp$")  # .TARGET.RANDOM.tmp
_JOB_TAG = re.compile(r"^k\d+-of-\d+-")


class RunDir:
    #: the command that writes (and resumes) such a folder, named in its messages
    command = "stepdpo label"

    def __init__(self, path: str | os.PathLike, shard_index: int = 0, num_shards: int = 1) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"-o {self.path}: exists and is not a folder")
        self.tag = f"k{shard_index}-of-{num_shards}-" if num_shards > 1 else ""
        self.manifest_path = self.path / (f"run-k{shard_index}-of-{num_shards}.json" if num_shards > 1 else "run.json")
        self._part_re = re.compile(rf"^part-{re.escape(self.tag)}(\d{{5,}})\.parquet$")

    # -- shards ------------------------------------------------------------------------------
    def parts(self) -> list[Path]:
        """This job's finished shards, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := self._part_re.match(p.name))]
        return [p for _, p in sorted(found)]

    def next_part(self) -> Path:
        parts = self.parts()
        n = int(self._part_re.match(parts[-1].name).group(1)) + 1 if parts else 0  # type: ignore[union-attr]
        return self.path / f"part-{self.tag}{n:05d}.parquet"

    def write_shard(self, rows: Sequence[dict[str, Any]]) -> Path | None:
        """Write ``rows`` (step_scores dicts) as the next shard, atomically."""
        if not rows:
            return None
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.next_part()
        write_table(from_rows(list(rows), STEP_SCORES), path, STEP_SCORES)
        return path

    def remove_temp_files(self, stale_s: float = 3600.0) -> int:
        """Delete temp files (``.NAME.XXXX.tmp``, :func:`schemas.atomic.atomic_open`) of writers
        that were killed mid-write, in the folder and its sub-folders (``batches/``): this job's
        own at once, another job's (a ``--num-shards`` machine sharing the folder, maybe writing
        right now) only once older than ``stale_s``."""
        if not self.path.is_dir():
            return 0
        n = 0
        now = time.time()
        folders = [self.path, *(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))]
        for folder in folders:
            for p in folder.iterdir():
                m = _TEMP.match(p.name)
                if m is None or not p.is_file():
                    continue
                target = m.group(1)
                own = target == self.manifest_path.name or self._part_re.match(target) is not None or (
                    folder != self.path and (target.startswith(self.tag) if self.tag else not _JOB_TAG.match(target)))
                try:
                    if own or now - p.stat().st_mtime > stale_s:
                        p.unlink()
                        n += 1
                except FileNotFoundError:
                    continue
        return n

    def folder_parts(self) -> list[Path]:
        """Every job's finished shards in the folder (a plain run and ``--num-shards`` jobs may
        share it), in name order."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if _ANY_PART.match(p.name))

    def _read_status(self, part: Path) -> pa.Table:
        return self._read_columns(part, ["response_id", "status"])

    def _read_columns(self, part: Path, columns: list[str]) -> pa.Table:
        try:
            return read_parquet(part, columns=columns)
        except (pa.ArrowInvalid, OSError) as exc:
            try:
                tag = kind_of_schema(pq.read_schema(part)) or "not a stepdpo file"
            except (pa.ArrowInvalid, OSError):
                tag = None
            if tag is not None and tag.partition("/")[0] != STEP_SCORES.name:
                raise UserError(f"{part}: a '{tag.partition('/')[0]}' file, not a labeled shard: this folder is "
                                "not a run folder; choose another -o folder") from None
            raise UserError(f"{part}: unreadable shard ({exc}); move it away and rerun") from exc

    def statuses(self) -> dict[str, str]:
        """response_id → status of its winning row (the first ok row; else the latest error).

        A response that another job sharing the folder labeled ok counts as done too, so a plain
        rerun after a ``--num-shards`` job (or a job split another way) never labels it twice."""
        best: dict[str, str] = {}
        own = set(self.parts())
        for part in [p for p in self.folder_parts() if p not in own] + self.parts():
            if part not in own and not part.exists():
                continue  # another job's shard, compacted away just now
            t = self._read_status(part)
            for rid, status in zip(t.column("response_id").to_pylist(), t.column("status").to_pylist(), strict=True):
                if best.get(rid) != "ok":
                    best[rid] = status
        return best

    def done_ids(self) -> set[str]:
        return {rid for rid, s in self.statuses().items() if s == "ok"}

    def compact(self) -> int:
        """Drop superseded rows so each response_id appears once; returns rows dropped."""
        parts = self.parts()
        winner: dict[str, tuple[int, int, str]] = {}  # rid -> (part index, row index, status)
        tables = []
        for i, part in enumerate(parts):
            t = self._read_status(part)
            tables.append(t)
            for j, (rid, status) in enumerate(zip(t.column("response_id").to_pylist(),
                                                  t.column("status").to_pylist(), strict=True)):
                prev = winner.get(rid)
                if prev is None or prev[2] != "ok":
                    winner[rid] = (i, j, status)
        dropped = 0
        for i, (part, t) in enumerate(zip(parts, tables, strict=True)):
            rids = t.column("response_id").to_pylist()
            keep = [winner[rid][:2] == (i, j) for j, rid in enumerate(rids)]
            if all(keep):
                continue
            dropped += keep.count(False)
            if not any(keep):
                part.unlink()
                continue
            full = validate(read_parquet(part), STEP_SCORES, part)
            write_table(full.filter(_mask(keep)), part, STEP_SCORES)
        return dropped

    def read_rows(self, status: str | None = None) -> pa.Table | None:
        """All rows of this job (optionally of one status), or None when there are none."""
        parts = self.parts()
        if not parts:
            return None
        table = pa.concat_tables([validate(read_parquet(p), STEP_SCORES, p) for p in parts])
        if status is not None:
            table = table.filter(_mask([s == status for s in table.column("status").to_pylist()]))
        return table

    # -- one writer per job ---------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this job's lock while writing: a second ``stepdpo label`` (or ``generate``) of the
        same job (the same command in another terminal) would pay for every row again and its
        shards would overwrite the first one's. Jobs of other ``--shard-index`` values have their
        own lock."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): unguarded, as before
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / f".{self.manifest_path.stem}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path}: another `{self.command}` is writing this run folder "
                                "(same job); wait for it or stop it, then rerun") from None
            yield

    # -- manifest ----------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text("utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.manifest_path}: not valid JSON ({exc})") from exc

    def totals(self) -> dict[str, Any]:
        """Counts, tokens and cost over every row of this job now in the folder."""
        parts = self.parts()
        totals: dict[str, Any] = {"rows": 0, "ok": 0, "error": 0, "input_tokens": 0, "output_tokens": 0,
                                  "cached_tokens": 0, "cost_usd": 0.0, "shards": len(parts)}
        if not parts:  # a new run's first checkpoint: before its first request
            return totals
        import pyarrow.compute as pc  # here, not at the top: ~20 ms of start-up before the first request

        unknown = False
        for part in parts:
            t = self._read_columns(part, ["status", "input_tokens", "output_tokens", "cached_tokens", "cost_usd"])
            totals["rows"] += t.num_rows
            # No Python scalar meets an Arrow array here: pyarrow would import pandas (~0.17 s) for it.
            counts = {c["values"]: c["counts"] for c in pc.value_counts(t.column("status")).to_pylist()}
            totals["ok"] += counts.get("ok", 0)
            for col in ("input_tokens", "output_tokens", "cached_tokens"):
                totals[col] += pc.sum(t.column(col)).as_py() or 0
            totals["cost_usd"] += pc.sum(t.column("cost_usd")).as_py() or 0.0
            # Rows with tokens but no cost: token counts are never negative, so a sum > 0 finds them.
            unpriced = t.filter(pc.is_null(t.column("cost_usd")))
            unknown = unknown or sum(pc.sum(unpriced.column(c)).as_py() or 0 for c in ("input_tokens", "output_tokens")) > 0
        totals["error"] = totals["rows"] - totals["ok"]
        # Tokens of a model with no known price: the cost is unknown (None), never a made-up 0.
        totals["cost_usd"] = None if unknown else round(totals["cost_usd"], 6)
        return totals

    def record_run(self, header: Mapping[str, Any], this_run: Mapping[str, Any], *,
                   recount: bool = True) -> dict[str, Any]:
        """Write ``run.json``: ``header`` (input, config, judge, price, mode, batches…), the runs
        before this one plus ``this_run`` (its ``state`` becomes the job's), the totals of the
        shards now in the folder, and ``spend``: what every run cost, killed ones included.
        Returns what it wrote.

        The one writer of the manifest. A run that records itself more than once (the same
        ``started_at``: the engine checkpoints itself as ``running`` while it goes) replaces its
        own entry instead of adding another; ``recount=False`` keeps the last totals instead of
        reading every shard again. A new run finds any earlier run still marked ``running``
        dead (it holds the job's lock), and marks it ``killed``.
        """
        previous = self.read_manifest() or {}
        runs = [r for r in previous.get("runs", []) if isinstance(r, dict)]
        if runs and this_run.get("started_at") is not None and runs[-1].get("started_at") == this_run["started_at"]:
            runs[-1] = dict(this_run)
        else:
            runs = [{**r, "state": "killed"} if r.get("state") == "running" else r for r in runs]
            runs.append(dict(this_run))
        totals = self.totals() if recount or not isinstance(previous.get("totals"), dict) else previous["totals"]
        out = {"schema": RUN_SCHEMA, **header, "state": this_run.get("state"), "totals": totals,
               "spend": spend_of(runs), "runs": runs}
        atomic_write_json(self.manifest_path, out, default=str)
        return out

    def _all_manifests(self) -> list[dict[str, Any]]:
        """This job's manifest and those of every other job sharing the folder."""
        own = self.read_manifest()
        found = [own] if own else []
        if self.path.is_dir():
            for f in sorted(self.path.glob("run*.json")):
                if f != self.manifest_path and _ANY_MANIFEST.match(f.name):
                    try:
                        found.append(json.loads(f.read_text("utf-8")))
                    except (OSError, ValueError):
                        continue  # another job's manifest being replaced; its shards still count
        return [m for m in found if isinstance(m, dict)]

    def check_judge(self, judge: str, fingerprint: str) -> None:
        """Refuse to mix two judges' rows in one folder (resume would skip the wrong rows)."""
        for manifest in self._all_manifests():
            if manifest.get("judge_fingerprint") not in (None, fingerprint):
                raise UserError(
                    f"{self.path} holds labels from judge {manifest.get('judge')} "
                    f"(fingerprint {manifest.get('judge_fingerprint')}), not {judge} ({fingerprint}); "
                    "the model, template or decoding options differ: write to a new -o folder"
                )
        parts = self.parts()
        if parts:
            t = self._read_columns(parts[0], ["judge_fingerprint"])
            found = set(t.column("judge_fingerprint").to_pylist())
            if found - {fingerprint}:
                raise UserError(
                    f"{parts[0]}: rows from judge fingerprint {sorted(found)[0]}, not {fingerprint}; "
                    "write to a new -o folder"
                )


def _mask(keep: Sequence[bool]) -> pa.BooleanArray:
    """``keep`` as an Arrow filter mask, built from its bits: ``pa.array`` of a Python list
    makes pyarrow import pandas (~0.17 s) the first time."""
    bits = int("".join("1" if k else "0" for k in reversed(keep)) or "0", 2)
    data = pa.py_buffer(bits.to_bytes((len(keep) + 7) // 8, "little"))
    return pa.Array.from_buffers(pa.bool_(), len(keep), [None, data])


def spend_of(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What every run into the folder spent, killed runs included (as far as their last
    checkpoint): requests, tokens and dollars (None when a run's model had no price)."""
    costs = [r.get("cost_usd") for r in runs]
    return {"runs": len(runs), "killed_runs": sum(r.get("state") == "killed" for r in runs),
            "requests": sum(int(r.get("requests") or 0) for r in runs),
            "input_tokens": sum(int(r.get("input_tokens") or 0) for r in runs),
            "output_tokens": sum(int(r.get("output_tokens") or 0) for r in runs),
            "cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6)}
