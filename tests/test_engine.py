"""`stepdpo label` end to end: the real SDKs over real HTTP to the loopback fake server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.llm_server import FaultConfig, score_of
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent
GSM8K = [REPO / "data" / "gsm8k" / "test.jsonl"]  # bundled: 1,319 real problems
KEY = "sk-test-7f3a9c2e5b1d-THIS-IS-THE-SECRET-KEY"
ANTHROPIC_KEY = "sk-ant-test-0a1b2c3d-ANTHROPIC-SECRET"
# --timeout is one deadline per request: generous, so a busy 2-core box does not time out healthy ones.
FAST = ["--backoff", "0.01", "--max-backoff", "0.05", "--timeout", "3", "--progress", "log",
        "--log-interval", "0.5"]


@pytest.fixture
def env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def responses(tmp_path: Path, n: int, name: str = "responses.parquet") -> tuple[Path, list[dict]]:
    rows = gsm8k_rows(GSM8K, n)
    if len(rows) < n:
        raise AssertionError(f"the bundled GSM8K test set has fewer than {n} rows")
    return write_responses(rows, tmp_path / name), rows


def label(capsys, inp: Path, out: Path, *extra: str, judge: str = "openai:gpt-4o-mini") -> tuple[int, str]:
    rc = main(["label", str(inp), "--judge", judge, "-o", str(out), *FAST, *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def output(run: Path):
    return read_table(run, STEP_SCORES).to_pylist()


def assert_exact_set(run: Path, rows: list[dict]) -> list[dict]:
    out = output(run)
    ids = [r["response_id"] for r in out]
    assert len(ids) == len(set(ids)), "a response appears twice"
    assert set(ids) == {r["response_id"] for r in rows}
    return out


def test_faults_every_row_once_then_rerun_finishes_errors(env, fake, capsys, transport):
    inp, rows = responses(env, 500)
    fake.faults = FaultConfig(p429=0.20, p500=0.05, p_slow=0.02, p_malformed=0.03, p_schema=0.02,
                              slow_s=1.5, retry_after=0.01, seed=7)
    rc, log = label(capsys, inp, env / "run", "--max-attempts", "3", "--shard-size", "64", "--timeout", "0.5",
                    "--http-transport", transport)
    assert rc == 1  # finished with error rows: exit 1 and the line naming the rerun
    assert "rerun to retry only them: stepdpo label " in log
    for fault in ("429", "500", "slow", "malformed", "schema"):
        assert fake.fault_counts[fault] > 0, fault
    out = assert_exact_set(env / "run", rows)
    by_status = {s: [r for r in out if r["status"] == s] for s in ("ok", "error")}
    assert len(by_status["ok"]) + len(by_status["error"]) == 500
    assert by_status["error"], "with ~30% failing attempts and 3 tries some rows must end in error"
    for r in by_status["ok"]:
        assert r["scores"] == [score_of(s) for s in r["steps"]]
        assert 1 <= r["attempts"] <= 3 and r["input_tokens"] > 0 and r["cost_usd"] > 0
    for r in by_status["error"]:
        assert r["scores"] is None and r["attempts"] == 3
        assert r["error"].startswith("gave up after retries: RetryableError: ")
    assert "rows/s" in log and "retries" in log
    manifest = json.loads((env / "run" / "run.json").read_text())
    assert manifest["totals"]["rows"] == 500 and manifest["totals"]["error"] == len(by_status["error"])
    assert manifest["runs"][-1]["retries"] > 0
    # Malformed answers were billed too: the run's spend exceeds what its ok rows cost.
    assert manifest["runs"][-1]["cost_usd"] > manifest["totals"]["cost_usd"] > 0

    # Second run, healthy server: only the error rows are requested, and they replace their rows.
    fake.faults = FaultConfig()
    fake.reset_counts()
    rc, _ = label(capsys, inp, env / "run", "--max-attempts", "3")
    assert rc == 0
    assert fake.total_requests == len(by_status["error"])
    out = assert_exact_set(env / "run", rows)
    assert all(r["status"] == "ok" for r in out)
    assert all(r["scores"] == [score_of(s) for s in r["steps"]] for r in out)

    # Third run of a finished job: zero requests.
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run")
    assert rc == 0 and fake.total_requests == 0
    assert "0 requests" in log
    manifest = json.loads((env / "run" / "run.json").read_text())
    assert [r["state"] for r in manifest["runs"]] == ["finished"] * 3
    assert manifest["totals"] == {**manifest["totals"], "rows": 500, "ok": 500, "error": 0}


def test_sigkill_mid_run_then_rerun_gives_exact_set(env, fake, capsys, transport):
    inp, rows = responses(env, 200)
    fake.faults = FaultConfig(latency_s=0.05)
    run = env / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepdpo.cli", "label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(run),
         "--concurrency", "2", "--shard-size", "10", "--progress", "none", "--http-transport", transport],
        cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(run.glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    shards = list(run.glob("part-*.parquet"))
    assert shards, "the run should have written shards before it was killed"
    rows_at_kill = sum(pq.read_table(p).num_rows for p in shards)
    assert rows_at_kill < 200
    requested_before = fake.total_requests

    fake.faults = FaultConfig()
    fake.reset_counts()
    rc, _ = label(capsys, inp, run, "--shard-size", "10", "--http-transport", transport)
    assert rc == 0
    out = assert_exact_set(run, rows)
    assert all(r["status"] == "ok" for r in out)
    for p in run.glob("*.parquet"):
        assert pq.read_table(p).num_rows > 0  # every shard readable
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    # Answers received before the kill but not yet in a shard came back from the cache.
    assert fake.total_requests <= 200 - rows_at_kill
    assert fake.total_requests + requested_before >= 200


def test_fingerprint_and_cache(env, fake, capsys, tmp_path):
    inp, rows = responses(env, 20)
    rc, _ = label(capsys, inp, env / "a")
    assert rc == 0 and fake.total_requests == 20
    fp = json.loads((env / "a" / "run.json").read_text())["judge_fingerprint"]

    fake.reset_counts()  # same command, new folder: every answer from the cache
    rc, log = label(capsys, inp, env / "b")
    assert rc == 0 and fake.total_requests == 0 and "20 from cache" in log
    scores_a = {r["response_id"]: r["scores"] for r in output(env / "a")}
    assert {r["response_id"]: r["scores"] for r in output(env / "b")} == scores_a
    assert all(r["attempts"] == 0 for r in output(env / "b"))  # 0 attempts marks a cache hit
    assert json.loads((env / "b" / "run.json").read_text())["judge_fingerprint"] == fp

    template = tmp_path / "my_rubric.txt"
    default = (REPO / "labeler" / "judges" / "templates" / "step_judge_v1.txt").read_text()
    template.write_text(default.replace("meticulous", "strict"))
    fake.reset_counts()
    rc, _ = label(capsys, inp, env / "c", "--template", str(template))
    assert rc == 0 and fake.total_requests == 20
    fp_c = json.loads((env / "c" / "run.json").read_text())["judge_fingerprint"]
    assert fp_c != fp
    assert "strict grader" in fake.requests[0]["body"]["messages"][0]["content"]

    fake.reset_counts()
    rc, _ = label(capsys, inp, env / "d", judge="openai:gpt-4o")
    assert rc == 0 and fake.total_requests == 20
    assert json.loads((env / "d" / "run.json").read_text())["judge_fingerprint"] not in (fp, fp_c)

    fake.reset_counts()
    rc, _ = label(capsys, inp, env / "e", "--no-cache")
    assert rc == 0 and fake.total_requests == 20

    # A folder labeled by one judge refuses another judge's rows.
    rc, log = label(capsys, inp, env / "a", judge="openai:gpt-4o")
    assert rc == 2 and "write to a new -o folder" in log


def _files_contain(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_api_keys_never_written(env, fake, capsys):
    inp, rows = responses(env, 30)
    fake.faults = FaultConfig(p429=0.2, p500=0.1, retry_after=0.01, seed=3)
    rc, log1 = label(capsys, inp, env / "run-openai")
    assert rc == 0
    rc, log2 = label(capsys, inp, env / "run-claude", judge="anthropic:claude-haiku-4-5")
    assert rc == 0
    # A 401 whose message echoes the key the server got: the run stops with one clear line.
    fake.faults = FaultConfig(script=["401"], retry_after=0.01)
    rc, log3 = label(capsys, inp, env / "run-401", "--no-cache", "--concurrency", "1")
    assert rc == 2
    assert "HTTP 401" in log3 and "stopped" in log3
    assert json.loads((env / "run-401" / "run.json").read_text())["state"] == "aborted"
    # The keys really were sent (in headers) ...
    assert any(KEY in r["headers"].get("authorization", "") for r in fake.requests)
    # ... and are nowhere else: not in bodies, shards, run.json, the cache, or any log line.
    for r in fake.requests:
        assert KEY not in json.dumps(r["body"]) and ANTHROPIC_KEY not in json.dumps(r["body"])
    for key in (KEY, ANTHROPIC_KEY):
        assert _files_contain(env, key.encode()) == []
        assert key not in log1 + log2 + log3
    assert list((env / "cache").rglob("*"))  # the cache was written


def test_missing_key_fails_before_any_work(env, fake, capsys, monkeypatch):
    inp, _ = responses(env, 5)
    monkeypatch.delenv("OPENAI_API_KEY")
    rc, log = label(capsys, inp, env / "run")
    assert rc == 2
    assert "stepdpo label: error: judge openai:gpt-4o-mini needs an API key: set the OPENAI_API_KEY" in log
    assert not (env / "run").exists() and fake.total_requests == 0


def test_dry_run_sends_nothing(env, fake, capsys):
    inp, rows = responses(env, 40)
    rc = main(["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(env / "run"), "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 0 and fake.total_requests == 0 and not (env / "run").exists()
    est = json.loads(captured.out)
    assert est["rows"] == 40 and est["requests"] == 40
    assert est["steps"] == sum(len(r["steps"]) for r in rows)
    assert est["cost_usd"] > 0 and "dry run: 40 responses" in captured.err


def test_split_across_machines(env, fake, capsys):
    inp, rows = responses(env, 60)
    for k in (0, 1):
        rc, _ = label(capsys, inp, env / "run", "--num-shards", "2", "--shard-index", str(k))
        assert rc == 0
    assert fake.total_requests == 60
    names = sorted(p.name for p in (env / "run").iterdir() if not p.name.endswith(".lock"))
    assert names == ["part-k0-of-2-00000.parquet", "part-k1-of-2-00000.parquet",
                     "run-k0-of-2.json", "run-k1-of-2.json"]
    parts = [pq.read_table(env / "run" / n).column("response_id").to_pylist() for n in names[:2]]
    assert not set(parts[0]) & set(parts[1]) and parts[0] and parts[1]
    assert_exact_set(env / "run", rows)


def test_anthropic_overloaded_and_prompt_cache(env, fake, capsys):
    base = gsm8k_rows(GSM8K, 20)
    # Two solutions per problem (the second drops its last step), as with sampled solutions.
    from schemas.ids import response_id

    rows = []
    for r in base:
        rows.append(r)
        steps = r["steps"][:-1] or ["I give up."]
        rows.append({**r, "steps": steps, "response_id": response_id(r["prompt"], steps)})
    inp = write_responses(rows, env / "two.parquet")
    fake.faults = FaultConfig(p529=0.25, retry_after=0.01, seed=5)
    rc, _ = label(capsys, inp, env / "run", "--concurrency", "1", judge="anthropic:claude-haiku-4-5")
    assert rc == 0 and fake.fault_counts["529"] > 0
    out = assert_exact_set(env / "run", rows)
    assert all(r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]] for r in out)
    # The second solution of each problem reads the rubric + problem prefix from the prompt cache.
    assert sum(r["cached_tokens"] > 0 for r in out) >= 20
    cached = [r for r in out if r["cached_tokens"] > 0]
    assert all(r["cost_usd"] < 1.0 * r["input_tokens"] / 1e6 + 5.0 * r["output_tokens"] / 1e6 for r in cached)


def test_server_rate_limit_learned_from_headers(env, fake, capsys, transport):
    inp, rows = responses(env, 40)
    fake.faults = FaultConfig(rpm_limit=600, burst_s=1.0, retry_after=0.2)  # 10 requests/s
    start = time.monotonic()
    rc, _ = label(capsys, inp, env / "run", "--concurrency", "8", "--max-attempts", "10",
                  "--http-transport", transport)
    elapsed = time.monotonic() - start
    assert rc == 0
    out = assert_exact_set(env / "run", rows)
    assert all(r["status"] == "ok" for r in out)  # 429s are retried, nothing is lost
    run = json.loads((env / "run" / "run.json").read_text())["runs"][-1]
    assert run["limits"]["rpm"] == 600  # tightened from x-ratelimit-limit-requests
    accepted = fake.total_requests - fake.fault_counts["429"]
    assert accepted == 40 and elapsed >= (40 - 10) / 10 * 0.9


def test_progress_display_modes(env, fake, capsys):
    inp, _ = responses(env, 10)
    rc, log = label(capsys, inp, env / "rich", "--progress", "rich")
    assert rc == 0 and "label: finished: 10/10 rows" in log and "ok" in log
    rc, log = label(capsys, inp, env / "quiet", "--progress", "none")
    assert rc == 0 and "label: finished" not in log and "label: 10 rows in" in log


def test_repeated_sigkill_with_errors_converges(env, fake, capsys):
    """Kill runs at several points while error rows are being superseded; the folder converges."""
    inp, rows = responses(env, 120)
    run = env / "run"
    fake.faults = FaultConfig(latency_s=0.03, p500=0.3, seed=11)
    cmd = [sys.executable, "-m", "stepdpo.cli", "label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(run),
           "--concurrency", "2", "--shard-size", "5", "--max-attempts", "1", "--progress", "none"]
    for wanted in (2, 5, 9):  # kill once the folder holds this many shards (or the run ends)
        proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        before = {p.name: p.stat().st_mtime_ns for p in run.glob("part-*.parquet")}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            now = {p.name: p.stat().st_mtime_ns for p in run.glob("part-*.parquet")}
            if len(set(now.items()) - set(before.items())) >= wanted:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for p in run.glob("*.parquet"):
            pq.read_table(p)  # every shard readable after every kill
    fake.faults = FaultConfig()
    rc, _ = label(capsys, inp, run)
    assert rc == 0
    out = assert_exact_set(run, rows)
    assert all(r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]] for r in out)


def test_limit_and_num_shards_must_be_positive(env, capsys):
    from labeler.engine.runner import load_rows

    inp, rows = responses(env, 5)
    assert load_rows(inp, limit=0) == []  # was one row
    assert len(load_rows(inp, limit=2)) == 2
    for opts, message in ((["--limit", "0"], "--limit must be at least 1"),
                          (["--limit", "-3"], "--limit must be at least 1"),
                          (["--num-shards", "0"], "--num-shards must be at least 1")):
        rc, log = label(capsys, inp, env / "run", *opts)
        assert rc == 2 and message in log
    assert not (env / "run").exists()


def test_plain_run_after_sharded_jobs_in_one_folder_labels_nothing_twice(env, fake, capsys):
    inp, rows = responses(env, 30)
    for k in range(3):
        assert label(capsys, inp, env / "run", "--num-shards", "3", "--shard-index", str(k))[0] == 0
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run", "--no-cache")  # e.g. to finish up after a machine died
    assert rc == 0 and fake.total_requests == 0, log
    assert_exact_set(env / "run", rows)
    # Split another way, still nothing twice.
    assert label(capsys, inp, env / "run", "--num-shards", "2", "--shard-index", "1", "--no-cache")[0] == 0
    assert fake.total_requests == 0
    assert_exact_set(env / "run", rows)
    # And another judge may not write into the folder of this one through another job name.
    rc, log = label(capsys, inp, env / "run", "--num-shards", "4", "--shard-index", "0", judge="openai:gpt-4o")
    assert rc == 2 and "write to a new -o folder" in log


def test_refused_judge_leaves_the_run_folder_as_it_was(env, fake, capsys):
    inp, rows = responses(env, 10)
    assert label(capsys, inp, env / "run")[0] == 0
    before = (env / "run" / "run.json").read_text()
    rc, log = label(capsys, inp, env / "run", judge="gsm8k-calc")
    assert rc == 2 and "write to a new -o folder" in log
    assert (env / "run" / "run.json").read_text() == before  # was rewritten with the refused judge
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run")  # and the right judge was then refused too
    assert rc == 0 and fake.total_requests == 0, log


def test_dry_run_counts_only_what_a_rerun_would_pay_for(env, fake, capsys):
    inp, rows = responses(env, 20)
    assert label(capsys, inp, env / "run", "--limit", "12")[0] == 0
    # 12 done in the folder; 12 also in the cache, which a fresh folder would reuse.
    for out, done, cached, todo in ((env / "run", 12, 0, 8), (env / "fresh", 0, 12, 8)):
        rc = main(["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(out), "--dry-run"])
        captured = capsys.readouterr()
        est = json.loads(captured.out)
        assert rc == 0 and (est["already_done"], est["cached"], est["rows"]) == (done, cached, todo)
        assert f"dry run: {todo} responses ({done} already done, {cached} in the cache: free)" in captured.err
    assert not (env / "fresh").exists()
    rc = main(["label", str(inp), "--judge", "gsm8k-calc", "-o", str(env / "run"), "--dry-run"])
    assert rc == 2 and "write to a new -o folder" in capsys.readouterr().err


def test_progress_says_stopped_not_finished_when_interrupted():
    import asyncio
    import io

    from labeler.engine.progress import Progress, Stats

    async def go(fail: bool) -> str:
        stream = io.StringIO()
        try:
            async with Progress(Stats(), "log", 60, stream=stream):
                if fail:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        return stream.getvalue()

    assert asyncio.run(go(False)).startswith("label: finished: ")
    assert asyncio.run(go(True)).startswith("label: stopped: ")


def test_model_without_a_price_reports_unknown_cost_not_zero(env, fake, capsys):
    """`openai:` with a model missing from the price table spent tokens but showed $0.0000."""
    from labeler.inspection.stats import load as load_run
    from labeler.inspection.stats import summarize

    inp, rows = responses(env, 5)
    rc, log = label(capsys, inp, env / "run", judge="openai:gpt-9-unpriced")
    assert rc == 0 and "cost unknown (no price for this model" in log and "$0.0000" not in log
    manifest = json.loads((env / "run" / "run.json").read_text())
    assert manifest["totals"]["cost_usd"] is None and manifest["runs"][-1]["cost_usd"] is None
    assert manifest["totals"]["input_tokens"] > 0
    rep = summarize(load_run(env / "run"))
    assert rep["cost_usd"] is None and rep["judges"][0]["cost_usd"] is None
    assert rep["judges"][0]["cost_per_1k_steps"] is None


def test_second_label_of_the_same_job_is_refused_while_the_first_runs(env, fake, capsys):
    """Two identical commands would both pay for every row and overwrite each other's shards."""
    from labeler.engine.rundir import RunDir

    inp, rows = responses(env, 6)
    with RunDir(env / "run").locked():  # the first `stepdpo label`, still running
        rc, log = label(capsys, inp, env / "run")
        assert rc == 2 and "another `stepdpo label` is writing this run folder" in log
        assert fake.total_requests == 0
        # Another machine's job of a --num-shards split has its own lock.
        assert label(capsys, inp, env / "run", "--num-shards", "2", "--shard-index", "1")[0] == 0
    assert label(capsys, inp, env / "run")[0] == 0
    assert_exact_set(env / "run", rows)


def test_huge_retry_after_is_held_to_max_backoff(env, fake, capsys, transport):
    """A 429 with retry-after: 3600 stalled every request for an hour despite --max-backoff."""
    inp, rows = responses(env, 3)
    fake.faults = FaultConfig(script=["429"], retry_after=3600)
    start = time.monotonic()
    rc, log = label(capsys, inp, env / "run", "--max-backoff", "0.2", "--http-transport", transport)
    assert rc == 0 and time.monotonic() - start < 8, log
    assert_exact_set(env / "run", rows)


def test_output_folder_of_another_kind_is_named_not_dumped_as_an_arrow_schema(env, capsys):
    inp, rows = responses(env, 3)
    other = env / "not-a-run"
    write_responses(rows, other / "part-00000.parquet")  # e.g. -o naming a pairs or responses folder
    rc, log = label(capsys, inp, other, judge="gsm8k-calc")
    assert rc == 2 and "a 'responses' file, not a labeled shard" in log and "choose another -o folder" in log
    assert len(log.strip().splitlines()) == 1


def test_repeated_solutions_are_labeled_once_and_the_user_is_told(env, fake, capsys):
    """A generate folder often holds one text several times (samples that agree): label scores
    each solution once, and says so instead of silently writing fewer rows than the input has."""
    rows = gsm8k_rows(GSM8K, 5)
    inp = write_responses(rows + rows[:2], env / "responses.parquet")
    rc, log = label(capsys, inp, env / "run", judge="gsm8k-calc")
    assert rc == 0 and f"label: note: 2 row(s) of {inp} repeat an earlier row's solution" in log
    assert_exact_set(env / "run", rows)
    rc, log = label(capsys, write_responses(rows, env / "distinct.parquet"), env / "run2", judge="gsm8k-calc")
    assert rc == 0 and "repeat an earlier" not in log
