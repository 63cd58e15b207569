"""The labeling engine: the async runner, the run folder, the judge cache, rate limits, retry
timing, prices and progress. Online labeling and provider batch mode both go through it.

The public API is importable from here (``from labeler.engine import Engine, RunDir``); each
name loads its module on first use, so importing the package pulls in neither pyarrow nor
diskcache until something is used. Anything not listed here is the modules' own business.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # runner: the engine and the pieces batch mode reuses
    "Engine": "labeler.engine.runner",
    "EngineConfig": "labeler.engine.runner",
    "load_rows": "labeler.engine.rows",
    "build_row": "labeler.engine.rows",
    "estimate": "labeler.engine.rows",
    "run_header": "labeler.engine.rows",
    "price_of": "labeler.engine.rows",
    "verdict_cost": "labeler.engine.rows",
    # the run folder: shards, resume rule, the one writer of run.json
    "RunDir": "labeler.engine.rundir",
    "RUN_SCHEMA": "labeler.engine.rundir",
    # the judge cache
    "JudgeCache": "labeler.engine.cache",
    "cache_key": "labeler.engine.cache",
    "default_cache_dir": "labeler.engine.cache",
    # prices, limits, retry timing, progress
    "Price": "labeler.engine.pricing",
    "load_prices": "labeler.engine.pricing",
    "price_for": "labeler.engine.pricing",
    "RateLimiter": "labeler.engine.ratelimit",
    "RetryPolicy": "labeler.engine.retry",
    "call_with_retries": "labeler.engine.retry",
    "Progress": "labeler.engine.progress",
    "Stats": "labeler.engine.progress",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'labeler.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers see the lazy names as ordinary imports
    from labeler.engine.cache import JudgeCache, cache_key, default_cache_dir  # noqa: F401
    from labeler.engine.pricing import Price, load_prices, price_for  # noqa: F401
    from labeler.engine.progress import Progress, Stats  # noqa: F401
    from labeler.engine.ratelimit import RateLimiter  # noqa: F401
    from labeler.engine.retry import RetryPolicy, call_with_retries  # noqa: F401
    from labeler.engine.rundir import RUN_SCHEMA, RunDir  # noqa: F401
    from labeler.engine.runner import (  # noqa: F401
        Engine,
        EngineConfig,
        build_row,
        estimate,
        load_rows,
        price_of,
        run_header,
        verdict_cost,
    )
