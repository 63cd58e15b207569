"""`stepdpo generate --batch` through the real openai / anthropic SDKs against the loopback
policy fake with the provider batch endpoints attached (tests/fakes/policy_server.py +
tests/fakes/batch_api.py): every request inside a batch gets the same scripted answer as online,
so batch rows must equal online rows exactly; kill -9 after submit, failures inside a batch,
refusals."""

from __future__ import annotations

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
from labeler.sources.generation.runner import request_seed, task_id  # noqa: E402
from schemas.tables import RESPONSES, read_table  # noqa: E402
from stepdpo.cli import main  # noqa: E402
from tests.fakes.policy_server import (  # noqa: E402
    FakePolicyServer,
    gold_of,
    kind_of,
    problem_text,
    solution_steps,
)

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-genbatch-SECRET-0123456789"
PROBLEMS = [(3, 4), (10, 25), (7, 8), (100, 1)]
MODELS = {"openai": "openai:gpt-4o-mini", "anthropic": "anthropic:claude-haiku-4-5"}


@pytest.fixture()
def server(monkeypatch):
    with FakePolicyServer() as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        yield srv


@pytest.fixture()
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "question": problem_text(a, b), "answer": gold_of(a, b)})
                            + "\n" for i, (a, b) in enumerate(PROBLEMS)))
    return path


def gen(provider: str, problems: Path, out: Path, *extra: str) -> int:
    return main(["generate", str(problems), "--generator", MODELS[provider], "--template", "chat", "-o", str(out),
                 "--progress", "none", "--poll-interval", "0.001", *extra])


def rows_by_gid(folder: Path) -> dict[str, dict]:
    out = {}
    for r in read_table(folder, RESPONSES).to_pylist():
        gid = json.loads(r["meta"])["generation_id"]
        assert gid not in out, "a (problem, sample) was written twice"
        out[gid] = r
    return out


def without_batch_id(row: dict) -> dict:
    meta = json.loads(row["meta"])
    meta.pop("batch_id", None)
    return {**row, "meta": meta}


def all_gids(n: int) -> set[str]:
    return {task_id(f"p{i}", problem_text(a, b), k) for i, (a, b) in enumerate(PROBLEMS) for k in range(n)}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_rows_equal_online_rows_and_a_rerun_submits_nothing(provider, server, problems, tmp_path, capsys):
    api = server.attach_batches(polls_to_finish=3)
    online, batch = tmp_path / "online", tmp_path / "batch"
    assert gen(provider, problems, online, "-n", "2", "--cache-dir", str(tmp_path / "c1")) == 0
    assert server.requests == 8
    # 8 samples cut into batches of at most 5: two batches, one line per (problem, sample).
    assert gen(provider, problems, batch, "-n", "2", "--batch", "--batch-max-requests", "5",
               "--cache-dir", str(tmp_path / "c2")) == 0
    assert server.requests == 8, "batch mode sent online requests"
    assert api.submissions[provider] == 2 and api.requests_answered[provider] == 8
    got, want = rows_by_gid(batch), rows_by_gid(online)
    assert set(got) == set(want) == all_gids(2)
    assert {g: without_batch_id(r) for g, r in got.items()} == {g: without_batch_id(r) for g, r in want.items()}
    # the scripted oracle: each sample's steps follow from its per-request seed (sent by OpenAI only)
    for i, (a, b) in enumerate(PROBLEMS):
        for k in range(2):
            gid = task_id(f"p{i}", problem_text(a, b), k)
            seed = request_seed(0, gid) if provider == "openai" else 0
            assert got[gid]["steps"] == solution_steps(a, b, kind_of(seed))
            assert json.loads(got[gid]["meta"])["sample_index"] == k
    # meta names the provider batch that drew each row; run.json the batches and the batch price
    records = state.load_all(batch)
    ids = {r.batch_id for r in records}
    assert len(records) == 2 and all(r.phase == "ingested" for r in records)
    assert {json.loads(r["meta"])["batch_id"] for r in got.values()} == ids
    manifest = json.loads((batch / "run.json").read_text())
    this = manifest["runs"][-1]
    assert manifest["mode"] == "batch" and manifest["batch_discount"] == 0.5 and manifest["totals"]["samples"] == 8
    assert this["state"] == "finished" and this["missing"] == 0 and len(this["batches_submitted"]) == 2
    assert {b["batch_id"] for b in manifest["batches"]} == ids
    on_cost = json.loads((online / "run.json").read_text())["runs"][-1]["cost_usd"]
    assert this["cost_usd"] == pytest.approx(on_cost / 2, abs=1e-6) and on_cost > 0
    # a rerun submits nothing and sends nothing
    assert gen(provider, problems, batch, "-n", "2", "--batch", "--cache-dir", str(tmp_path / "c2")) == 0
    assert api.submissions[provider] == 2 and server.requests == 8
    this = json.loads((batch / "run.json").read_text())["runs"][-1]
    assert this["skipped"] == 8 and this["batches_submitted"] == [] and this["batches_attached"] == []
    # batch answers are in the online cache under the online key: an online run draws nothing
    assert gen(provider, problems, tmp_path / "again", "-n", "2", "--cache-dir", str(tmp_path / "c2")) == 0
    assert server.requests == 8 and rows_by_gid(tmp_path / "again").keys() == want.keys()
    capsys.readouterr()
    # `stepdpo batches` lists the folder's batches
    assert main(["batches", str(batch), "--offline"]) == 0
    listing = capsys.readouterr().out
    assert all(i in listing for i in ids) and "total: 2 batch(es), 8 requests" in listing


def test_kill_9_after_submit_then_rerun_attaches_and_submits_nothing(server, problems, tmp_path, capsys):
    # Many polls to finish: the batch is still running when the first process is killed.
    api = server.attach_batches(polls_to_finish=1000)
    out = tmp_path / "gen"
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEPDPO_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "stepdpo", "generate", str(problems), "--generator", MODELS["openai"],
           "--template", "chat", "-o", str(out), "-n", "3", "--batch", "--poll-interval", "0.05",
           "--progress", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(r.batch_id for r in state.load_all(out)):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    (rec,) = state.load_all(out)
    assert rec.batch_id and rec.phase == "submitted" and api.submissions["openai"] == 1
    assert not list(out.glob("part-*.parquet"))
    capsys.readouterr()
    assert main(["batches", str(out)]) == 0  # polls the provider: still running
    assert "rerun `stepdpo generate ... --batch`" in capsys.readouterr().out
    api.polls_to_finish = 2
    assert main(["generate", str(problems), "--generator", MODELS["openai"], "--template", "chat", "-o", str(out),
                 "-n", "3", "--batch", "--poll-interval", "0.001", "--progress", "none",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert api.submissions["openai"] == 1, "the rerun submitted a second batch instead of attaching"
    assert server.requests == 0
    got = rows_by_gid(out)
    assert set(got) == all_gids(3)
    assert {json.loads(r["meta"])["batch_id"] for r in got.values()} == {rec.batch_id}
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["runs"][-1]["batches_attached"] == [rec.key] and manifest["runs"][0]["state"] == "killed"
    capsys.readouterr()


@pytest.mark.parametrize("retry", ["batch", "online"])
def test_failures_inside_a_batch_are_counted_and_drawn_by_the_rerun(retry, server, problems, tmp_path, capsys):
    bad = sorted(all_gids(2))[:3]
    api = server.attach_batches(polls_to_finish=2, fault=lambda cid: "errored" if cid in bad else None)
    out = tmp_path / "gen"
    args = ("-n", "2", "--batch", "--no-cache", "--batch-retry", retry)
    assert gen("openai", problems, out, *args) == 1  # a run with holes
    err = capsys.readouterr().err
    assert "generate --batch: 3 of 8 samples failed inside a batch" in err
    assert "rerun to retry only them: stepdpo generate " in err
    assert set(rows_by_gid(out)) == all_gids(2) - set(bad)
    this = json.loads((out / "run.json").read_text())["runs"][-1]
    assert this["failed"] == 3 and this["missing"] == 3 and this["ok"] == 5
    assert gen("openai", problems, out, *args) == 0  # the holes filled
    assert set(rows_by_gid(out)) == all_gids(2)
    this = json.loads((out / "run.json").read_text())["runs"][-1]
    if retry == "batch":  # a new batch of exactly the failed samples
        assert api.submissions["openai"] == 2 and server.requests == 0 and this["ok"] == 3
        assert state.load_all(out)[-1].n_requests == 3
    else:  # online, through the engine
        assert api.submissions["openai"] == 1 and server.requests == 3 and this["retried_online"] == 3
        # The run's cost is not all at batch price: the online share is named.
        online = this["online_retry"]["cost_usd"]
        assert online > 0 and f"(${this['cost_usd'] - online:.4f} at batch price + ${online:.4f} online)" in \
            capsys.readouterr().err
    assert this["skipped"] == 5 and this["missing"] == 0
    capsys.readouterr()


def test_continuations_and_flaws_go_through_batches_as_online(server, tmp_path, capsys):
    """The body builder is shared: --flaw (and so --continue-from) rows are the same through a batch."""
    from schemas.ids import response_id
    from schemas.tables import from_rows, write_table

    server.attach_batches(polls_to_finish=1)
    rows = []
    for i, (a, b) in enumerate(PROBLEMS):
        steps = [s.split(": ", 1)[1] for s in solution_steps(a, b, "right")]
        rows.append({"response_id": response_id(problem_text(a, b), steps), "problem_id": f"p{i}", "source": "t",
                     "prompt": problem_text(a, b), "steps": steps, "final_answer": gold_of(a, b),
                     "gold_answer": gold_of(a, b)})
    src = tmp_path / "solutions.parquet"
    write_table(from_rows(rows, RESPONSES), src, RESPONSES)
    assert gen("openai", src, tmp_path / "on", "--flaw", "--flaw-step", "2", "--no-cache") == 0
    assert gen("openai", src, tmp_path / "bt", "--flaw", "--flaw-step", "2", "--no-cache", "--batch") == 0
    on, bt = rows_by_gid(tmp_path / "on"), rows_by_gid(tmp_path / "bt")
    assert len(on) == 4 and {g: without_batch_id(r) for g, r in bt.items()} == \
        {g: without_batch_id(r) for g, r in on.items()}
    assert all(r["reference_scores"] == [1.0, 0.0, None] for r in bt.values())
    capsys.readouterr()


def test_batch_refusals_and_dry_run_prices(server, problems, tmp_path, capsys):
    out = tmp_path / "x"
    cases = [
        (["--generator", f"openai-compatible:policy@{server.url}/v1", "--batch"], "openai-compatible:policy@"),
        (["--generator", "hf:./no/such/model", "--batch"], "a local model or an OpenAI-compatible server"),
        (["--generator", MODELS["openai"], "--template", "chat", "--batch", "--engine", "ray"], "--engine ray"),
        (["--generator", MODELS["openai"], "--template", "chat", "--batch", "--poll-interval", "0"],
         "--poll-interval must be positive"),
        (["--generator", MODELS["openai"], "--template", "chat", "--batch", "--batch-max-requests", "0"],
         "--batch-max-requests must be at least 1"),
    ]
    for extra, needle in cases:
        assert main(["generate", str(problems), "-o", str(out), "--progress", "none", *extra]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and err.startswith("stepdpo generate: error:"), err
    assert server.requests == 0 and not out.exists()
    # a server without batch endpoints: one line, no row, no record left to attach to, run.json says so
    assert main(["generate", str(problems), "-o", str(out), "--progress", "none", "--generator", MODELS["openai"],
                 "--template", "chat", "--batch", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "refused: HTTP 404" in err and "no provider batch API: run without --batch" in err and err.count("\n") == 1
    assert KEY not in err and state.load_all(out) == [] and server.counts["/v1/chat/completions"] == 0
    assert json.loads((out / "run.json").read_text())["runs"][-1]["state"] == "interrupted"
    # --dry-run puts the online and the batch price side by side (the transport's discount)
    dry = tmp_path / "dry"
    assert main(["generate", str(problems), "-o", str(dry), "--generator", MODELS["anthropic"], "-n", "3",
                 "--dry-run"]) == 0
    captured = capsys.readouterr()
    est = json.loads(captured.out)
    assert est["samples"] == 12 and est["batch_discount"] == 0.5
    assert est["batch_cost_usd_max"] == pytest.approx(est["online_cost_usd_max"] / 2, abs=1e-4)
    assert "with --batch ≤" in captured.err and not dry.exists()


def test_no_batch_wait_submits_and_exits_then_a_rerun_collects(server, problems, tmp_path, capsys):
    api = server.attach_batches(polls_to_finish=3)
    out = tmp_path / "gen"
    assert gen("anthropic", problems, out, "--batch", "--no-batch-wait", "--no-cache") == 0
    err = capsys.readouterr().err
    assert "1 batch(es) still running" in err and f"stepdpo batches {out}" in err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["state"] == "pending" and manifest["totals"]["samples"] == 0
    assert [b["phase"] for b in manifest["batches"]] == ["submitted"]
    assert gen("anthropic", problems, out, "--batch", "--no-cache") == 0
    assert api.submissions["anthropic"] == 1 and server.requests == 0 and set(rows_by_gid(out)) == all_gids(1)
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    capsys.readouterr()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_online_pool_holds_the_engines_concurrency_and_posts_the_batch_body(provider, monkeypatch, tmp_path):
    """The online path's transport (HOTPATH's ClientPool): 20 declared in flight, 30 asked at once:
    the fake sees 20 at a time over 20 connections; the bytes POSTed are body() exactly (what a
    batch line carries), with the SDK's own headers and key."""
    import asyncio

    from labeler.sources.generation.base import Sampling
    from labeler.sources.generation.problems import Problem
    from labeler.sources.generation.prompts import TEMPLATES
    from labeler.sources.generation.registry import create_generator
    from labeler.sources.generation.tasks import sample_tasks

    with FakePolicyServer(latency=0.2) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        generator = create_generator(MODELS[provider])
        sampling = Sampling()
        problems = [Problem(f"p{i}", problem_text(*ab), gold_of(*ab), "t") for i, ab in enumerate(PROBLEMS)]
        tasks = sample_tasks(problems, TEMPLATES["chat"], 8, sampling)[:30]
        generator.use_concurrency(20)

        async def go():
            try:
                return await asyncio.gather(*(generator.generate([t.request], sampling) for t in tasks))
            finally:
                await generator.aclose()

        answers = asyncio.run(go())
        assert len(answers) == 30 and srv.requests == 30
        assert srv.max_in_flight == 20 and len(srv.peers) == 20
        assert sorted(map(json.dumps, srv.bodies)) == sorted(json.dumps(generator.body(t.request, sampling))
                                                            for t in tasks)
        for headers in srv.headers:
            assert headers["content-type"] == "application/json" and "x-stainless-lang" in headers
            assert KEY in headers.get("authorization", "") + headers.get("x-api-key", "")


def test_the_standalone_policy_fake_serves_batches_with_failures(problems, tmp_path, monkeypatch, capsys):
    """`python -m tests.fakes.policy_server --batch --batch-fail S` (the by-hand QA route): a
    stable share of batch lines errors the first time, GET /_stats counts the submissions, and
    the rerun's second batch completes the job."""
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.policy_server", "--batch", "--batch-fail", "0.5",
                             "--polls-to-finish", "1"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        for var, value in (("OPENAI_API_KEY", KEY), ("OPENAI_BASE_URL", url + "/v1")):
            monkeypatch.setenv(var, value)

        def stats() -> dict:
            return json.loads(urllib.request.urlopen(url + "/_stats", timeout=10).read())

        out, args = tmp_path / "gen", ("-n", "4", "--batch", "--cache-dir", str(tmp_path / "cache"))
        assert gen("openai", problems, out, *args) == 1  # samples failed in the batch: holes
        first = len(read_table(out, RESPONSES))
        assert 0 < first < 16 and "failed inside a batch" in capsys.readouterr().err
        assert stats()["batch_submissions"]["openai"] == 1 and stats()["total"] == 0
        assert gen("openai", problems, out, *args) == 0
        assert set(rows_by_gid(out)) == all_gids(4)
        assert stats()["batch_submissions"]["openai"] == 2 and stats()["batch_requests"]["openai"] == 16
    finally:
        proc.kill()
        proc.wait()


def test_continue_from_through_a_batch_gives_the_online_continuations(server, problems, tmp_path, capsys):
    """--continue-from --at first-error with --batch: the continuations of each wrong solution's
    correct prefix are the online ones (same body builder, same seeds)."""
    from schemas.tables import STEP_SCORES

    server.attach_batches(polls_to_finish=1)
    assert gen("openai", problems, tmp_path / "gen", "-n", "3", "--no-cache") == 0
    assert main(["label", str(tmp_path / "gen"), "--judge", "gsm8k-calc", "-o", str(tmp_path / "located"),
                 "--progress", "none", "--no-cache"]) == 0
    wrong = {r["response_id"] for r in read_table(tmp_path / "located", STEP_SCORES).to_pylist()
             if r["scores"] and 0.0 in r["scores"]}
    assert wrong, "the script must produce wrong solutions"
    cont = ["--continue-from", str(tmp_path / "located"), "--generator", MODELS["openai"], "--template", "chat",
            "-n", "2", "--progress", "none", "--poll-interval", "0.001", "--no-cache"]
    assert main(["generate", *cont, "-o", str(tmp_path / "on")]) == 0
    online_requests = server.requests
    assert main(["generate", *cont, "-o", str(tmp_path / "bt"), "--batch"]) == 0
    assert server.requests == online_requests
    on, bt = rows_by_gid(tmp_path / "on"), rows_by_gid(tmp_path / "bt")
    assert len(bt) == 2 * len(wrong) and {json.loads(r["meta"])["continues"] for r in bt.values()} == wrong
    assert {g: without_batch_id(r) for g, r in bt.items()} == {g: without_batch_id(r) for g, r in on.items()}
    capsys.readouterr()
