"""A server that dies MID-run stops `label` and `generate` early (issue #18, QA's dead-server finding).

The check (labeler/engine/stopping.py ``DownProbe``) is tested twice: as a pure rule with a fake
clock (which outcomes count, which reset the streak, the time window), and end to end: the real
SDKs over real HTTP to the loopback fakes, which answer the first K requests and then drop every
connection unanswered, as a killed server does. The oracle is the fake's own count: exactly K
answers were sent, so exactly K rows (samples) must be in the folder after the stop, and a rerun
against the revived server must ask for exactly the rest and end with the input set, each once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from labeler.engine.stopping import DownProbe, ride_out_s
from schemas.tables import RESPONSES, STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.llm_server import FaultConfig
from tests.fakes.policy_server import write_problems
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent
GSM8K = [REPO / "data" / "gsm8k" / "test_sample.jsonl"]


# -- the rule ------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_ride_out_is_the_retry_waits_of_one_request():
    assert ride_out_s(1.0, 60.0, 6) == 31.0  # 1 + 2 + 4 + 8 + 16: the defaults
    assert ride_out_s(1.0, 5.0, 6) == 1 + 2 + 4 + 5 + 5  # each wait held to --max-backoff
    assert ride_out_s(1.0, 60.0, 1) == 0.0  # no retry: nothing to ride out


def test_mid_run_needs_n_late_failures_and_the_window_and_any_answer_resets_it():
    clock = Clock()
    probe = DownProbe(3, window_s=10.0, kept="the rows are kept", clock=clock)
    assert probe.record(None, 99.0) is None  # an answer: mid-run from now on
    # Four requests in flight when the server died fail at once: started before the streak, not counted.
    for _ in range(4):
        assert probe.record("connection error", 99.5, "connection error: reset") is None
    clock.t = 101.0
    for _ in range(3):  # three retries sent after the first failure: n reached, but 1 s < the window
        assert probe.record("connection error", 100.5) is None
    clock.t = 109.9
    assert probe.record("HTTP 503", 105.0) is None  # still inside the window
    clock.t = 110.0
    line = probe.record("HTTP 503", 105.0)
    assert line is not None and line.startswith("the server stopped answering mid-run: 9 requests failed in the "
                                                "10 s since its last answer, none answered (7 × connection error, "
                                                "2 × HTTP 503; e.g. connection error: reset); the rows are kept;")
    assert "then rerun the same command to do the rest (--stop-after-failures 0 turns this check off)" in line
    assert probe.record("HTTP 503", 109.0) is None  # fires once

    # A 429, a malformed answer, a 400 are answers (kind None): each starts the count over.
    probe = DownProbe(2, window_s=1.0, clock=clock)
    probe.record(None, 0.0)
    for _ in range(5):
        probe.record("timeout", clock.t)
        clock.t += 1.0
        assert probe.record("timeout", clock.t - 0.5) is None and probe.late == 1
        assert probe.record(None, clock.t) is None and probe.late == 0  # the server answered
    assert DownProbe(0).record("timeout", 0.0) is None and not DownProbe(0).armed


def test_the_start_of_run_rule_is_unchanged_no_window():
    clock = Clock()
    probe = DownProbe(2, window_s=1000.0, clock=clock)
    assert probe.record("connection error", 99.0) is None  # the first failure starts the streak
    assert probe.record("connection error", 99.0) is None  # started before it: not counted
    assert probe.record("connection error", 100.0) is None
    line = probe.record("connection error", 100.0)
    assert line is not None and line.startswith("the server looks down: the first 4 requests all failed (4 × "
                                                "connection error")


# -- label ---------------------------------------------------------------------------------------

@pytest.fixture
def env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-dead")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return tmp_path


def label(capsys, inp: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc = main(["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(out), "--progress", "none", *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def error_lines(log: str, command: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith(f"stepdpo {command}: error:")]


# 6 attempts, 0.05 s doubling to 0.2 s: a request rides out 0.75 s of waits (the check's window).
# Without the check each of the 50 rows left after the death spends all 6 attempts: 300 requests.
SLOW_RETRIES = ["--max-attempts", "6", "--backoff", "0.05", "--max-backoff", "0.2", "--concurrency", "4"]


def test_label_stops_when_the_server_dies_mid_run_and_a_rerun_finishes(env, fake, capsys, transport):
    rows = gsm8k_rows(GSM8K, 60)
    inp = write_responses(rows, env / "in.parquet")
    k = 10
    fake.faults = FaultConfig(die_after=k, latency_s=0.005)
    start = time.monotonic()
    rc, log = label(capsys, inp, env / "run", *SLOW_RETRIES, "--http-transport", transport)
    elapsed = time.monotonic() - start
    lines = error_lines(log, "label")
    assert rc == 2 and len(lines) == 1, log
    assert "stopped: the server stopped answering mid-run: " in lines[0] and "× connection error" in lines[0]
    assert f"the rows labeled before it are kept in {env / 'run'}" in lines[0] and "rerun the same command" in lines[0]
    assert "Traceback" not in log
    dropped = fake.fault_counts["dead"]
    assert fake.total_requests - dropped == k
    # Stopped early: the window's worth of retries of the rows in flight, not 50 rows × 6 attempts.
    assert dropped < 50, dropped
    assert elapsed < 30, elapsed  # a sanity bound only (it takes about 1-2 s)
    out = read_table(env / "run", STEP_SCORES).to_pylist()
    ok = [r for r in out if r["status"] == "ok"]
    assert len(ok) == k  # every answer the server sent before it died is kept
    manifest = json.loads((env / "run" / "run.json").read_text())
    assert manifest["state"] == "aborted" and "stopped answering mid-run" in manifest["runs"][-1]["stopped"]

    # The server is back: the rerun asks only for the rows not labeled ok, and the folder ends
    # with exactly the input rows, each once.
    fake.faults = FaultConfig()
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run", *SLOW_RETRIES, "--http-transport", transport)
    assert rc == 0, log
    assert fake.total_requests == len(rows) - k
    out = read_table(env / "run", STEP_SCORES).to_pylist()
    ids = [r["response_id"] for r in out]
    assert sorted(ids) == sorted(r["response_id"] for r in rows) and all(r["status"] == "ok" for r in out)


def test_label_stops_when_the_server_stops_answering_and_only_times_out(env, fake, capsys):
    """The other way a server dies: it takes requests and never answers (a hung host), so each
    request costs --timeout before it fails."""
    rows = gsm8k_rows(GSM8K, 40)
    inp = write_responses(rows, env / "in.parquet")
    k = 8
    fake.faults = FaultConfig(script=[None] * k, p_hang=1.0, hang_s=30)  # K answers, then every request hangs
    rc, log = label(capsys, inp, env / "run", *SLOW_RETRIES, "--timeout", "0.3")
    lines = error_lines(log, "label")
    assert rc == 2 and len(lines) == 1 and "stopped answering mid-run" in lines[0] and "× timeout" in lines[0], log
    assert fake.fault_counts["hang"] < 50  # not 32 rows × 6 attempts
    assert len([r for r in read_table(env / "run", STEP_SCORES).to_pylist() if r["status"] == "ok"]) == k


def test_label_rides_out_a_503_burst_and_the_check_can_be_turned_off(env, fake, capsys):
    rows = gsm8k_rows(GSM8K, 24)
    inp = write_responses(rows, env / "in.parquet")
    # A burst of 12 errors after 6 answers: 12 > the check's 8, but over in about a second while a
    # request rides out 0.1 s doubling to 2 s over 8 attempts = 7.1 s of waits: no stop, no row lost.
    fake.faults = FaultConfig(script=[None] * 6 + ["500"] * 12)
    rc, log = label(capsys, inp, env / "run", "--max-attempts", "8", "--backoff", "0.1", "--max-backoff", "2",
                    "--concurrency", "4")
    assert rc == 0 and "mid-run" not in log, log
    assert fake.total_requests == 24 + 12
    assert [r["status"] for r in read_table(env / "run", STEP_SCORES).to_pylist()] == ["ok"] * 24

    # --stop-after-failures 0: a dead server costs every row all its attempts, as before the check.
    fake.faults = FaultConfig(die_after=4)
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run0", "--no-cache", "--stop-after-failures", "0", "--max-attempts", "2", "--backoff", "0",
                    "--concurrency", "2")
    assert rc == 1 and "mid-run" not in log, log  # a finished run with holes
    assert fake.total_requests == 4 + 20 * 2 and fake.fault_counts["dead"] == 40


# -- generate (and eval through it) --------------------------------------------------------------

def generate(server, problems, out, *extra) -> int:
    return main(["generate", str(problems), "--generator", f"openai-compatible:policy@{server.url}/v1",
                 "-o", str(out), "--progress", "none", *extra])


def test_generate_stops_when_the_server_dies_mid_run_and_a_rerun_finishes(server, tmp_path, capsys, transport):
    problems = write_problems(tmp_path / "problems.jsonl", [(a, a + 1) for a in range(15)])
    out = tmp_path / "gen"
    args = ["-n", "4", "--cache-dir", str(tmp_path / "cache"), "--http-transport", transport, *SLOW_RETRIES]
    k = 12
    server.die_after = k
    rc = generate(server, problems, out, *args)
    err = capsys.readouterr().err
    lines = error_lines(err, "generate")
    assert rc == 2 and len(lines) == 1, err
    assert "stopped: the server stopped answering mid-run: " in lines[0] and "× connection error" in lines[0]
    assert f"the samples drawn before it are kept in {out}" in lines[0] and "Traceback" not in err
    assert server.requests == k and server.dropped < 50, server.dropped  # not 48 samples × 6
    drawn = read_table(out, RESPONSES).to_pylist()
    assert len(drawn) == k  # every sample answered before the death is in the folder
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["state"] == "aborted" and "stopped answering mid-run" in manifest["runs"][-1]["stopped"]

    server.die_after = None
    before = server.requests
    assert generate(server, problems, out, *args) == 0, capsys.readouterr().err
    assert server.requests - before == 60 - k  # only the missing samples
    gids = [json.loads(r["meta"])["generation_id"] for r in read_table(out, RESPONSES).to_pylist()]
    assert len(gids) == len(set(gids)) == 60


def test_eval_stops_at_a_dead_server_through_generate(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    problems = write_problems(tmp_path / "problems.jsonl", [(a, a + 1) for a in range(20)])
    rc = main(["eval", str(problems), "--generator", f"openai-compatible:policy@http://127.0.0.1:{port}/v1",
               "-o", str(tmp_path / "ev"), "--max-attempts", "1", "--progress", "none", "--no-cache",
               "--concurrency", "4"])
    err = capsys.readouterr().err
    lines = error_lines(err, "eval")
    assert rc == 2 and len(lines) == 1 and "stopped: the server looks down: the first" in lines[0], err
    assert "× connection error" in lines[0] and "Traceback" not in err
