"""Shared fixtures. No test may reach the network: hub calls fail fast offline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Never let a developer's real keys or endpoints leak into a test.
for _var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
SAMPLE_GSM8K = REPO / "data" / "gsm8k" / "test_sample.jsonl"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def gsm8k_sample() -> Path:
    return SAMPLE_GSM8K


@pytest.fixture(scope="session")
def gsm8k_test_full() -> Path:
    """The full GSM8K test set from ../shared (skips where the shared folder is absent)."""
    path = SHARED_GSM8K / "test.jsonl"
    if not path.exists():
        pytest.skip("../shared/data/gsm8k is not present")
    return path


@pytest.fixture(scope="session")
def gsm8k_train_full() -> Path:
    """The full GSM8K train set from ../shared (skips where the shared folder is absent)."""
    path = SHARED_GSM8K / "train.jsonl"
    if not path.exists():
        pytest.skip("../shared/data/gsm8k is not present")
    return path
