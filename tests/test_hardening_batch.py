"""Issue #16 item 9: provider batch mode's faults, through the real SDKs against the fakes.

The batch fake (tests/fakes/batch_api.py) answers like the providers do: 409 on cancelling a
batch that has ended, 404 on every batch route of a server that has none (the plain online
fake), and Message Batches without any metadata.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from labeler.batch import state
from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.batch_api import attach
from tests.fakes.llm_server import FakeLLMServer, score_of
from tests.fakes.responses import write_responses
from tests.test_batch import JUDGES, make_rows

KEY = "sk-batch-harden-SECRET-0123456789"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    server = FakeLLMServer().start()
    api = attach(server, polls_to_finish=1000)  # batches run until a test finishes them
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    yield server, api
    server.stop()


def label(capsys, inp: Path, run: Path, provider: str, *extra: str) -> tuple[int, str]:
    rc = main(["label", str(inp), "--judge", JUDGES[provider], "-o", str(run), "--batch", "--poll-interval", "0.01",
               "--progress", "none", "--backoff", "0.01", *extra])
    out = capsys.readouterr()
    return rc, out.out + out.err


def finish(server: FakeLLMServer, api, provider: str, batch_id: str) -> None:
    """Let the fake provider end one batch (one poll with polls_to_finish = 1)."""
    path = f"/v1/batches/{batch_id}" if provider == "openai" else f"/v1/messages/batches/{batch_id}"
    api.polls_to_finish = 1
    urllib.request.urlopen(server.url + path).read()
    api.polls_to_finish = 1000


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cancel_cancels_what_it_can_and_reports_the_rest(fake, tmp_path, capsys, provider):
    """OpenAI's 409 on a completed batch raised, and the later batches kept running and billing."""
    server, api = fake
    inp = write_responses(make_rows(12), tmp_path / "in.parquet")
    run = tmp_path / "run"
    rc, log = label(capsys, inp, run, provider, "--no-batch-wait", "--batch-max-requests", "4")
    assert rc == 0, log
    records = state.load_all(run)
    assert len(records) == 3 and all(r.batch_id for r in records)
    finish(server, api, provider, records[0].batch_id)

    rc = main(["batches", str(run), "--cancel"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"not cancelled: {records[0].key} had already ended" in out
    assert "cancel requested for 2 batch(es)" in out
    batches = api.openai_batches if provider == "openai" else api.anthropic_batches
    status = {b: batches[r.batch_id].status for b, r in zip("abc", records, strict=True)}
    assert status["a"] in ("completed", "ended")
    assert status["b"] == status["c"] == ("cancelling" if provider == "openai" else "canceling")

    # The rerun collects all three: the finished one's rows are ok, the cancelled ones' errors.
    rc, log = label(capsys, inp, run, provider)
    out = read_table(run, STEP_SCORES).to_pylist()
    assert len(out) == 12 and sum(r["status"] == "ok" for r in out) == 4, log


def test_anthropic_rerun_never_attaches_to_another_jobs_batch(fake, tmp_path, capsys):
    """find_orphan took any same-size batch created after the intent: another job's answers
    were joined to our rows (none matched: every row an error) and its batch claimed."""
    server, api = fake
    ours, theirs = make_rows(5), make_rows(5, start=100)
    inp = write_responses(ours, tmp_path / "ours.parquet")
    run = tmp_path / "run"
    # Our run, killed between the provider's create and writing the id down: the record stays
    # at 'intent' (made here by forgetting the id of a real submission).
    rc, log = label(capsys, inp, run, "anthropic", "--no-batch-wait")
    assert rc == 0, log
    [rec] = state.load_all(run)
    real_orphan = rec.batch_id
    rec.batch_id, rec.phase, rec.status = None, "intent", None
    state.save(run, rec)
    # Another job's batch of the same size, created after our intent, ended.
    other = write_responses(theirs, tmp_path / "theirs.parquet")
    rc, log = label(capsys, other, tmp_path / "other-run", "anthropic", "--no-batch-wait")
    assert rc == 0, log
    [other_rec] = state.load_all(tmp_path / "other-run")
    finish(server, api, "anthropic", other_rec.batch_id)

    # Ours is still running: it cannot be proven ours yet, and theirs is provably not ours.
    assert api.submissions["anthropic"] == 2
    rc, log = label(capsys, inp, run, "anthropic", "--no-batch-wait")
    assert rc == 0, log
    assert api.submissions["anthropic"] == 3  # submitted anew, attached to neither
    claimed = {r.batch_id for r in state.load_all(run)}
    assert other_rec.batch_id not in claimed and real_orphan not in claimed

    # Once our lost batch has ended, its custom ids prove it ours: a rerun attaches to it.
    run2 = tmp_path / "run2"
    rc, log = label(capsys, inp, run2, "anthropic", "--no-batch-wait", "--no-cache")
    [rec2] = state.load_all(run2)
    lost = rec2.batch_id
    rec2.batch_id, rec2.phase, rec2.status = None, "intent", None
    state.save(run2, rec2)
    finish(server, api, "anthropic", lost)
    before = api.submissions["anthropic"]
    api.polls_to_finish = 1
    rc, log = label(capsys, inp, run2, "anthropic", "--no-cache")
    assert rc == 0 and api.submissions["anthropic"] == before, log  # attached, not resubmitted
    assert f"attached to anthropic batch {lost}" in log
    out = read_table(run2, STEP_SCORES).to_pylist()
    assert len(out) == 5 and all(r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]]
                                 for r in out)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_against_a_server_without_batch_endpoints_is_one_line(tmp_path, capsys, monkeypatch, provider):
    server = FakeLLMServer().start()  # the online endpoints only: every batch route is a 404
    try:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
        inp = write_responses(make_rows(4), tmp_path / "in.parquet")
        run = tmp_path / "run"
        rc, log = label(capsys, inp, run, provider)
        lines = log.strip().splitlines()
        assert rc == 2 and "Traceback" not in log, log
        assert lines[-1].startswith(f"stepdpo label: error: {provider} batch API at {server.url}")
        assert "refused: HTTP 404" in lines[-1] and "this server has no provider batch API: run without --batch" \
            in lines[-1]
        assert KEY not in log
        assert state.load_all(run) == []  # nothing recorded that was never created
        rc = main(["batches", str(run), "--offline"])
        err = capsys.readouterr().err
        assert rc == 2 and "no provider batches recorded" in err
    finally:
        server.stop()


def test_batch_retry_online_says_what_it_spent_online(fake, tmp_path, capsys):
    """It printed "$0.0000 at batch price" for a rerun that had paid online."""
    server, api = fake
    rows = make_rows(10)
    inp = write_responses(rows, tmp_path / "in.parquet")
    run = tmp_path / "run"
    api.polls_to_finish = 1
    api.fault = lambda cid: "errored" if cid in {rows[0]["response_id"], rows[1]["response_id"]} else None
    rc, log = label(capsys, inp, run, "openai")
    assert rc == 1 and sum(r["status"] == "error" for r in read_table(run, STEP_SCORES).to_pylist()) == 2, log
    assert "label --batch: 2 of 10 responses failed in their batch" in log
    assert server.counts["/v1/chat/completions"] == 0  # batch answers do not go through the online route
    rc, log = label(capsys, inp, run, "openai", "--batch-retry", "online")
    assert rc == 0, log
    assert server.counts["/v1/chat/completions"] == 2  # the two retried online
    retried = [r for r in read_table(run, STEP_SCORES).to_pylist()
               if r["response_id"] in {rows[0]["response_id"], rows[1]["response_id"]}]
    cost = sum(r["cost_usd"] for r in retried)
    assert cost > 0 and all(r["status"] == "ok" for r in retried)
    assert (f"label --batch: retried online first: 2 row(s) (ok 2, error 0), 2 request(s), ${cost:.4f} at online "
            "price") in log
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["runs"][-1]["online_retry"]["cost_usd"] == pytest.approx(cost, abs=1e-6)
    assert manifest["spend"]["cost_usd"] >= manifest["runs"][-1]["online_retry"]["cost_usd"]
