"""`--max-cost`: a run stops cleanly before its spend passes the cap, loses nothing, and a rerun
with a higher cap finishes the job. Prices and per-request usage are fixed, so spend is exact."""

from __future__ import annotations

import json

import pytest

from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.critic_server import ScriptedCritic, step_answer
from tests.fakes.responses import write_responses

KEY = "sk-test-budget-0123456789"
REQUEST_COST = 1000 * 1.0 / 1e6 + 100 * 10.0 / 1e6  # 1000 in at $1/M + 100 out at $10/M = $0.002


@pytest.fixture
def job(tmp_path, monkeypatch):
    server = ScriptedCritic(lambda ask: step_answer(["correct"] * len(ask.steps)), usage=(1000, 100)).start()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    rows = [{"response_id": f"r{i:02d}", "problem_id": f"p{i}", "source": "t", "prompt": f"Problem {i}: 2 + {i}?",
             "steps": [f"2 + {i} = {2 + i}", f"The answer is {2 + i}."], "final_answer": str(2 + i),
             "gold_answer": str(2 + i), "reference_scores": None, "meta": None} for i in range(10)]
    inp = write_responses(rows, tmp_path / "in.parquet")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o-mini": {"input": 1.0, "output": 10.0}}))
    yield server, inp, prices, tmp_path
    server.stop()


def label(inp, out, prices, *extra):
    return main(["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(out), "--prices", str(prices),
                 "--progress", "none", *extra])


@pytest.mark.parametrize("concurrency", [1, 4])
def test_max_cost_stops_within_one_request_and_a_higher_cap_continues(job, capsys, concurrency):
    server, inp, prices, tmp = job
    out = tmp / "run"
    cap = 0.011
    assert label(inp, out, prices, "--max-cost", str(cap), "--concurrency", str(concurrency)) == 3
    err = capsys.readouterr().err
    assert "stopped: --max-cost $0.0110 reached" in err and "rerun with a higher --max-cost" in err
    manifest = json.loads((out / "run.json").read_text())
    spent = manifest["runs"][-1]["cost_usd"]
    assert manifest["state"] == "budget" and "--max-cost" in manifest["stop_reason"]
    assert spent == pytest.approx(server.total_requests * REQUEST_COST)
    assert cap - REQUEST_COST < spent <= cap + REQUEST_COST  # within one request's cost of the cap
    if concurrency == 1:  # nothing in flight: never over the cap
        assert spent <= cap and server.total_requests == 5
    done = read_table(out, STEP_SCORES).to_pylist()
    assert len(done) == server.total_requests and all(r["status"] == "ok" for r in done)  # every paid row kept
    # The same cap again: the folder has spent it; nothing is sent.
    before = server.total_requests
    assert label(inp, out, prices, "--max-cost", str(cap)) == 3 and server.total_requests == before
    # A higher cap: the rest, each row once.
    assert label(inp, out, prices, "--max-cost", "1") == 0
    rows = read_table(out, STEP_SCORES).to_pylist()
    assert sorted(r["response_id"] for r in rows) == [f"r{i:02d}" for i in range(10)]
    assert server.total_requests == 10 and json.loads((out / "run.json").read_text())["state"] == "finished"


def test_max_cost_needs_a_known_price(job, capsys, monkeypatch):
    server, inp, _, tmp = job
    rc = main(["label", str(inp), "--judge", "openai:no-such-model", "-o", str(tmp / "o"), "--max-cost", "1",
               "--progress", "none"])
    assert rc == 2 and server.total_requests == 0
    assert capsys.readouterr().err.strip() == \
        "stepdpo label: error: --max-cost needs the price of no-such-model: pass --prices FILE"
    assert not (tmp / "o" / "run.json").exists()
