"""Atomic file writes: a reader (or a rerun after kill -9) sees the old file or the new one,
never half of one. Every file we write whole — shards, run.json, pairs.json, batch records —
goes through here: temp file in the same folder, fsync, rename. The file gets the mode any
new file gets (0666 less the umask), not the 0600 of a temp file: a run folder is shared.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no window in which
    another thread creates a world-writable file)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` as JSON (sorted keys, trailing newline) atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=indent, sort_keys=True, default=default, ensure_ascii=False)
        fh.write("\n")
    return Path(path)
