"""Issue #16 items 1-3: a broken server costs bounded time and no other row.

The real SDKs talk over real HTTP to the loopback fake, which hangs, drips its body a byte at a
time, answers a 200 whose JSON body is ``null`` or ``[]``, drops the connection mid-body, or is
not there at all. The oracle for every other row is the fake's deterministic score of each step.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from labeler.judges.config import JudgeConfig
from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.llm_server import FaultConfig, score_of
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent
GSM8K = [REPO / "data" / "gsm8k" / "test_sample.jsonl"]
FAST = ["--backoff", "0.01", "--max-backoff", "0.05", "--progress", "none"]
MARKERS = {"hang": "[[hang-here]]", "drip": "[[drip-here]]", "null": "[[null-here]]", "close": "[[close-here]]",
           "list": "[[list-here]]"}


@pytest.fixture
def env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-hardening")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-hardening")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def marked_rows(n: int, faults: list[str]) -> list[dict]:
    """``n`` GSM8K rows; row k < len(faults) carries the marker of ``faults[k]`` in its first step."""
    from schemas.ids import response_id

    rows = gsm8k_rows(GSM8K, n)
    assert len(rows) == n
    for row, fault in zip(rows, faults, strict=False):
        row["steps"] = [row["steps"][0] + " " + MARKERS[fault], *row["steps"][1:]]
        row["response_id"] = response_id(row["prompt"], row["steps"])
    return rows


def label(capsys, inp: Path, out: Path, *extra: str, judge: str = "openai:gpt-4o-mini") -> tuple[int, str]:
    rc = main(["label", str(inp), "--judge", judge, "-o", str(out), *FAST, *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


@pytest.mark.parametrize("judge", ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
def test_hang_drip_null_close_cost_bounded_time_and_no_other_row(env, fake, capsys, judge, transport):
    """The issue's "done when": each broken answer is its row's error, within the deadline."""
    faults = ["hang", "drip", "null", "close", "list"]
    rows = marked_rows(30, faults)
    inp = write_responses(rows, env / "in.parquet")
    fake.faults = FaultConfig(rules={MARKERS[f]: f for f in faults}, drip_s=0.05, hang_s=60, retry_after=0.01)
    start = time.monotonic()
    # --timeout 2 with a byte every 0.05 s: the dripped body (~0.5-1 KB) takes 25-50 s per try
    # under a per-read timeout; the hung request waits for the fake's 60 s.
    rc, log = label(capsys, inp, env / "run", "--timeout", "2", "--max-attempts", "3", "--concurrency", "8",
                    "--http-transport", transport, judge=judge)
    elapsed = time.monotonic() - start
    assert rc == 1, log  # the faulty rows are holes
    assert elapsed < 25, f"took {elapsed:.1f}s"
    for f in faults:
        assert fake.fault_counts[f] == 3, (f, fake.fault_counts)  # each broken row tried 3 times, no more
    out = {r["response_id"]: r for r in read_table(env / "run", STEP_SCORES).to_pylist()}
    assert set(out) == {r["response_id"] for r in rows}
    broken = {rows[k]["response_id"]: f for k, f in enumerate(faults)}
    for rid, r in out.items():
        if rid in broken:
            assert r["status"] == "error" and r["scores"] is None and r["attempts"] == 3
        else:
            assert r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]]
    reasons = {f: out[rid]["error"] for rid, f in broken.items()}
    assert "timeout: no complete answer within 2s" in reasons["hang"]
    assert "timeout: no complete answer within 2s" in reasons["drip"]
    assert "response body is JSON null" in reasons["null"]
    assert "response body is JSON list" in reasons["list"]
    assert "connection error" in reasons["close"]
    # The summary says how many failed and why.
    assert "5 response(s) of this run ended in error: 2 × timeout: no complete answer within 2s" in log
    assert "Traceback" not in log

    # A healthy server: only the five broken rows are asked again.
    fake.faults = FaultConfig()
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run", "--http-transport", transport, judge=judge)
    assert rc == 0 and fake.total_requests == 5, log
    assert all(r["status"] == "ok" for r in read_table(env / "run", STEP_SCORES).to_pylist())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["hang", "refused", "500"])
def test_dead_server_stops_early_with_one_line(env, fake, capsys, monkeypatch, how, transport):
    rows = gsm8k_rows(GSM8K, 60)
    inp = write_responses(rows, env / "in.parquet")
    if how == "refused":
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{_closed_port()}/v1")
    else:
        fake.faults = FaultConfig(p_hang=1.0 if how == "hang" else 0.0, p500=1.0 if how == "500" else 0.0,
                                  hang_s=60, retry_after=0.01)
    start = time.monotonic()
    # Without the check: 60 rows x 6 attempts x 0.5 s / 4 in flight = 45 s of waiting (hang).
    rc, log = label(capsys, inp, env / "run", "--timeout", "0.5", "--concurrency", "4", "--max-attempts", "6",
                    "--http-transport", transport)
    elapsed = time.monotonic() - start
    assert rc == 2 and elapsed < 12, (elapsed, log)
    lines = [line for line in log.strip().splitlines() if line.startswith("stepdpo label: error:")]
    assert len(lines) == 1 and "stopped: the server looks down: the first" in lines[0], log
    kind = {"hang": "× timeout", "refused": "× connection error", "500": "× HTTP 500"}[how]
    assert kind in lines[0] and "Traceback" not in log
    manifest = json.loads((env / "run" / "run.json").read_text())
    assert manifest["state"] == "aborted" and "server looks down" in manifest["runs"][-1]["stopped"]
    assert manifest["runs"][-1]["requests"] <= 8 + 2 * 4  # the probe's 8, plus what was in flight
    assert manifest["totals"]["ok"] == 0


def test_a_dead_proxy_is_named_in_the_one_line_and_no_proxy_goes_direct(env, fake, capsys, monkeypatch):
    """HTTP_PROXY pointing at nothing: every request fails like a down server although the server
    is up, so the line names the proxy variable (never its value: it may carry a password);
    NO_PROXY for the server's host goes direct and labels every row."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://qa:proxy-pw-123@127.0.0.1:{_closed_port()}")
    inp = write_responses(gsm8k_rows(GSM8K, 12), env / "in.parquet")
    rc, log = label(capsys, inp, env / "run", "--concurrency", "4", "--max-attempts", "2")
    lines = [line for line in log.strip().splitlines() if line.startswith("stepdpo label: error:")]
    assert rc == 2 and len(lines) == 1 and "server looks down" in lines[0], log
    assert "the proxy in HTTP_PROXY" in lines[0] and "proxy-pw-123" not in log and fake.total_requests == 0
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    rc, log = label(capsys, inp, env / "run")
    assert rc == 0 and fake.total_requests == 12, log
    monkeypatch.delenv("HTTP_PROXY")  # and without a proxy the line names none
    from labeler.engine.stopping import proxy_hint

    assert proxy_hint() == "" and "HTTPS_PROXY" in proxy_hint({"https_proxy": "http://p:1"})


def test_check_off_and_a_run_with_no_ok_row_exits_non_zero(env, fake, capsys):
    rows = gsm8k_rows(GSM8K, 6)
    inp = write_responses(rows, env / "in.parquet")
    fake.faults = FaultConfig(p500=1.0, retry_after=0.01)
    rc, log = label(capsys, inp, env / "run", "--stop-after-failures", "0", "--max-attempts", "2",
                    "--concurrency", "2")
    assert rc == 2 and fake.total_requests == 12, log  # every row tried: the check was off
    assert "stepdpo label: error: no response was labeled ok: all 6 of this run failed (6 × HTTP 500: " in log
    assert "Internal server error (fake)" in log
    # A 400 is not a down server: the check does not fire, every row is its own error.
    fake.faults = FaultConfig(script=["400"] * 6)
    fake.reset_counts()
    rc, log = label(capsys, inp, env / "run2", "--concurrency", "1")
    assert rc == 2 and fake.total_requests == 6 and "(6 × HTTP 400: " in log and "Invalid request (fake)" in log, log
    assert "server looks down" not in log


def test_a_judge_bug_fails_its_row_never_the_others(env, fake):
    """A worker whose judge raises must not cancel the other workers (63 of 128 paid answers
    in flight were thrown away): the row is an error, every other answer reaches the shards."""
    import asyncio

    from labeler.engine.rundir import RunDir
    from labeler.engine.runner import Engine, EngineConfig
    from labeler.judges.openai_judge import make_openai

    rows = marked_rows(24, ["null"])  # the marker only picks the row the judge's "bug" hits

    class BuggyParser(type(make_openai("gpt-4o-mini", JudgeConfig()))):
        def parse_body(self, item, body, headers=None):
            if MARKERS["null"] in item.steps[0]:
                raise RuntimeError("bug in the parser")
            return super().parse_body(item, body, headers)

    judge = BuggyParser("gpt-4o-mini", JudgeConfig(), name="openai:gpt-4o-mini", api_key="sk-test-x",
                        base_url=fake.url + "/v1", price_model="gpt-4o-mini")
    fake.faults = FaultConfig(latency_s=0.05)
    engine = Engine(judge, RunDir(env / "run"), EngineConfig(concurrency=8, progress="none"))

    async def go():
        try:
            return await engine.run(rows)
        finally:
            await judge.aclose()

    manifest = asyncio.run(go())
    out = {r["response_id"]: r for r in read_table(env / "run", STEP_SCORES).to_pylist()}
    assert len(out) == 24 and fake.total_requests == 24
    bad = out.pop(rows[0]["response_id"])
    assert bad["status"] == "error" and bad["error"] == "internal error: RuntimeError: bug in the parser"
    assert all(r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]] for r in out.values())
    assert manifest["state"] == "finished"


def test_bad_judge_options_are_one_line_errors(env, capsys):
    inp = write_responses(gsm8k_rows(GSM8K, 2), env / "in.parquet")
    for opts, message in ((["--timeout", "-1"], "--timeout must be a positive number of seconds"),
                          (["--timeout", "0"], "--timeout must be a positive number of seconds"),
                          (["--temperature", "-3"], "--temperature must be in [0, 2]"),
                          (["--max-output-tokens", "0"], "--max-output-tokens must be at least 1"),
                          (["--stop-after-failures", "-1"], "--stop-after-failures must be 0 (off) or more")):
        rc, log = label(capsys, inp, env / "run", *opts)
        assert rc == 2 and log.strip() == f"stepdpo label: error: {log.split('error: ', 1)[1].strip()}"
        assert message in log and len(log.strip().splitlines()) == 1, log
    assert not (env / "run").exists()


def test_demo_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc = main(["demo", "--workdir", str(f)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [f"stepdpo demo: error: --workdir {f}: exists and is not a folder"]
