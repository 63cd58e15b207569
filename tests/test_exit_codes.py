"""A finished `label` or `generate` run with holes (rows that failed after their retries) exits
1 with ONE stderr line: how many failed of how many, where the reasons are, and the exact rerun
that retries only them. Running that very line (shlex-split, as a shell would) finishes the job
asking only for the failed rows, and exits 0. The rerun is recorded in run.json with a URL's
credentials removed: nothing secret reaches run.json, a shard, stdout or stderr.

Oracles: the scripted faults of the loopback fakes (exactly which requests fail), the fakes'
request counts on the rerun, and the input row set."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from schemas.tables import RESPONSES, STEP_SCORES, read_table
from stepdpo.cli import main
from stepdpo.rerun import REDACTED, redact
from tests.fakes.policy_server import write_problems
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent
PROBLEMS = [(3, 4), (10, 25), (7, 8), (100, 1)]
SECRET_PASS, SECRET_KEY = "pw-s3cret-9f1", "qk-s3cret-77a"


def _holes_line(err: str, command: str) -> tuple[str, str]:
    """The one line naming the rerun, and the rerun itself."""
    lines = [ln for ln in err.splitlines() if "rerun to retry only them: " in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{command}: "), lines[0]
    return lines[0], lines[0].split("rerun to retry only them: ", 1)[1].split(" (credentials removed")[0]


def _run_line(rerun: str) -> int:
    words = shlex.split(rerun)
    assert words[0] == "stepdpo"
    return main(words[1:])


def test_generate_with_failed_samples_exits_1_and_the_printed_rerun_draws_only_them(server, tmp_path, capsys):
    problems = write_problems(tmp_path / "problems.jsonl", PROBLEMS)
    out, cache = tmp_path / "gen", tmp_path / "cache"
    spec = f"openai-compatible:policy@{server.url}/v1"
    server.faults = ["500"] * 3  # the first 3 requests fail; with one attempt each, 3 samples are holes
    rc = main(["generate", str(problems), "--generator", spec, "-o", str(out), "-n", "2", "--max-attempts", "1",
               "--concurrency", "1", "--progress", "none", "--cache-dir", str(cache)])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    line, rerun = _holes_line(captured.err, "generate")
    assert "generate: 3 of 8 samples failed after their retries" in line
    assert f"failures in {out / 'run.json'}" in line and "HTTP 500" in line
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["rerun"] == rerun and manifest["runs"][-1]["failed"] == 3

    before = server.requests
    assert _run_line(rerun) == 0
    err = capsys.readouterr().err
    assert "rerun to retry only them" not in err
    assert server.requests - before == 3, "the rerun draws exactly the failed samples"
    assert len(read_table(out, RESPONSES)) == 8
    assert json.loads((out / "run.json").read_text())["runs"][-1]["failed"] == 0


def test_a_generate_run_where_every_sample_failed_names_its_rerun_too(server, tmp_path, capsys):
    problems = write_problems(tmp_path / "problems.jsonl", PROBLEMS[:1])
    server.faults = ["500", "500"]
    rc = main(["generate", str(problems), "--generator", f"openai-compatible:policy@{server.url}/v1", "-o",
               str(tmp_path / "gen"), "-n", "2", "--max-attempts", "1", "--progress", "none", "--no-cache"])
    err = capsys.readouterr().err
    assert rc == 1, err
    line, rerun = _holes_line(err, "generate")
    assert "generate: 2 of 2 samples failed after their retries" in line
    assert _run_line(rerun) == 0 and len(read_table(tmp_path / "gen", RESPONSES)) == 2


def test_label_with_failed_rows_exits_1_and_the_printed_rerun_retries_only_them(fake, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    rows = gsm8k_rows([REPO / "data" / "gsm8k" / "test.jsonl"], 6)
    responses = write_responses(rows, tmp_path / "r.parquet")
    run = tmp_path / "run"
    spec = f"openai-compatible:gpt-4o-mini@http://127.0.0.1:{fake.port}/v1"
    fake.faults.script = ["500", "500"]
    rc = main(["label", str(responses), "--judge", spec, "-o", str(run), "--max-attempts", "1", "--concurrency",
               "1", "--progress", "none", "--no-cache", "--stop-after-failures", "0"])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    line, rerun = _holes_line(captured.err, "label")
    assert "label: 2 of 6 responses failed after their retries" in line
    assert f"errors_by_reason in {run / 'run.json'}" in line
    assert json.loads((run / "run.json").read_text())["rerun"] == rerun
    before = len(fake.requests)
    assert _run_line(rerun) == 0
    assert len(fake.requests) - before == 2, "the rerun asks only for the failed rows"
    table = read_table(run, STEP_SCORES)
    assert sorted(table.column("response_id").to_pylist()) == sorted(r["response_id"] for r in rows)
    assert set(table.column("status").to_pylist()) == {"ok"}


def _httpx(command: str) -> list[str]:
    """``--http-transport httpx`` where the command has that option: this test is about what is
    written, and only httpx takes credentials in a base URL next to the SDK's Authorization."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"stepdpo.commands.{command}").configure(parser)
    return ["--http-transport", "httpx"] if any("--http-transport" in a.option_strings for a in parser._actions) \
        else []


def test_credentials_in_a_url_never_reach_run_json_or_the_output(server, fake, tmp_path, capsys, monkeypatch):
    """`generate` and `label` with user:password@ and ?api_key=… in the backend's URL: run.json
    records the rerun with the userinfo and the key REDACTED (api-version kept), and
    neither secret appears in run.json, stdout or stderr. (The runs themselves fail: the openai
    SDK appends its path after a base URL's query string, so the server answers 404.)"""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    problems = write_problems(tmp_path / "problems.jsonl", PROBLEMS[:1])
    responses = write_responses(gsm8k_rows([REPO / "data" / "gsm8k" / "test.jsonl"], 2), tmp_path / "r.parquet")
    secret = f"carol:{SECRET_PASS}@127.0.0.1:{{port}}/v1?api_key={SECRET_KEY}&api-version=2024-06-01"
    for argv, port, folder in (
            (["generate", str(problems), "--generator", "openai-compatible:policy@http://" + secret], server.port,
             tmp_path / "gen"),
            (["label", str(responses), "--judge", "openai-compatible:gpt-4o-mini@http://" + secret], fake.port,
             tmp_path / "run")):
        argv = [a.replace("{port}", str(port)) for a in argv] + _httpx(argv[0])
        rc = main([*argv, "-o", str(folder), "--max-attempts", "1", "--progress", "none", "--no-cache"])
        captured = capsys.readouterr()
        assert rc != 0, captured.err
        manifest = (folder / "run.json").read_text()
        rerun = json.loads(manifest)["rerun"]
        assert f"@http://{REDACTED}@127.0.0.1:{port}/v1?api_key={REDACTED}&api-version=2024-06-01" in rerun
        for text in (captured.out, captured.err, manifest):
            assert SECRET_PASS not in text and SECRET_KEY not in text and "carol" not in text


def test_redact_keeps_what_runs_and_removes_credentials():
    assert redact("openai-compatible:m@https://u:p%40ss@h.example:8443/v1?token=t&x=1&X-Api-Key=k#f") == \
        f"openai-compatible:m@https://{REDACTED}@h.example:8443/v1?token={REDACTED}&x=1&X-Api-Key={REDACTED}#f"
    assert redact("no url here, user:pass@host") == "no url here, user:pass@host"
    assert redact("http://localhost:8000/v1") == "http://localhost:8000/v1"


def test_eval_grades_failed_samples_as_wrong_exits_1_and_names_itself_as_the_rerun(server, tmp_path, capsys):
    problems = write_problems(tmp_path / "problems.jsonl", PROBLEMS)
    out = tmp_path / "eval"
    server.faults = ["500"]
    rc = main(["eval", str(problems), "--generator", f"openai-compatible:policy@{server.url}/v1", "-o", str(out),
               "--max-attempts", "1", "--concurrency", "1", "--progress", "none", "--cache-dir",
               str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 1, err
    line, rerun = _holes_line(err, "generate")
    assert "generate: 1 of 4 samples failed after their retries" in line and rerun.startswith("stepdpo eval ")
    assert json.loads((out / "summary.json").read_text())["problems"] == 4  # graded, the hole as wrong
    before = server.requests
    assert _run_line(rerun) == 0
    assert server.requests - before == 1 and len(read_table(out / "samples", RESPONSES)) == 4


@pytest.mark.parametrize("argv", [
    ["label", "responses.parquet", "--judge", "bogus:m@http://carol:{pw}@127.0.0.1:9/v1?api_key={key}"],
    ["label", "responses.parquet", "--judge", "openai-compatible:http://carol:{pw}@127.0.0.1:9/v1"],
    ["generate", "problems.jsonl", "--generator", "bogus:m@https://carol:{pw}@127.0.0.1:9/v1"],
    ["generate", "problems.jsonl", "--generator", "openai-compatible:m@ftp://carol:{pw}@127.0.0.1:9/v1"],
])
def test_a_bad_spec_is_refused_in_one_line_without_echoing_its_credentials(argv, tmp_path, capsys):
    """The one error line quotes the spec the user typed, with its secrets REDACTED."""
    write_problems(tmp_path / "problems.jsonl", PROBLEMS[:1])
    write_responses(gsm8k_rows([REPO / "data" / "gsm8k" / "test.jsonl"], 1), tmp_path / "responses.parquet")
    argv = [a.format(pw=SECRET_PASS, key=SECRET_KEY) for a in argv]
    argv[1] = str(tmp_path / argv[1])
    rc = main([*argv, "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "error:" in err and REDACTED in err
    assert SECRET_PASS not in err and SECRET_KEY not in err and "carol" not in err
