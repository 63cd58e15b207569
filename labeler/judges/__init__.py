"""Judges: one async interface (base.py), a name → factory registry that imports SDKs lazily.

The interface and the registry load eagerly (they are light: no SDK, no pyarrow); each judge
module (openai_judge, anthropic_judge, prm, calc, reference) loads only when the registry
builds a judge of its name.
"""

from labeler.errors import FatalError, JudgeError, RetryableError
from labeler.judges.base import Item, Judge, Verdict
from labeler.judges.config import JudgeConfig
from labeler.judges.registry import JUDGES, create_judge, judge_help

__all__ = ["JUDGES", "FatalError", "Item", "Judge", "JudgeConfig", "JudgeError", "RetryableError", "Verdict",
           "create_judge", "judge_help"]
