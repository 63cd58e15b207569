"""Issue #16 items 11 and 14: what a stopped or killed run leaves behind.

Real processes get real signals (SIGINT, SIGTERM, SIGKILL) mid-run; a full disk is a real write
failure (the kernel's per-file size limit, RLIMIT_FSIZE, makes a write of a too-big shard fail
with EFBIG as ENOSPC would). The oracles are the fake server's own request count and the input
row set.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import stat
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


@pytest.fixture
def env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-run")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return tmp_path


def label_cmd(inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stepdpo.cli", "label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(out),
            "--progress", "none", *extra]


def label(capsys, inp: Path, out: Path, *extra: str, judge: str = "openai:gpt-4o-mini") -> tuple[int, str]:
    rc = main(["label", str(inp), "--judge", judge, "-o", str(out), "--progress", "none", *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def wait_for(cond, proc: subprocess.Popen, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert proc.poll() is None, f"exited before {what}: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"no {what} within {limit}s"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_writes_every_answer_received(env, fake, capsys, sig):
    """Ctrl-C threw away the answers in flight (~19 paid answers); SIGTERM lost the whole
    unwritten shard. Now every request the server answered is a row, and the rerun pays for
    exactly the rest."""
    rows = gsm8k_rows(GSM8K, 40)
    inp = write_responses(rows, env / "in.parquet")
    fake.faults = FaultConfig(latency_s=0.3)
    proc = subprocess.Popen(label_cmd(inp, env / "run", "--concurrency", "4"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: fake.total_requests >= 6, proc, "6 requests")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"label: {sig.name}: no new requests; waiting for the" in err
    assert "stepdpo label: interrupted; rerun the same command to resume" in err and "Traceback" not in err
    sent = fake.total_requests
    out = read_table(env / "run", STEP_SCORES).to_pylist()
    assert len(out) == sent and sent < 40  # every answer received is written, none is missing
    assert all(r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]] for r in out)
    manifest = json.loads((env / "run" / "run.json").read_text())
    assert manifest["state"] == "interrupted" and manifest["runs"][-1]["requests"] == sent

    fake.faults = FaultConfig()
    fake.reset_counts()
    rc, _ = label(capsys, inp, env / "run", "--no-cache")
    assert rc == 0 and fake.total_requests == 40 - sent  # nothing paid twice, nothing lost
    assert sorted(r["response_id"] for r in read_table(env / "run", STEP_SCORES).to_pylist()) == \
        sorted(r["response_id"] for r in rows)


def test_a_killed_runs_spend_is_in_run_json(env, fake, capsys):
    rows = gsm8k_rows(GSM8K, 60)
    inp = write_responses(rows, env / "in.parquet")
    fake.faults = FaultConfig(latency_s=0.02)
    run = env / "run"
    proc = subprocess.Popen(label_cmd(inp, run, "--concurrency", "2", "--shard-size", "5"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(run.glob("part-*.parquet"))) >= 3, proc, "3 shards")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_requests = fake.total_requests
    manifest = json.loads((run / "run.json").read_text())
    [this] = manifest["runs"]
    assert manifest["state"] == "running" and this["state"] == "running"  # as it stood when killed
    assert 10 <= this["requests"] <= killed_requests and this["cost_usd"] > 0  # up to its last checkpoint

    fake.faults = FaultConfig()
    rc, _ = label(capsys, inp, run)
    assert rc == 0
    manifest = json.loads((run / "run.json").read_text())
    first, second = manifest["runs"]
    assert (first["state"], second["state"]) == ("killed", "finished")
    assert first["requests"] == this["requests"]  # the killed run's spend is kept, marked killed
    spend = manifest["spend"]
    assert spend["killed_runs"] == 1 and spend["runs"] == 2
    assert spend["requests"] == first["requests"] + second["requests"]
    assert spend["cost_usd"] == pytest.approx(first["cost_usd"] + second["cost_usd"])
    assert manifest["totals"]["rows"] == 60


def _small_files(limit: int):
    def apply() -> None:  # in the child: every file it writes is capped at `limit` bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_output_disk_is_one_line_and_the_answers_wait_in_the_cache(env, fake, capsys):
    """A shard that cannot be written stopped the run with a traceback and lost the answers."""
    import random

    from schemas.ids import response_id

    rows = gsm8k_rows(GSM8K, 30)
    big = rows[12]  # a solution with a 3 MB step: its shard outgrows the 1 MB files allowed
    noise = random.Random(0).randbytes(2_300_000).hex()[:3_000_000]
    big["steps"] = [*big["steps"], noise]
    big["response_id"] = response_id(big["prompt"], big["steps"])
    inp = write_responses(rows, env / "in.parquet")
    run = env / "run"
    proc = subprocess.run(label_cmd(inp, run, "--concurrency", "1", "--shard-size", "5"), cwd=REPO,
                          capture_output=True, text=True, timeout=120, preexec_fn=_small_files(1_000_000))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len([line for line in lines if line.startswith("stepdpo label:")]) == 1, proc.stderr
    assert re.search(r"stepdpo label: error: stopped: cannot write a shard in .*File too large.*; the \d+ answers "
                     r"received since the last shard are in the judge cache: free space, then rerun", lines[-1])
    first = fake.total_requests
    written = sum(pq.read_table(p).num_rows for p in run.glob("part-*.parquet"))
    assert written == 10 and 15 <= first < 30  # shards 0-1 landed; shard 2 (the big row's) did not
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((run / "run.json").read_text())["state"] == "aborted"

    fake.reset_counts()  # space freed: the rerun pays only for what was never answered
    rc, log = label(capsys, inp, run)
    assert rc == 0, log
    assert first + fake.total_requests == 30
    out = read_table(run, STEP_SCORES).to_pylist()
    assert sorted(r["response_id"] for r in out) == sorted(r["response_id"] for r in rows)
    assert all(r["status"] == "ok" for r in out)


def test_output_files_get_the_umask_not_0600(env, capsys):
    inp = write_responses(gsm8k_rows(GSM8K, 4), env / "in.parquet")
    old = os.umask(0o027)
    try:
        rc, _ = label(capsys, inp, env / "run", "--no-cache", judge="gsm8k-calc")
    finally:
        os.umask(old)
    assert rc == 0
    files = [*(env / "run").glob("part-*.parquet"), env / "run" / "run.json"]
    assert len(files) == 2
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, (f, oct(f.stat().st_mode))


def test_temp_files_of_killed_writers_are_cleaned_by_the_next_run(env, capsys):
    inp = write_responses(gsm8k_rows(GSM8K, 4), env / "in.parquet")
    run = env / "run"
    assert label(capsys, inp, run, "--no-cache", judge="gsm8k-calc")[0] == 0
    # What atomic_open leaves when its writer is killed between mkstemp and rename.
    (run / "batches").mkdir()
    left = [run / ".part-00001.parquet.a1b2c3.tmp", run / ".run.json.x_y9.tmp",
            run / "batches" / ".openai-20260101T000000-0123456789.json.q8w7e6.tmp"]
    other_job = run / ".part-k1-of-2-00000.parquet.zz11.tmp"  # another machine's, maybe being written
    stale_other = run / ".run-k1-of-2.json.old111.tmp"
    for p in [*left, other_job, stale_other]:
        p.write_bytes(b"partial")
    os.utime(stale_other, (time.time() - 7200, time.time() - 7200))
    assert label(capsys, inp, run, "--no-cache", judge="gsm8k-calc")[0] == 0
    assert [p for p in [*left, stale_other] if p.exists()] == []
    assert other_job.exists()


def test_a_cpu_bound_judge_shows_progress(env, capsys):
    """gsm8k-calc never awaits: the progress line never printed until the end (16 minutes
    of silence on 1M rows)."""
    rows = gsm8k_rows(GSM8K, 1200)
    inp = write_responses(rows, env / "in.parquet")
    rc, log = label(capsys, inp, env / "run", "--no-cache", "--progress", "log", "--log-interval", "0.02", "--concurrency", "1",
                    judge="gsm8k-calc")
    assert rc == 0
    lines = [line for line in log.splitlines() if line.startswith("label: ")]
    during = [line for line in lines if re.match(r"label: \d+/1200 rows", line)]
    assert during, log
    assert any(int(re.match(r"label: (\d+)/", line).group(1)) < 1200 for line in during), lines


def test_a_second_signal_stops_at_once(env, fake):
    """The drain waits for requests in flight; a second Ctrl-C does not."""
    rows = gsm8k_rows(GSM8K, 10)
    inp = write_responses(rows, env / "in.parquet")
    fake.faults = FaultConfig(latency_s=60)  # answers that would take a minute
    proc = subprocess.Popen(label_cmd(inp, env / "run", "--concurrency", "2"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: fake.total_requests >= 2, proc, "2 requests")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - start < 15, err
    assert "label: SIGINT again: stopping now" in err and "Traceback" not in err
    assert json.loads((env / "run" / "run.json").read_text())["state"] == "interrupted"
    assert fake.total_requests == 2  # nothing new was sent after the first signal
