"""Where generations live: the output folder (responses shards + run.json) and the cache.

The folder is the labeling engine's run folder (:class:`labeler.engine.rundir.RunDir`: shards
written whole and atomically, a killed writer's temp files removed on the next run, one writer
per folder, the manifest written last) holding ``responses`` shards instead of ``step_scores``.
A sample's identity is its ``generation_id`` (problem, prefix it continues, sample index),
kept in each row's meta: a rerun skips every id already in a shard, so kill -9 and rerun give
every (problem, sample) exactly once, and ``-n 8`` after ``-n 4`` draws only samples 4-7.
A row's ``response_id`` is the id of its solution (problem + steps: schemas.ids), not of the
draw: samples that repeat one another word for word share it and are labeled once (the folder's
totals count both; the generate command says so).

The cache is a diskcache ``FanoutCache`` beside the judge cache (``$STEPDPO_CACHE_DIR/generate``
or ``~/.cache/stepdpo/generate``), eviction off, keyed by sha256 of the canonical JSON of
(backend fingerprint, rendered prompt, sampling parameters, sample index, seed). Values are JSON
text stored through the judge cache's ``JsonTextDisk`` (str only; a pickled entry is refused on
fetch, never loaded); a value that is not one of ours is a miss. A
sample that arrived but was not yet in a shard when the process died comes back from here
for free.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from labeler.engine.cache import JsonTextDisk, Refused, default_cache_dir
from labeler.engine.rundir import RunDir
from labeler.sources.generation.base import Generation, Generator, GenRequest, Sampling
from schemas.errors import UserError
from schemas.ids import canonical_json, sha256_hex
from schemas.tables import RESPONSES, from_rows, kind_of_schema, read_parquet, write_table

GENERATE_SCHEMA = "stepdpo.generate/1"


class GenerationDir(RunDir):
    """A run folder of ``responses`` shards."""

    command = "stepdpo generate"

    def write_shard(self, rows: Sequence[dict[str, Any]]) -> Path | None:
        if not rows:
            return None
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.next_part()
        write_table(from_rows(list(rows), RESPONSES), path, RESPONSES)
        return path

    def done_ids(self) -> set[str]:
        """``generation_id`` of every sample already in a finished shard."""
        return self._scan()[0]

    def _scan(self) -> tuple[set[str], set[str]]:
        """``generation_id`` and ``response_id`` of every sample in a finished shard."""
        done: set[str] = set()
        solutions: set[str] = set()
        for part in self.parts():
            try:
                schema = pq.read_schema(part)
                tag = kind_of_schema(schema)
                if tag is None or tag.partition("/")[0] != RESPONSES.name:
                    raise UserError(f"{part}: a '{(tag or 'foreign').partition('/')[0]}' file, not generated "
                                    "responses; choose another -o folder")
                table = read_parquet(part, columns=["response_id", "meta"])  # no pandas
                metas = table.column("meta").to_pylist()
                solutions.update(table.column("response_id").to_pylist())
            except (OSError, ValueError) as exc:
                if isinstance(exc, UserError):
                    raise
                raise UserError(f"{part}: unreadable shard ({exc}); move it away and rerun") from None
            for meta in metas:
                gid = json.loads(meta or "{}").get("generation_id")
                if gid:
                    done.add(gid)
        return done, solutions

    def totals(self) -> dict[str, Any]:
        """What the folder holds now (``run.json``'s totals, recounted by ``record_run``).

        ``distinct_solutions`` counts response ids: a sample whose problem and steps (prefix
        included) repeat another's word for word shares its response_id, the id of a solution
        (schemas.ids.response_id), so ``label`` writes one row for both."""
        samples, solutions = self._scan()
        return {"samples": len(samples), "distinct_solutions": len(solutions), "shards": len(self.parts())}

    def check_identity(self, identity: str, described: str) -> None:
        """Refuse to mix two configurations' samples in one folder (only -n may change)."""
        manifest = self.read_manifest()
        if manifest is None:
            if self.parts():
                raise UserError(f"{self.path} holds shards but no run.json; it is not a generate folder "
                                "(or was written by another command): choose another -o folder")
            return
        if manifest.get("schema") != GENERATE_SCHEMA:
            raise UserError(f"{self.path} is a {manifest.get('schema', 'foreign')} folder, not a generate one; "
                            "choose another -o folder")
        if manifest.get("identity") != identity:
            raise UserError(f"{self.path} holds samples from {manifest.get('described', 'another configuration')}, "
                            f"not {described}; the backend, template, input or sampling differ: write to a new -o folder")


def generation_key(generator: Generator, request: GenRequest, sampling: Sampling) -> str:
    return sha256_hex({"kind": "generation", "fingerprint": generator.fingerprint(),
                       "request": request.cache_view(), "sampling": sampling.as_dict()})


def default_generation_cache_dir() -> Path:
    env = os.environ.get("STEPDPO_CACHE_DIR")
    return (Path(env).expanduser() / "generate") if env else default_cache_dir().parent / "generate"


class GenerationCache:
    """``get(key) -> Generation | None`` and ``put(key, generation)``."""

    def __init__(self, directory: str | os.PathLike | None = None, shards: int = 8) -> None:
        from diskcache import FanoutCache

        self.directory = Path(directory).expanduser() if directory else default_generation_cache_dir()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._cache = FanoutCache(str(self.directory), shards=shards, timeout=10, disk=JsonTextDisk,
                                      eviction_policy="none", size_limit=2**62)
        except Exception as exc:  # sqlite3.Error, OSError: one line, before any request
            why = "it is a file, not a folder" if self.directory.is_file() else f"cannot open it ({exc})"
            raise UserError(f"generation cache {self.directory}: {why}; choose another with "
                            "--cache-dir DIR or run with --no-cache") from None
        self.hits = 0
        self.refused = 0

    def get(self, key: str) -> Generation | None:
        try:
            data = self._cache.get(key, default=None, retry=True)
        except Exception as exc:  # a pickled entry written by someone else, a locked shard
            self._refuse(key, exc)
            return None
        if data is None:
            return None
        try:
            if isinstance(data, Refused):  # pickled or binary: never loaded
                raise ValueError(str(data))
            if not isinstance(data, str):
                raise TypeError(f"a {type(data).__name__}, not JSON text")
            generation = Generation.from_json(json.loads(data))
        except Exception as exc:
            self._refuse(key, exc)
            return None
        self.hits += 1
        return generation

    def _refuse(self, key: str, exc: BaseException) -> None:
        self.refused += 1
        if self.refused == 1:
            print(f"stepdpo: warning: generation cache entry {key[:12]}… is not ours ({type(exc).__name__}); "
                  "ignored and replaced by a fresh sample", file=sys.stderr)

    def put(self, key: str, generation: Generation) -> bool:
        try:
            return bool(self._cache.set(key, canonical_json(generation.to_json()), retry=True))
        except Exception as exc:  # disk full: the sample still reaches the shard
            print(f"stepdpo: warning: generation cache: cannot store ({exc})", file=sys.stderr)
            return False

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
