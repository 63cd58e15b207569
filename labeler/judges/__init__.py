"""Judges: one async interface (base.py), a name → factory registry that imports SDKs lazily."""

from labeler.judges.base import FatalError, Item, Judge, RetryableError, Verdict
from labeler.judges.registry import JUDGES, create_judge

__all__ = ["JUDGES", "FatalError", "Item", "Judge", "RetryableError", "Verdict", "create_judge"]
