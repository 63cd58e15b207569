"""mc: Monte-Carlo step labels from a scripted fake policy give exactly the expected fractions;
rollouts are cached (a rerun sends nothing) and counted in tokens and cost."""

from __future__ import annotations

import asyncio
import json

import pytest

from labeler.judges import create_judge
from labeler.judges.base import Item
from labeler.judges.config import JudgeConfig
from schemas.errors import UserError
from schemas.ids import response_id
from schemas.tables import RESPONSES, STEP_SCORES, from_rows, read_table, write_table
from tests.fakes.policy_server import (
    FakePolicyServer,
    gold_of,
    kind_of,
    problem_text,
    solution_steps,
)

N = 6


@pytest.fixture
def policy():
    with FakePolicyServer() as srv:
        yield srv


def items():
    out = []
    for a, b, kind in ((3, 4, "right"), (5, 1, "wrong"), (2, 2, "right")):
        steps = solution_steps(a, b, kind)
        out.append(Item(response_id(problem_text(a, b), steps), problem_text(a, b), steps,
                        gold_answer=gold_of(a, b), meta=kind))
    return out


def judge_for(policy, **kw):
    cfg = JudgeConfig(**{"rollouts": N, **kw})
    return create_judge(f"mc:openai-compatible:policy@{policy.url}/v1", cfg)


def run(judge, its):
    """One event loop per judge (its HTTP client lives on it), closed at the end."""
    async def go():
        try:
            return [v for it in its for v in await judge.judge([it])]
        finally:
            await judge.aclose()

    return asyncio.run(go())


def expected(judge, item, hard=False):
    """From the fake's script: a continuation is right iff kind_of(its seed) is 'right'."""
    out = []
    for k in range(len(item.steps) - 1):
        hits = sum(kind_of(judge.rollout_seed(item, k, i), continuation=True) == "right" for i in range(N))
        out.append(float(hits > 0) if hard else hits / N)
    out.append(1.0 if item.meta == "right" else 0.0)  # the response's own final answer
    return out


def test_fractions_are_exactly_the_scripted_ones(policy):
    judge = judge_for(policy)
    its = items()
    verdicts = run(judge, its)
    for item, verdict in zip(its, verdicts, strict=True):
        assert verdict.error is None
        assert verdict.scores == expected(judge, item)
        assert verdict.input_tokens > 0 and verdict.output_tokens > 0
    assert verdicts[1].scores[-1] == 0.0 and verdicts[0].scores[-1] == 1.0  # the response's own answer
    fractions = {s for v in verdicts for s in v.scores[:-1]}
    assert len(fractions) > 1 and fractions - {0.0, 1.0}  # real fractions, not all-or-nothing
    assert policy.requests == N * sum(len(i.steps) - 1 for i in its)
    # every rollout continued its own prefix with the next step's marker
    prompts = [b["prompt"] for b in policy.bodies]
    assert sum(p.endswith("Step 2: ") for p in prompts) == sum(p.endswith("Step 3: ") for p in prompts) == N * 3
    hard = judge_for(policy, hard=True)
    (v,) = run(hard, its[:1])
    assert v.scores == expected(hard, its[0], hard=True)


def test_no_gold_is_an_error_and_options_are_checked(policy):
    judge = judge_for(policy)
    item = items()[0]
    item.gold_answer = None
    (v,) = run(judge, [item])
    assert v.error.startswith("no gold answer") and policy.requests == 0
    with pytest.raises(UserError, match="--rollouts must be at least 1"):
        judge_for(policy, rollouts=0)
    with pytest.raises(UserError, match="unknown generator"):
        create_judge("mc:nope:x", JudgeConfig())
    assert judge.fingerprint() != judge_for(policy, rollout_temperature=0.5).fingerprint()
    assert judge.fingerprint() != judge_for(policy, hard=True).fingerprint()


def test_label_with_mc_caches_rollouts_and_counts_their_cost(policy, tmp_path, capsys):
    from stepdpo.cli import main

    its = items()
    rows = [{"response_id": i.response_id, "problem_id": f"p{n}", "source": "test", "prompt": i.prompt,
             "steps": i.steps, "final_answer": None, "gold_answer": i.gold_answer, "reference_scores": None,
             "meta": None} for n, i in enumerate(its)]
    responses = tmp_path / "r.parquet"
    write_table(from_rows(rows, RESPONSES), responses, RESPONSES)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"policy": {"input": 1.0, "cached_input": 0.5, "output": 2.0}}))
    argv = ["label", str(responses), "--judge", f"mc:openai-compatible:policy@{policy.url}/v1", "--rollouts",
            str(N), "-o", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--progress", "none",
            "--prices", str(prices), "--concurrency", "1", "--rollout-concurrency", "2", "--backoff", "0.01"]
    policy.faults = [None, None, "500"]  # the 3rd rollout fails once: its response is retried
    assert main(argv) == 0, capsys.readouterr().err
    sent = policy.requests
    assert sent == N * 6 + 1  # only the failed rollout was sent again, not its response's others
    out = {r["response_id"]: r for r in read_table(tmp_path / "run", STEP_SCORES).to_pylist()}
    judge = judge_for(policy)
    for item in its:
        row = out[item.response_id]
        assert row["status"] == "ok" and row["scores"] == expected(judge, item)
        assert row["cost_usd"] == pytest.approx((row["input_tokens"] * 1.0 + row["output_tokens"] * 2.0) / 1e6)
    # a new run folder, same cache: no rollout is sent again
    argv[argv.index("-o") + 1] = str(tmp_path / "run2")
    assert main(argv) == 0
    assert policy.requests == sent
    assert "3 from cache" in capsys.readouterr().err
