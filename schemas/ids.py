"""Stable ids and hashes.

Ids must not change between runs or machines, because resume, sharding across machines and
the judge cache all key on them. Everything goes through canonical JSON (sorted keys, no
whitespace, UTF-8) and sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace, so equal values hash equal."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def response_id(prompt: str, steps: Sequence[str], annotation: Any = None) -> str:
    """Id of a solution: the problem text plus its steps (not the source or line number).

    Two copies of the same solution share an id on purpose, so the cache and resume treat them
    as one piece of work. A human annotation of a solution is its own piece of data, though:
    two labelers rating one PRM800K solution are two rows, so ``annotation`` (who labeled it,
    when, with which labels) joins the hash when given. Without it the id is unchanged.
    (The judge cache keys on the text, not on this id: a second annotation costs no request.)
    """
    body: dict[str, Any] = {"prompt": prompt, "steps": list(steps)}
    if annotation is not None:
        body["annotation"] = annotation
    return sha256_hex(body)[:24]


def pair_id(prompt: str, prefix: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> str:
    return sha256_hex(
        {"prompt": prompt, "prefix": list(prefix), "chosen": list(chosen), "rejected": list(rejected)}
    )[:24]


def shard_of(key: str, num_shards: int) -> int:
    """Which of ``num_shards`` machines owns ``key``: stable across Python runs (no ``hash()``)."""
    if num_shards <= 1:
        return 0
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) % num_shards
