"""Every piece of TRL that is not its public API, imported in this one module.

StepwiseDPOTrainer subclasses TRL's `DPOTrainer` and overrides a few of its private hooks, and
it reuses a handful of helpers that TRL does not export from its top level. All of them are
named here, with the signatures we rely on, so that a TRL upgrade fails in one readable place:
`tests/test_trl_surface.py` pins ``TRL_VERSION`` and checks ``PRIVATE_HOOKS`` and
``HELPERS`` against the installed TRL. Nothing else in the project imports from ``trl.*``
sub-modules; the public names (`DPOConfig`, `DPOTrainer`, `TrlParser`, `ModelConfig`) come
from ``trl`` itself.
"""

from __future__ import annotations

from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head, use_adapter

# The TRL release this module was checked against (pyproject pins trl==TRL_VERSION).
TRL_VERSION = "1.16.0"

# DPOTrainer's private methods StepwiseDPOTrainer overrides, with TRL's parameter names. The
# public `compute_loss` is overridden too (it is the hook TRL routes every loss through, also
# with `use_liger_kernel`), so `_compute_loss` is not relied on.
PRIVATE_HOOKS: dict[str, tuple[str, ...]] = {
    "_prepare_dataset": ("self", "dataset", "processing_class", "args", "dataset_name"),
    "_set_signature_columns_if_needed": ("self",),
    "_precompute_ref_logps": ("self", "dataset", "name", "batch_size"),
}

# DPOTrainer's private attributes the stepwise trainer reads or appends to (set in its __init__).
PRIVATE_ATTRIBUTES = ("_metrics", "_total_train_tokens", "_tp_size", "_tokenizer", "_signature_columns")

# Helpers imported above, with the parameter names we call them with.
HELPERS = {
    "use_adapter": (use_adapter, ("model", "adapter_name")),
    "add_fused_lm_head": (add_fused_lm_head, ("model",)),
    "DataCollatorForPreference": (DataCollatorForPreference,
                                  ("pad_token_id", "max_length", "truncation_mode", "pad_to_multiple_of")),
}

__all__ = [
    "TRL_VERSION",
    "PRIVATE_HOOKS",
    "PRIVATE_ATTRIBUTES",
    "HELPERS",
    "DataCollatorForPreference",
    "add_fused_lm_head",
    "use_adapter",
]
