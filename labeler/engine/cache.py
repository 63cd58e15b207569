"""The judge cache: a paid answer is never paid for twice.

A diskcache ``FanoutCache`` (SQLite shards, safe across processes) with eviction off, because
an evicted entry is money spent again. Keys are the sha256 of the canonical JSON of (judge
fingerprint, prompt, steps), so any change to the model, template or decoding parameters misses,
and the same solution under the same judge hits from any run folder. Values are JSON text, never
pickles, and hold only the judge's answer and usage: no error is cached (a failure must be
retried, not replayed) and no request headers or keys ever reach it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labeler.judges.base import Verdict
from schemas.ids import canonical_json, sha256_hex

ENV_VAR = "STEPDPO_CACHE_DIR"


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
    data: dict[str, Any] = json.loads(text)
    return Verdict(
        scores=data["scores"],
        raw=data.get("raw", ""),
        input_tokens=int(data.get("input_tokens", 0)),
        output_tokens=int(data.get("output_tokens", 0)),
        cached_tokens=int(data.get("cached_tokens", 0)),
    )


class JudgeCache:
    """``get(key) -> Verdict | None`` and ``put(key, verdict)``; build keys with :func:`cache_key`."""

    def __init__(self, directory: str | os.PathLike | None = None, shards: int = 8) -> None:
        from diskcache import FanoutCache

        self.directory = Path(directory) if directory else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        # timeout: how long one SQLite shard may be locked by another process before a call
        # gives up; FanoutCache then returns "miss"/"not stored" instead of raising, so keep it
        # generous.
        self._cache = FanoutCache(str(self.directory), shards=shards, timeout=10,
                                  eviction_policy="none", size_limit=2**62)
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Verdict | None:
        text = self._cache.get(key, default=None, retry=True)
        if text is None:
            self.misses += 1
            return None
        self.hits += 1
        return verdict_from_json(text)

    def put(self, key: str, verdict: Verdict) -> bool:
        """Store an answer; refuses errors and answers without scores."""
        if verdict.error is not None or not verdict.scores:
            return False
        return bool(self._cache.set(key, verdict_to_json(verdict), retry=True))

    def __len__(self) -> int:
        return len(self._cache)

    def values(self) -> list[str]:
        """Every stored value (tests check that no secret ever reached the cache)."""
        return [self._cache[k] for k in list(self._cache)]

    def close(self) -> None:
        self._cache.close()
