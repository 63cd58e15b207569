"""Provider batch mode, through the real openai / anthropic SDKs against the loopback fake.

The fake answers each request inside a batch with the same handler as the online endpoint
(tests/fakes/batch_api.py), so online and batch scores must agree exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("anthropic")

from labeler.batch import state  # noqa: E402
from labeler.batch.base import Limits, chunk  # noqa: E402
from labeler.batch.openai_batch import OpenAIBatchTransport  # noqa: E402
from labeler.batch.runner import (  # noqa: E402
    BatchOptions,
    batch_costs,
    make_transport,
    provider_for,
    run_batch_label,
)
from labeler.engine.cache import JudgeCache  # noqa: E402
from labeler.engine.pricing import load_prices  # noqa: E402
from labeler.engine.rundir import RunDir  # noqa: E402
from labeler.engine.runner import Engine, EngineConfig, load_rows  # noqa: E402
from labeler.judges.config import JudgeConfig  # noqa: E402
from labeler.judges.registry import create_judge  # noqa: E402
from schemas.errors import UserError  # noqa: E402
from schemas.ids import response_id  # noqa: E402
from schemas.tables import RESPONSES, STEP_SCORES, from_rows, read_table, write_table  # noqa: E402
from stepdpo.cli import main as cli_main  # noqa: E402
from tests.fakes.batch_api import attach  # noqa: E402
from tests.fakes.llm_server import FakeLLMServer, score_of  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-batch-test-SECRET-0123456789"
JUDGES = {"openai": "openai:gpt-4o-mini", "anthropic": "anthropic:claude-haiku-4-5"}


def make_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        prompt = f"Problem {i}: Tom has {i} apples and buys {i % 7 + 2} more. How many now?"
        steps = [f"Tom starts with {i} apples.", f"He buys {i % 7 + 2} more.",
                 f"So he has {i} + {i % 7 + 2} = {i + i % 7 + 2 - (i % 5 == 0)} apples."][: 2 + i % 2]
        rows.append({"response_id": response_id(prompt, steps), "problem_id": f"p{i}", "source": "test",
                     "prompt": prompt, "steps": steps, "final_answer": None, "gold_answer": None,
                     "reference_scores": None, "meta": None})
    return rows


@pytest.fixture
def fake(monkeypatch):
    server = FakeLLMServer().start()
    api = attach(server, polls_to_finish=3)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    yield server, api
    server.stop()


def judge_of(provider: str):
    return create_judge(JUDGES[provider], JudgeConfig())


def batch_label(provider, rows, run: Path, cache: Path, **opts):
    options = BatchOptions(poll_interval=0.001, **opts)
    logs: list[str] = []
    manifest = run_batch_label(judge_of(provider), rows, RunDir(run), cache=JudgeCache(cache),
                               prices=load_prices(), options=options, log=logs.append)
    return manifest, logs


def online_label(provider, rows, run: Path) -> dict:
    judge = judge_of(provider)
    engine = Engine(judge, RunDir(run), EngineConfig(concurrency=16, progress="none"), None, load_prices())
    return asyncio.run(engine.run(rows))


def scores_by_id(run: Path) -> dict[str, list]:
    table = read_table(run, STEP_SCORES)
    ids = table.column("response_id").to_pylist()
    assert len(ids) == len(set(ids)), "a response appears twice in the run folder"
    return dict(zip(ids, table.column("scores").to_pylist(), strict=True))


def chat_requests(server: FakeLLMServer) -> int:
    return server.counts["/v1/chat/completions"] + server.counts["/v1/messages"]


# -- the done-when: same scores as online, every row exactly once ---------------------------------

@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_rows_through_batch_equal_online(provider, fake, tmp_path):
    # 200 rows prove what 2,000 did: three batches cut to the limit, every row once, the same
    # scores as online, half price, a free rerun, the cache filled.
    server, api = fake
    rows = make_rows(200)
    online = online_label(provider, rows, tmp_path / "online")
    assert online["totals"]["ok"] == 200
    before = chat_requests(server)

    manifest, _ = batch_label(provider, rows, tmp_path / "batch", tmp_path / "cache", batch_max_requests=90)
    assert chat_requests(server) == before, "batch mode sent online requests"
    assert api.submissions[provider] == 3  # 90 + 90 + 20: cut to the per-batch limit
    assert manifest["totals"]["rows"] == 200 and manifest["totals"]["ok"] == 200
    batch_scores, online_scores = scores_by_id(tmp_path / "batch"), scores_by_id(tmp_path / "online")
    assert set(batch_scores) == {r["response_id"] for r in rows}
    assert batch_scores == online_scores
    # and the fake's oracle: each step's score is a function of its text
    first = rows[0]
    assert batch_scores[first["response_id"]] == [score_of(s) for s in first["steps"]]
    # half price, recorded in run.json; cost per row is half the online row's cost
    assert manifest["mode"] == "batch" and manifest["batch_discount"] == 0.5
    price = load_prices()[JUDGES[provider].partition(":")[2]]
    table = read_table(tmp_path / "batch", STEP_SCORES)
    for row in table.slice(0, 50).to_pylist():
        full = price.cost(row["input_tokens"], row["cached_tokens"], row["output_tokens"])
        assert row["cost_usd"] == pytest.approx(full / 2)
    assert manifest["batch_price_per_mtok"]["output"] == price.output / 2
    assert all(b["phase"] == "ingested" for b in manifest["batches"])
    # a rerun costs nothing: no submission, no request
    manifest2, _ = batch_label(provider, rows, tmp_path / "batch", tmp_path / "cache")
    assert api.submissions[provider] == 3 and chat_requests(server) == before
    assert manifest2["runs"][-1]["rows_skipped_done"] == 200
    # answers went into the cache: a fresh folder is filled without a batch
    manifest3, _ = batch_label(provider, rows[:50], tmp_path / "again", tmp_path / "cache")
    assert api.submissions[provider] == 3 and manifest3["runs"][-1]["cache_hits"] == 50
    # the key reached no file
    for path in (tmp_path / "batch").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


# -- crash safety -------------------------------------------------------------------------------

KILL_SCRIPT = """
import sys
from labeler.batch.runner import BatchOptions, run_batch_label
from labeler.engine.cache import JudgeCache
from labeler.engine.runner import load_rows
from labeler.judges.config import JudgeConfig
from labeler.judges.registry import create_judge
from labeler.engine.pricing import load_prices
from labeler.engine.rundir import RunDir
spec, responses, run, cache = sys.argv[1:5]
run_batch_label(create_judge(spec, JudgeConfig()), load_rows(responses), RunDir(run), cache=JudgeCache(cache),
                prices=load_prices(), options=BatchOptions(poll_interval=600, batch_max_requests=150))
"""


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_sigkill_after_submission_then_rerun_attaches(provider, fake, tmp_path):
    server, api = fake
    rows = make_rows(300)
    responses = tmp_path / "responses.parquet"
    write_table(from_rows(rows, RESPONSES), responses, RESPONSES)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, JUDGES[provider], str(responses), str(run),
                             str(tmp_path / "cache")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            recs = state.load_all(run) if (run / "batches").is_dir() else []
            if len(recs) == 2 and all(r.phase == "submitted" for r in recs):
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        else:
            pytest.fail("the subprocess never submitted its batches")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert api.submissions[provider] == 2
    assert not RunDir(run).parts()  # killed while polling: nothing written yet

    manifest, logs = batch_label(provider, rows, run, tmp_path / "cache", batch_max_requests=150)
    assert api.submissions[provider] == 2, "the rerun submitted again instead of attaching"
    assert sum("attached to" in line for line in logs) == 2
    assert manifest["runs"][-1]["batches_attached"] and not manifest["runs"][-1]["batches_submitted"]
    assert set(scores_by_id(run)) == {r["response_id"] for r in rows}
    assert manifest["totals"]["ok"] == 300


def test_abort_right_after_submit_then_rerun_attaches(fake, tmp_path):
    server, api = fake
    rows = make_rows(120)

    def crash(rec):
        raise KeyboardInterrupt  # as if the process died the moment the id was on disk

    with pytest.raises(KeyboardInterrupt):
        run_batch_label(judge_of("openai"), rows, RunDir(tmp_path / "run"), cache=None, prices=load_prices(),
                        options=BatchOptions(poll_interval=0.001), after_submit=crash, log=lambda m: None)
    (rec,) = state.load_all(tmp_path / "run")
    assert rec.phase == "submitted" and rec.batch_id and rec.file_id and rec.n_requests == 120
    manifest, _ = batch_label("openai", rows, tmp_path / "run", tmp_path / "cache")
    assert api.submissions["openai"] == 1
    assert manifest["totals"]["ok"] == 120 and len(scores_by_id(tmp_path / "run")) == 120


def test_killed_between_create_and_saving_the_id_finds_the_orphan(fake, tmp_path):
    """The worst moment: the provider created the batch, we never wrote its id down."""
    server, api = fake
    rows = make_rows(40)
    judge = judge_of("openai")

    class DiesAfterCreate(OpenAIBatchTransport):
        def submit(self, record, lines, save):
            super().submit(record, lines, lambda r: save(r) if r.phase != "submitted" else None)
            raise SystemExit("killed")

    transport = DiesAfterCreate(base_url=os.environ["OPENAI_BASE_URL"])
    with pytest.raises(SystemExit):
        run_batch_label(judge, rows, RunDir(tmp_path / "run"), prices=load_prices(),
                        options=BatchOptions(poll_interval=0.001), transport=transport, log=lambda m: None)
    (rec,) = state.load_all(tmp_path / "run")
    assert rec.phase == "uploaded" and rec.batch_id is None
    manifest, logs = batch_label("openai", rows, tmp_path / "run", tmp_path / "cache")
    assert api.submissions["openai"] == 1
    assert any("attached to" in line for line in logs)
    assert manifest["totals"]["ok"] == 40


# -- partial failures ---------------------------------------------------------------------------

def _fault(cid: str) -> str | None:
    n = int(cid[:2], 16)
    return "errored" if n < 20 else "expired" if n < 40 else None


@pytest.mark.parametrize("provider,retry", [("openai", "online"), ("anthropic", "batch"),
                                           ("openai", "batch"), ("anthropic", "online")])
def test_errored_and_expired_become_error_rows_then_are_retried(provider, retry, fake, tmp_path):
    server, api = fake
    api.fault = _fault
    rows = make_rows(400)
    errored = {r["response_id"] for r in rows if _fault(r["response_id"]) == "errored"}
    expired = {r["response_id"] for r in rows if _fault(r["response_id"]) == "expired"}
    assert errored and expired
    run = tmp_path / "run"
    manifest, _ = batch_label(provider, rows, run, tmp_path / "cache", batch_retry=retry)
    table = read_table(run, STEP_SCORES)
    assert table.num_rows == 400
    status = dict(zip(table.column("response_id").to_pylist(), table.column("status").to_pylist(), strict=True))
    errors = dict(zip(table.column("response_id").to_pylist(), table.column("error").to_pylist(), strict=True))
    assert {rid for rid, s in status.items() if s == "error"} == errored | expired
    assert all(errors[rid].startswith("batch errored") for rid in errored)
    assert all(errors[rid].startswith("batch expired") for rid in expired)
    assert manifest["totals"]["error"] == len(errored | expired)
    before = chat_requests(server)

    manifest, _ = batch_label(provider, rows, run, tmp_path / "cache", batch_retry=retry)
    n_failed = len(errored | expired)
    if retry == "online":
        assert chat_requests(server) - before == n_failed and api.submissions[provider] == 1
        assert manifest["runs"][-1]["retried_online"] == n_failed
    else:
        assert chat_requests(server) == before and api.submissions[provider] == 2
        assert api.openai_batches or api.anthropic_batches
    scores = scores_by_id(run)  # asserts exactly once
    assert len(scores) == 400 and manifest["totals"]["ok"] == 400
    by_id = {r["response_id"]: r for r in rows}
    for rid in errored | expired:
        assert scores[rid] == [score_of(s) for s in by_id[rid]["steps"]]


# -- stepdpo batches ----------------------------------------------------------------------------

def test_batches_command_status_and_cancel(fake, tmp_path, capsys):
    server, api = fake
    rows = make_rows(60)
    run = tmp_path / "run"
    manifest, _ = batch_label("anthropic", rows, run, tmp_path / "cache", batch_wait=False)
    assert manifest["state"] == "pending" and api.submissions["anthropic"] == 1
    (rec,) = state.load_all(run)

    assert cli_main(["batches", str(run)]) == 0
    out = capsys.readouterr().out
    assert rec.batch_id in out and "in_progress" in out and "60" in out and "~$" in out

    assert cli_main(["batches", str(run), "--cancel"]) == 0
    assert "cancel requested for 1 batch" in capsys.readouterr().out
    manifest, _ = batch_label("anthropic", rows, run, tmp_path / "cache")
    assert manifest["totals"]["error"] == 60  # canceled before any was processed
    table = read_table(run, STEP_SCORES)
    assert set(table.column("error").to_pylist()) == {"batch canceled: request not processed"}

    assert cli_main(["batches", str(run), "--offline", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (b,) = data["batches"]
    assert b["phase"] == "ingested" and b["rows"] == {"error": 60} and b["cancel_requested"]
    assert "manifest" not in b

    # the next run retries the canceled rows in a new batch
    manifest, _ = batch_label("anthropic", rows, run, tmp_path / "cache")
    assert api.submissions["anthropic"] == 2 and manifest["totals"]["ok"] == 60


def test_batches_command_errors(tmp_path, capsys):
    assert cli_main(["batches", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert cli_main(["batches", str(tmp_path)]) == 2
    assert "no provider batches recorded" in capsys.readouterr().err


# -- small pieces -------------------------------------------------------------------------------

def test_chunk_respects_request_and_byte_limits():
    lines = [(f"c{i}", b"x" * 99) for i in range(10)]  # 100 bytes each with the newline
    assert [len(c) for c in chunk(lines, Limits(4, 10_000))] == [4, 4, 2]
    assert [len(c) for c in chunk(lines, Limits(100, 350))] == [3, 3, 3, 1]
    assert [cid for part in chunk(lines, Limits(3, 250)) for cid, _ in part] == [c for c, _ in lines]
    # a request bigger than the byte limit goes alone rather than blocking the others
    assert [len(c) for c in chunk([("a", b"y" * 500), ("b", b"z")], Limits(10, 100))] == [1, 1]


def test_provider_limits_and_unsupported_judges(fake):
    assert provider_for(judge_of("openai")) == "openai"
    assert provider_for(judge_of("anthropic")) == "anthropic"
    compatible = create_judge("openai-compatible:qwen@http://127.0.0.1:9/v1", JudgeConfig())
    assert compatible.batch_provider is None
    with pytest.raises(UserError, match=r"--batch needs a judge with a provider batch API \(openai:, anthropic: judges\)"):
        provider_for(compatible)
    calc = create_judge("gsm8k-calc", JudgeConfig())
    with pytest.raises(UserError, match="not 'gsm8k-calc'"):
        provider_for(calc)
    t = make_transport(judge_of("openai"), BatchOptions())
    assert (t.limits.max_requests, t.limits.max_bytes) == (50_000, 200 * 1024 * 1024)
    t.close()
    t = make_transport(judge_of("anthropic"), BatchOptions(batch_max_requests=10, batch_max_mb=1))
    assert (t.limits.max_requests, t.limits.max_bytes) == (10, 1024 * 1024)
    t.close()


def test_dry_run_costs_side_by_side():
    assert batch_costs({"cost_usd": 1.5}) == {"online_cost_usd": 1.5, "batch_cost_usd": 0.75, "batch_discount": 0.5}
    assert batch_costs({"cost_usd": None})["batch_cost_usd"] is None


def test_load_rows_roundtrip_for_the_kill_script(tmp_path):
    rows = make_rows(5)
    write_table(from_rows(rows, RESPONSES), tmp_path / "r.parquet", RESPONSES)
    assert [r["response_id"] for r in load_rows(tmp_path / "r.parquet")] == [r["response_id"] for r in rows]


# -- the label command ----------------------------------------------------------------------------

def test_label_command_batch_flag_and_dry_run(fake, tmp_path, capsys):
    server, api = fake
    rows = make_rows(80)
    responses = tmp_path / "responses.parquet"
    write_table(from_rows(rows, RESPONSES), responses, RESPONSES)
    run = tmp_path / "run"
    base = ["label", str(responses), "--judge", "openai:gpt-4o-mini", "-o", str(run),
            "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]

    assert cli_main(base + ["--dry-run"]) == 0
    captured = capsys.readouterr()
    est = json.loads(captured.out)
    assert est["batch_cost_usd"] == pytest.approx(est["online_cost_usd"] / 2, abs=1e-4)
    assert "with --batch" in captured.err and not run.exists() and api.submissions["openai"] == 0

    assert cli_main(base + ["--batch", "--poll-interval", "0.001", "--batch-max-requests", "50"]) == 0
    assert "2 batch(es) submitted" in capsys.readouterr().err
    assert api.submissions["openai"] == 2 and chat_requests(server) == 0
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["mode"] == "batch" and manifest["totals"]["ok"] == 80
    assert manifest["config"]["limit"] is None and manifest["batch_retry"] == "batch"
    assert set(scores_by_id(run)) == {r["response_id"] for r in rows}

    assert cli_main(base + ["--batch", "--poll-interval", "0"]) == 2
    assert "--poll-interval must be positive" in capsys.readouterr().err
    assert cli_main(["label", str(responses), "--judge", "openai-compatible:m@http://127.0.0.1:9/v1",
                     "-o", str(tmp_path / "x"), "--batch", "--no-cache"]) == 2
    assert "--batch needs a judge with a provider batch API (openai:, anthropic: judges)" in capsys.readouterr().err


def test_anthropic_orphan_found_by_its_custom_ids(fake, tmp_path):
    from labeler.batch.anthropic_batch import AnthropicBatchTransport

    server, api = fake
    rows = make_rows(30)

    class DiesAfterCreate(AnthropicBatchTransport):
        def submit(self, record, lines, save):
            super().submit(record, lines, lambda r: None)  # the id never reaches the disk
            raise SystemExit("killed")

    with pytest.raises(SystemExit):
        run_batch_label(judge_of("anthropic"), rows, RunDir(tmp_path / "run"), prices=load_prices(),
                        options=BatchOptions(poll_interval=0.001), log=lambda m: None,
                        transport=DiesAfterCreate(base_url=os.environ["ANTHROPIC_BASE_URL"]))
    (rec,) = state.load_all(tmp_path / "run")
    assert rec.phase == "intent" and rec.batch_id is None
    # The lost batch ends; its results' custom ids prove it ours (a running one cannot be
    # proven, and is never attached to: tests/test_hardening_batch.py).
    import urllib.request

    (lost,) = api.anthropic_batches
    for _ in range(api.polls_to_finish):
        urllib.request.urlopen(f"{server.url}/v1/messages/batches/{lost}").read()
    manifest, logs = batch_label("anthropic", rows, tmp_path / "run", tmp_path / "cache")
    assert api.submissions["anthropic"] == 1 and any("attached to" in line for line in logs)
    assert manifest["totals"]["ok"] == 30


def test_machines_sharing_a_folder_attach_only_to_their_own_batches(fake, tmp_path):
    from schemas.ids import shard_of

    server, api = fake
    rows = make_rows(90)
    run = tmp_path / "run"
    mine = {k: [r for r in rows if shard_of(r["response_id"], 2) == k] for k in (0, 1)}

    def label(k, **opts):
        logs: list[str] = []
        m = run_batch_label(judge_of("openai"), mine[k], RunDir(run, k, 2), cache=None, prices=load_prices(),
                            options=BatchOptions(poll_interval=0.001, **opts), log=logs.append)
        return m, logs

    for k in (0, 1):
        assert label(k, batch_wait=False)[0]["state"] == "pending"
    assert api.submissions["openai"] == 2
    for k in (0, 1):
        manifest, logs = label(k)
        assert sum("attached to" in line for line in logs) == 1
        assert manifest["totals"]["rows"] == len(mine[k]) == manifest["totals"]["ok"]
    assert api.submissions["openai"] == 2
    assert set(scores_by_id(run)) == {r["response_id"] for r in rows}
    assert {r.job for r in state.load_all(run)} == {"k0-of-2-", "k1-of-2-"}


def test_openai_batch_failing_validation_records_the_reason_and_is_retried(fake, tmp_path):
    server, api = fake
    rows = make_rows(25)

    class WrongURL(OpenAIBatchTransport):
        def encode(self, custom_id, body):
            line = json.loads(super().encode(custom_id, body))
            line["url"] = "/v1/completions"
            return json.dumps(line).encode()

    manifest = run_batch_label(judge_of("openai"), rows, RunDir(tmp_path / "run"), prices=load_prices(),
                               options=BatchOptions(poll_interval=0.001), log=lambda m: None,
                               transport=WrongURL(base_url=os.environ["OPENAI_BASE_URL"]))
    assert manifest["totals"]["error"] == 25 and manifest["batches"][0]["status"] == "failed"
    errors = set(read_table(tmp_path / "run", STEP_SCORES).column("error").to_pylist())
    assert errors == {"batch failed: line 1: url must be /v1/chat/completions with method POST and a body; "
                      "line 2: url must be /v1/chat/completions with method POST and a body; "
                      "line 3: url must be /v1/chat/completions with method POST and a body"}
    manifest, _ = batch_label("openai", rows, tmp_path / "run", tmp_path / "cache")
    assert api.submissions["openai"] == 2 and manifest["totals"]["ok"] == 25
    assert len(scores_by_id(tmp_path / "run")) == 25


def test_batch_with_a_model_without_a_price_reports_unknown_cost(fake, tmp_path, capsys):
    rows = make_rows(6)
    responses = tmp_path / "responses.parquet"
    write_table(from_rows(rows, RESPONSES), responses, RESPONSES)
    run = tmp_path / "run"
    assert cli_main(["label", str(responses), "--judge", "openai:gpt-9-unpriced", "-o", str(run), "--batch",
                     "--poll-interval", "0.001", "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "cost unknown" in err and "$0.0000" not in err
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["runs"][-1]["cost_usd"] is None and manifest["totals"]["cost_usd"] is None
