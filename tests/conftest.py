"""Shared fixtures. No test may reach the network: hub calls fail fast offline."""

from __future__ import annotations

import os
import threading
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
SAMPLE_GSM8K = REPO / "data" / "gsm8k" / "test_sample.jsonl"
# Bundled with the repository, so no test skips for want of ../shared: the GSM8K test set whole
# (data/, it ships with the package) and a slice of the train set (tests/data/gsm8k/README.md).
TEST_GSM8K = REPO / "data" / "gsm8k" / "test.jsonl"
TRAIN_SLICE_GSM8K = REPO / "tests" / "data" / "gsm8k" / "train_slice.jsonl"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def gsm8k_sample() -> Path:
    return SAMPLE_GSM8K


@pytest.fixture(scope="session")
def gsm8k_test_full() -> Path:
    """The full GSM8K test set (1,319 problems), bundled in data/gsm8k/."""
    return TEST_GSM8K


@pytest.fixture(scope="session")
def gsm8k_train_slice() -> Path:
    """403 rows of the GSM8K train set: the first 400 and the three with a negative answer."""
    return TRAIN_SLICE_GSM8K


@pytest.fixture()
def server():
    """A loopback scripted policy (tests/fakes/policy_server.py): right, wrong and cut-off
    solutions known per (problem, sample). Test modules with their own `server` override it."""
    from tests.fakes.policy_server import FakePolicyServer

    with FakePolicyServer() as srv:
        yield srv


@pytest.fixture()
def fake():
    """A loopback OpenAI/Anthropic fake (tests/fakes/llm_server.py) with fast retry-after
    answers. Test modules with their own `fake` (other fault settings) override it."""
    from tests.fakes.llm_server import FakeLLMServer, FaultConfig

    with FakeLLMServer(FaultConfig(retry_after=0.01)) as srv:
        yield srv


@pytest.fixture(params=["aiohttp", "httpx"])
def transport(request) -> str:
    """``--http-transport`` of a wire-level test that must hold on both transports (the SDKs'
    aiohttp transport, the default when installed, and httpx's own). Named, never ``auto``: a
    missing aiohttp fails the aiohttp half instead of running httpx twice."""
    return request.param


@pytest.fixture(autouse=True)
def _no_server_loop_left_on_a_closed_socket():
    """Fails the test that closed a loopback server without ``shutdown()``: its ``serve_forever``
    thread then spins on the closed socket for the rest of the session, and every later test (the
    torch ones most) runs several times slower. It once tripled the suite's time unseen."""
    yield
    spinning = [t.name for t in threading.enumerate()
                if getattr(getattr(t, "_target", None), "__name__", "") == "serve_forever"
                and getattr(getattr(t._target, "__self__", None), "socket", None) is not None
                and t._target.__self__.socket.fileno() == -1]
    assert not spinning, f"a server was closed with its serve_forever loop still running: {spinning}"
