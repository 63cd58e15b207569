"""Several `stepdpo label` processes on one machine and one run folder (`--num-shards N
--shard-index K` at once): the multi-process recipe for the highest rate-limit tiers (issue 18).

Real processes, real HTTP to the loopback fake, real kill -9: each process labels its own hash
share under its own lock and shard names, and a rerun after a crash labels every response once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.llm_server import FakeLLMServer, FaultConfig
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent


def _start(inp: Path, run: Path, k: int, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepdpo", "label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(run),
         "--num-shards", "2", "--shard-index", str(k), "--concurrency", "2", "--shard-size", "10",
         "--progress", "none"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_two_processes_on_one_folder_then_kill_9_of_one_then_rerun_labels_every_response_once(tmp_path, gsm8k_test_full,
                                                                                               monkeypatch, capsys):
    rows = gsm8k_rows([gsm8k_test_full], 120)
    inp = write_responses(rows, tmp_path / "r.parquet")
    run = tmp_path / "run"
    with FakeLLMServer(FaultConfig(latency_s=0.05)) as fake:
        env = dict(os.environ, OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=fake.url + "/v1",
                   STEPDPO_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
        procs = [_start(inp, run, k, env) for k in (0, 1)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(run.glob("part-k1-of-2-*.parquet"))) < 2:
            assert procs[1].poll() is None, procs[1].stderr.read().decode() if procs[1].stderr else ""
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGKILL)
        assert procs[1].wait() == -signal.SIGKILL
        _, err = procs[0].communicate(timeout=120)
        assert procs[0].returncode == 0, err.decode()[-2000:]
        in_shards = {r for p in run.glob("part-*.parquet") for r in pq.read_table(p).column("response_id").to_pylist()}
        assert 0 < len(in_shards) < 120  # process 0's half whole, process 1's cut short
        first = fake.total_requests

        # The rerun, a plain command (no --num-shards): the other jobs' ok rows count as done.
        fake.reset_counts()
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
        monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
        rc = main(["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(run), "--progress", "none"])
        err = capsys.readouterr().err
        assert rc == 0
        # Its own job's totals are only what it labeled; the folder's count is said too.
        assert f"label: {run} holds 120 responses from every job that shares it (ok 120, error 0)" in err, err
        again = fake.total_requests
    out = read_table(run, STEP_SCORES).to_pylist()
    ids = [r["response_id"] for r in out]
    assert len(ids) == len(set(ids)) == 120 and set(ids) == {r["response_id"] for r in rows}
    assert all(r["status"] == "ok" for r in out)
    # Answers received by the killed process but not yet in a shard came back from the cache.
    assert again <= 120 - len(in_shards) and first + again >= 120
