"""The judge cache: a paid answer is never paid for twice, and nothing read from it runs code.

A diskcache ``FanoutCache`` (SQLite shards, safe across processes) with eviction off, because
an evicted entry is money spent again. Keys are the sha256 of the canonical JSON of (judge
fingerprint, prompt, steps), so any change to the model, template or decoding parameters misses,
and the same solution under the same judge hits from any run folder. Values hold only the
judge's answer and usage: no error is cached (a failure must be retried, not replayed) and no
request headers or keys ever reach it.

Values are JSON text and nothing else. diskcache pickles by default and its ``JSONDisk`` still
unpickles an entry that was written in pickle mode, so a cache folder shared with others (a
``STEPDPO_CACHE_DIR`` on a team disk) could run anyone's code. :class:`JsonTextDisk` stores
``str`` only and, on fetch, refuses every mode but text: a pickled (or binary) entry is never
loaded, it is a miss with a warning, and the fresh answer replaces it.

Faults: a cache folder that cannot be opened (read-only, corrupt, no space) is a one-line
:class:`~schemas.errors.UserError` before any request; a store that fails mid-run (disk full)
warns once and the run goes on, because the answer still reaches the run folder.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from diskcache import Disk
from diskcache.core import MODE_RAW, MODE_TEXT, UNKNOWN

from labeler.judges.base import Verdict
from schemas.errors import UserError
from schemas.ids import canonical_json, sha256_hex

ENV_VAR = "STEPDPO_CACHE_DIR"
_MODES = {1: "raw", 2: "binary", 3: "text", 4: "pickle"}


def default_cache_dir() -> Path:
    """``$STEPDPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/stepdpo/judge``, else ``~/.cache/stepdpo/judge``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stepdpo" / "judge"


def cache_key(fingerprint: str, prompt: str, steps: Sequence[str],
              inputs: dict[str, Any] | None = None) -> str:
    """The key of one judge answer. ``inputs`` are the other fields of the response that the
    judge's answer depends on (:meth:`labeler.judges.base.Judge.cache_inputs`: the gold answer
    of the rule-based check, the human labels of ``reference``); without them the key is the
    (fingerprint, prompt, steps) hash."""
    key: dict[str, Any] = {"fingerprint": fingerprint, "prompt": prompt, "steps": list(steps)}
    if inputs:
        key["inputs"] = inputs
    return sha256_hex(key)


def verdict_to_json(verdict: Verdict) -> str:
    return canonical_json({
        "scores": list(verdict.scores),
        "raw": verdict.raw,
        "input_tokens": verdict.input_tokens,
        "output_tokens": verdict.output_tokens,
        "cached_tokens": verdict.cached_tokens,
    })


def verdict_from_json(text: str) -> Verdict:
    """The Verdict in a cache value; ValueError for anything that is not one of ours."""
    data: Any = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("scores"), list):
        raise ValueError("not a judge answer (no 'scores' list)")
    scores = data["scores"]
    for s in scores:
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))
                              or not math.isfinite(s) or not 0.0 <= s <= 1.0):
            raise ValueError(f"score {s!r} is not a number in [0, 1]")
    raw = data.get("raw", "")
    return Verdict(
        scores=scores,
        raw=raw if isinstance(raw, str) else "",
        input_tokens=int(data.get("input_tokens", 0)),
        output_tokens=int(data.get("output_tokens", 0)),
        cached_tokens=int(data.get("cached_tokens", 0)),
    )


class Refused:
    """What :class:`JsonTextDisk` returns instead of an entry it will not load."""

    def __init__(self, mode: int) -> None:
        self.mode = mode

    def __str__(self) -> str:
        return f"stored in {_MODES.get(self.mode, str(self.mode))} mode, not as JSON text"


class JsonTextDisk(Disk):
    """A diskcache Disk that stores ``str`` values and keys only and never unpickles.

    ``fetch`` returns :class:`Refused` for a pickled or binary value and ``get`` the same for a
    pickled key (met when iterating), whatever wrote them."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"judge cache keys are str, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if raw and type(key) is str:
            return key
        return Refused(4 if not raw else 2)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if type(value) is not str or read:
            raise TypeError(f"judge cache values are JSON text, not {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == MODE_RAW and type(value) is str:
            return value
        if mode == MODE_TEXT and not read:
            return super().fetch(mode, filename, value, read)
        return Refused(mode)


def _warn(message: str) -> None:
    print(f"stepdpo: warning: {message}", file=sys.stderr, flush=True)


class JudgeCache:
    """``get(key) -> Verdict | None`` and ``put(key, verdict)``; build keys with :func:`cache_key`.

    ``warn`` receives each kind of problem once (an entry refused, a failed store); counts are
    in :attr:`refused` and :attr:`store_errors`."""

    def __init__(self, directory: str | os.PathLike | None = None, shards: int = 8,
                 warn: Callable[[str], None] = _warn) -> None:
        from diskcache import FanoutCache

        self.directory = Path(directory) if directory else default_cache_dir()
        self.warn = warn
        try:
            if self.directory.exists() and not self.directory.is_dir():
                raise NotADirectoryError(f"{self.directory} is not a folder")
            self.directory.mkdir(parents=True, exist_ok=True)
            # timeout: how long one SQLite shard may be locked by another process before a call
            # gives up; FanoutCache then returns "miss"/"not stored" instead of raising, so keep it
            # generous.
            self._cache = FanoutCache(str(self.directory), shards=shards, timeout=10, disk=JsonTextDisk,
                                      eviction_policy="none", size_limit=2**62)
        except (sqlite3.Error, OSError) as exc:
            how = ("is read-only for this user" if self.directory.is_dir() and not os.access(self.directory, os.W_OK)
                   else "is a file, not a folder" if self.directory.is_file()
                   else f"cannot be opened ({getattr(exc, 'strerror', None) or exc}): corrupt, or the disk full?")
            raise UserError(f"judge cache {self.directory} {how}; move it away, choose another with --cache-dir "
                            f"DIR (or ${ENV_VAR}), or run with --no-cache") from None
        self.hits = 0
        self.misses = 0
        self.refused = 0
        self.store_errors = 0
        self._warned: set[str] = set()

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self.warn(message)

    def get(self, key: str) -> Verdict | None:
        try:
            value = self._cache.get(key, default=None, retry=True)
        except (sqlite3.Error, OSError) as exc:
            self._warn_once("read", f"judge cache {self.directory}: cannot read ({exc}); asking the judge instead")
            value = None
        if value is None:
            self.misses += 1
            return None
        try:
            if isinstance(value, Refused):
                raise ValueError(str(value))
            verdict = verdict_from_json(value)
        except (ValueError, TypeError) as exc:
            self.refused += 1
            self.misses += 1
            self._warn_once("refused", f"judge cache {self.directory}: entry {key[:12]}… is not a stepdpo "
                                       f"answer ({exc}); ignored, never loaded, and replaced by a fresh answer")
            return None
        self.hits += 1
        return verdict

    def put(self, key: str, verdict: Verdict) -> bool:
        """Store an answer; refuses errors and answers without scores. A store that fails (disk
        full, read-only) returns False after one warning: the answer still reaches the shards."""
        if verdict.error is not None or not verdict.scores:
            return False
        try:
            return bool(self._cache.set(key, verdict_to_json(verdict), retry=True))
        except (sqlite3.Error, OSError) as exc:
            self.store_errors += 1
            self._warn_once("store", f"judge cache {self.directory}: cannot store answers ({exc}); they still "
                                     "go to the run folder, but a run into another folder would pay for them again")
            return False

    def put_many(self, answers: Sequence[tuple[str, Verdict]]) -> int:
        """Store ``answers`` in one transaction: one SQLite commit per shard of the cache, not
        one per answer. Returns how many were stored. If the transaction fails (a disk filling
        up), each answer is tried alone, so as many as fit are kept, with :meth:`put`'s one
        warning; the answers still reach the shards either way."""
        good = [(key, verdict_to_json(v)) for key, v in answers if v.error is None and v.scores]
        if not good:
            return 0
        try:
            with self._cache.transact(retry=True):
                for key, text in good:
                    self._cache.set(key, text, retry=True)
            return len(good)
        except (sqlite3.Error, OSError):
            return sum(self.put(key, v) for key, v in answers)

    def __len__(self) -> int:
        return len(self._cache)

    def values(self) -> list[str]:
        """Every stored value that is JSON text (tests check that no secret ever reached the cache)."""
        out = []
        for k in list(self._cache):
            if isinstance(k, str):
                value = self._cache.get(k)
                if isinstance(value, str):
                    out.append(value)
        return out

    def close(self) -> None:
        self._cache.close()
