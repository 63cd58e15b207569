"""Whole folders: written aside and swapped in, read only when their manifest says they are whole.

A folder of shards (pairs, precomputed pairs) is one result: a reader that trains on half of it,
or on new shards mixed with an older run's, gets silently wrong numbers. Two rules prevent that:

- Writers build the folder under a hidden sibling (:func:`staged_folder`), write the manifest
  last, and swap the finished folder in with a rename. A killed writer leaves the old folder
  as it was (or none) plus a hidden staging folder that the next writer removes.
- Readers call :func:`require_complete`: the manifest must exist, be valid JSON, not say
  ``"complete": false``, and, when it lists its ``shards``, list exactly the ``*.parquet``
  files present. An older folder (a manifest without ``complete``) is accepted when its shard
  list matches.

Run folders (``label``, ``generate``, ``combine``) are written in place, shard by shard, so
they can resume; their ``run.json`` says whether the last run finished, and readers call
:func:`require_finished_run` (one rule for every command that reads one).

Standard library (and pyarrow, for a row count), as everything in ``schemas``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.atomic import atomic_write_json
from schemas.errors import UserError

COMPLETE_KEY = "complete"  # True once every shard is written; False (or absent folder) otherwise
SHARDS_KEY = "shards"  # the shard file names the manifest vouches for
_STAGING = ".staging-"
_OLD = ".old-"


def shard_names(folder: str | os.PathLike) -> list[str]:
    """The ``*.parquet`` files a reader of ``folder`` would pick up (hidden files excluded)."""
    return sorted(p.name for p in Path(folder).glob("*.parquet") if not p.name.startswith("."))


def read_manifest(folder: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """``folder/name`` parsed, or None when absent; a damaged manifest is a one-line error."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a manifest (a JSON object is expected)")
    return data


def require_complete(
    path: str | os.PathLike, names: str | Sequence[str], fix: str = "rerun the command that wrote it",
    required: bool = True,
) -> dict[str, Any] | None:
    """Refuse a folder whose manifest is missing, marked incomplete, or lists other shards.

    ``names`` are the manifest file names that may vouch for the folder (e.g. ``"pairs.json"``,
    or ``("pairs.json", "precompute.json")``): at least one must be present, and every present
    one must be complete. Returns the first present manifest. ``path`` naming a single file
    returns None: a file is written whole (temp + rename) on its own. ``required=False``
    accepts a folder with none of them (a model folder that another tool saved), returning None.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    names = [names] if isinstance(names, str) else list(names)
    found = [(n, m) for n in names if (m := read_manifest(path, n)) is not None]
    if not found and not required:
        return None
    if not found:
        raise UserError(f"{path}: no {' or '.join(names)} manifest, so the folder is not known to be "
                        f"complete (a killed or unfinished run?); {fix}")
    present = shard_names(path)
    for name, manifest in found:
        if manifest.get(COMPLETE_KEY) is False:
            raise UserError(f"{path / name}: the run that wrote this folder did not finish; {fix}")
        listed = manifest.get(SHARDS_KEY)
        if not isinstance(listed, list):
            continue
        extra = sorted(set(present) - set(map(str, listed)))
        missing = sorted(set(map(str, listed)) - set(present))
        if extra:
            raise UserError(f"{path}: {len(extra)} shard(s) not listed in {name} ({extra[0]}"
                            f"{', …' if len(extra) > 1 else ''}): files of another run are mixed "
                            f"in; {fix}")
        if missing:
            raise UserError(f"{path}: {len(missing)} shard(s) listed in {name} are missing "
                            f"({missing[0]}{', …' if len(missing) > 1 else ''}); {fix}")
    return found[0][1]


def write_manifest(folder: str | os.PathLike, name: str, data: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest last and atomically, vouching for the folder's current shards;
    returns what was written."""
    body = {**data, COMPLETE_KEY: True, SHARDS_KEY: shard_names(folder)}
    atomic_write_json(Path(folder) / name, body)
    return body


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_leftovers(dest: str | os.PathLike) -> int:
    """Delete hidden staging/old siblings of ``dest`` left by killed writers (not live ones)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return 0
    n = 0
    for p in dest.parent.glob(f".{dest.name}.*"):
        rest = p.name[len(dest.name) + 1:]
        for marker in (_STAGING, _OLD):
            if rest.startswith(marker) and p.is_dir():
                pid = rest[len(marker):].partition("-")[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
    return n


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def staged_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``dest`` to write into; on a clean exit it replaces
    ``dest`` (renames: a reader sees the old folder or the new one, never a mix), on an error it
    is deleted and ``dest`` is untouched.

    The swap is two renames (old aside, new in); a crash between them leaves no ``dest`` and the
    old folder in a hidden sibling, which the next writer deletes. Whether ``dest`` may be
    replaced at all is the caller's decision (e.g. ``--overwrite``).
    """
    # Absolute ("-o ." has no name to hide a sibling under) and through a symlink: the swap
    # happens where the folder really is, and the link keeps pointing at it.
    dest = Path(os.path.realpath(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = dest.parent / f".{dest.name}{_STAGING}{tag}"
    staging.mkdir()
    try:
        yield staging
        _fsync_dir(staging)  # its files were fsynced by their (atomic) writers
        old = dest.parent / f".{dest.name}{_OLD}{tag}"
        if dest.exists():
            os.rename(dest, old)
        os.rename(staging, dest)
        _fsync_dir(dest.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# Files that mark a folder as some command's result: writing another result into it would mix
# the two (readers glob ``*.parquet``; a model folder would be overwritten).
RESULT_MARKERS = {
    "run.json": "a label or generate run",
    "pairs.json": "a pairs folder",
    "precompute.json": "a precomputed pairs folder",
    "summary.json": "an eval result",
    "reward_model.json": "a reward model",
    "stepwise_config.json": "a stepwise-DPO model",
    "config.json": "a model",
}


def refuse_other_result(path: str | os.PathLike, flag: str, own: Sequence[str] = ()) -> None:
    """Refuse an output folder that is a file or holds another command's result.

    ``own`` names the files the caller itself writes there (its manifest, its Parquet files):
    those mark the caller's own earlier result, which it may resume or replace. Anything else in
    :data:`RESULT_MARKERS`, or a ``*.parquet`` file not in ``own``, is a one-line error before
    any work, so a result is never written into a run, a pairs folder or a model.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a folder; give a folder name")
    if not path.is_dir():
        return
    for name, what in RESULT_MARKERS.items():
        if name not in own and (path / name).is_file():
            raise UserError(f"{flag} {path}: holds {what} ({name}); writing here would mix two results: "
                            "choose another folder")
    shards = [n for n in shard_names(path) if n not in own]
    if shards:
        raise UserError(f"{flag} {path}: holds Parquet files of another result ({shards[0]}"
                        f"{', …' if len(shards) > 1 else ''}); choose another folder")


def refuse_model_output(out: str | os.PathLike, base: str, own: Sequence[str]) -> None:
    """:func:`refuse_other_result` for a command that saves a model (``own``: its manifest and
    ``config.json``), plus the base model's own folder: saving there would replace the model
    being trained from."""
    out = Path(out)
    if base and Path(base).is_dir() and out.is_dir() and out.resolve() == Path(base).resolve():
        raise UserError(f"--output_dir {out}: is the base model's folder (--model_name_or_path); saving there "
                        "would replace it: choose another folder")
    refuse_other_result(out, "--output_dir", own=own)


# -- run folders (label, generate, combine): finished or not ---------------------------------------
# A run folder is written in place, shard by shard (resumable), so it cannot be swapped in whole;
# its manifest says instead whether the last run into it finished. Readers refuse one that did
# not, unless the user asks for the rows it has (ALLOW_INCOMPLETE).

ALLOW_INCOMPLETE = "--allow-incomplete"
LIVE = "being written now"  # a writer holds the folder's lock
FINISHED = "finished"  # the one state in which a run folder holds everything its command asked for
_RUN_MANIFEST = re.compile(r"^run(?:-k(\d+)-of-(\d+))?\.json$")
_RUN_SHARD = re.compile(r"^part-(?:k\d+-of-\d+-)?\d{5,}\.parquet$")
# run.json ``schema`` -> the command that writes such a folder (the one that finishes it)
_WRITERS = {"stepdpo.generate": "stepdpo generate", "stepdpo.run": "stepdpo label"}


@dataclass(frozen=True)
class Unfinished:
    """Why a run folder is not whole: its folder, the state its manifest gives (``shards but no run.json``,
    ``running``, ``interrupted``, …), the command that finishes it, the rows on disk, and the exact
    command line of the run, when its manifest records one (``rerun``, credentials removed)."""

    folder: Path
    state: str
    command: str
    rows: int
    rerun: str = ""

    def message(self) -> str:
        if self.state == LIVE:
            return (f"{self.folder}: a `{self.command}` is writing it right now; wait for it to finish, or pass "
                    f"{ALLOW_INCOMPLETE} to use the {self.rows} row(s) it has so far")
        state = self.state if self.state != "running" else "running: killed, or still being written"
        rerun = self.rerun or f"{self.command} ... -o {self.folder}"
        return (f"{self.folder}: its last run did not finish (state: {state}); rerun `{rerun}` to finish it, or "
                f"pass {ALLOW_INCOMPLETE} to use the {self.rows} row(s) it has")


def _writer_live(folder: Path, manifest_name: str) -> bool:
    """True while a writer holds the folder's lock (``labeler.engine.rundir.RunDir.locked``)."""
    try:
        import fcntl
    except ImportError:
        return False
    lock = folder / f".{Path(manifest_name).stem}.lock"
    if not lock.is_file():
        return False
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def unfinished_run(path: str | os.PathLike) -> Unfinished | None:
    """None when ``path`` is a file, not a run folder, or a run folder whose every job's last run
    finished; otherwise what is wrong with it.

    A run folder holds ``run.json`` (or ``run-kK-of-N.json``, one per ``--num-shards`` job) and
    ``part-*.parquet`` shards. Unfinished: a manifest whose ``state`` is not ``finished``
    (``running`` after a kill -9, ``interrupted``, ``aborted``, ``budget``, ``pending`` batches), a
    job of an ``N``-job split with no manifest, or run shards with no manifest at all (a label run
    killed before its first manifest). A manifest with no ``state`` (older, or written by hand)
    and a folder of other Parquet files (a dataset saved by another tool) give no such evidence.
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    entries = list(folder.iterdir())
    manifests = {p.name: p for p in entries if _RUN_MANIFEST.match(p.name) and p.is_file()}
    shards = [p for p in entries if _RUN_SHARD.match(p.name)]
    if not manifests and not shards:
        return None
    if not manifests and any((folder / name).is_file() for name in RESULT_MARKERS if name != "run.json"):
        return None  # another command's result: its reader's own checks speak

    def rows() -> int:  # read only for the answer "unfinished": a finished folder costs no footer reads
        return sum(_num_rows(p) for p in shards)

    if not manifests:
        command = _SHARD_WRITERS.get(_shard_kind(sorted(shards)[0]) or "")
        return None if command is None else Unfinished(folder, "shards but no run.json", command, rows())
    jobs = {m.group(2) for n in manifests if (m := _RUN_MANIFEST.match(n)) and m.group(2)}
    command = "stepdpo label"
    for name in sorted(manifests):
        manifest = read_manifest(folder, name) or {}
        command = _WRITERS.get(str(manifest.get("schema", "")).partition("/")[0], command)
        if manifest.get("state") is None:
            continue  # an older or hand-written manifest: no word of an unfinished run
        state = str(manifest["state"])
        if state == "running" and _writer_live(folder, name):
            state = LIVE
        if state != FINISHED:
            rerun = manifest.get("rerun") if isinstance(manifest.get("rerun"), str) else ""
            return Unfinished(folder, state if name == "run.json" else f"{state} in {name}", command, rows(), rerun)
    for n in jobs:  # a split job: every machine's manifest must be there
        missing = [k for k in range(int(n)) if f"run-k{k}-of-{n}.json" not in manifests]
        if missing:
            return Unfinished(folder, f"job k{missing[0]} of {n} has no run-k{missing[0]}-of-{n}.json", command, rows())
    return None


_SHARD_WRITERS = {"responses": "stepdpo generate", "step_scores": "stepdpo label"}


def _shard_kind(part: Path) -> str | None:
    """The kind stamped in a shard (``responses``, ``step_scores``…), None when unreadable or
    unstamped."""
    try:
        import pyarrow.parquet as pq

        from schemas.tables import kind_of_schema

        tag = kind_of_schema(pq.read_schema(part))
    except (OSError, ValueError):
        return None
    return tag.partition("/")[0] if tag else None


def _num_rows(part: Path) -> int:
    try:
        import pyarrow.parquet as pq

        return pq.ParquetFile(part).metadata.num_rows
    except (OSError, ValueError):
        return 0


def require_finished_run(path: str | os.PathLike, allow_incomplete: bool = False) -> Unfinished | None:
    """Refuse (UserError) a run folder whose last run did not finish, naming the fix; with
    ``allow_incomplete`` print a one-line warning with its row count instead and go on.
    Returns what was wrong (None: a finished run, a file, or not a run folder)."""
    found = unfinished_run(path)
    if found is None:
        return None
    if not allow_incomplete:
        raise UserError(found.message())
    print(f"stepdpo: warning: {found.folder}: its last run did not finish "
          f"(state: {found.state}); using the {found.rows} row(s) it has ({ALLOW_INCOMPLETE})", file=sys.stderr)
    return found
