"""The training half: StepwiseDPOConfig, StepwiseDPOTrainer, losses, collator, streaming data.

It reads only what `schemas` defines and never imports `labeler`, so a GPU box needs nothing
but the pair shards. The public names below are importable from `trainer` directly and are
loaded on first use, so `import trainer` (and the CLI) stays free of torch/TRL until needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StepwiseDPOConfig": "trainer.config",
    "StepwiseDPOTrainer": "trainer.stepwise_trainer",
    "StepwiseCollator": "trainer.stepwise_trainer",
    "load_pairs": "trainer.data",
    "has_precomputed_ref": "trainer.data",
    "reference_step_logps": "trainer.precompute",
    "load_reference": "trainer.precompute",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
