"""The API judges' transport: wire-ready bodies POSTed through the SDK clients, and connection
pools sized to the requests in flight (labeler/judges/clients.py), against the loopback fake."""

from __future__ import annotations

import asyncio
import json

import pytest

from labeler.judges.base import Item
from labeler.judges.clients import CONNECTIONS_PER_CLIENT, split
from labeler.judges.config import JudgeConfig
from labeler.judges.registry import create_judge
from tests.fakes.llm_server import FakeLLMServer, FaultConfig, score_of

KEY = "sk-test-transport-0123456789"


def items(n: int) -> list[Item]:
    return [Item(f"r{i}", f"What is {i} + 1?", [f"Take {i}.", f"Add one: {i} + 1 = {i + 1}."]) for i in range(n)]


#: How long the fake holds each request: all requests of one round must reach it within this
#: time for the in-flight counts to be exact, even with a busy box and a cold SDK client.
HOLD_S = 0.75


@pytest.fixture
def fake(monkeypatch):
    with FakeLLMServer(FaultConfig()) as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def judge_all(judge, todo: list[Item]) -> list:
    async def go():
        try:
            return await asyncio.gather(*(judge.judge([item]) for item in todo))
        finally:
            await judge.aclose()

    return [v for (v,) in asyncio.run(go())]


def test_split_is_even_and_capped():
    assert split(64) == [CONNECTIONS_PER_CLIENT] * (64 // CONNECTIONS_PER_CLIENT)
    assert split(20, 8) == [7, 7, 6]
    assert split(1) == [1]
    for n in (1, 7, 8, 9, 33, 250):
        sizes = split(n)
        assert sum(sizes) == n and max(sizes) <= CONNECTIONS_PER_CLIENT and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("name", ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
def test_pool_holds_exactly_the_declared_requests_in_flight(fake, name):
    """20 declared, 24 asked at once: the fake sees 20 at a time over 20 connections (no queue
    below the limit, no connection beyond it), and every answer is the fake's."""
    fake.faults.latency_s = HOLD_S
    judge = create_judge(name, JudgeConfig())
    judge.use_concurrency(20)
    todo = items(24)
    verdicts = judge_all(judge, todo)
    assert [v.scores for v in verdicts] == [[score_of(s) for s in item.steps] for item in todo]
    assert fake.total_requests == 24
    assert fake.max_in_flight == 20
    assert len(fake.peers) == 20


def test_samples_widen_the_pool(fake):
    """--samples 3 asks the samples of an item at once: 2 items in flight are 6 requests."""
    fake.faults.latency_s = HOLD_S
    judge = create_judge("openai:gpt-4o-mini", JudgeConfig(samples=3, temperature=0.7))
    judge.use_concurrency(2)
    judge_all(judge, items(2))
    assert fake.total_requests == 6 and fake.max_in_flight == 6


def test_a_closed_judge_reopens_at_its_new_concurrency(fake):
    """The same judge run twice (two engines, two event loops): the second pool has the second
    engine's size, not the first's."""
    fake.faults.latency_s = HOLD_S
    judge = create_judge("openai:gpt-4o-mini", JudgeConfig())
    judge.use_concurrency(3)
    judge_all(judge, items(3))
    assert fake.max_in_flight == 3
    judge.use_concurrency(6)
    judge_all(judge, items(6))  # a pool still sized 3 would hold them to 3 at a time
    assert fake.max_in_flight == 6 and fake.total_requests == 9


@pytest.mark.parametrize("name", ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
def test_wire_bytes_are_the_request_body(fake, name):
    """The bytes POSTed decode to request_body() exactly, with the SDK's headers and key."""
    judge = create_judge(name, JudgeConfig())
    item = items(1)[0]
    assert json.loads(judge.request_bytes(item)) == judge.request_body(item)
    judge_all(judge, [item])
    (sent,) = fake.requests
    assert sent["body"] == judge.request_body(item)
    headers = sent["headers"]
    assert headers["content-type"] == "application/json"
    assert KEY in (headers.get("authorization", "") + headers.get("x-api-key", ""))
    assert "x-stainless-lang" in headers  # the SDK client built the request, not a hand-rolled one
