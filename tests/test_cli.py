"""The `stepdpo` dispatcher: instant --help listing every command, exit codes, one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepdpo.cli import COMMANDS, TRAIN_COMMANDS, main

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "trl", "openai", "anthropic", "datasets", "accelerate", "peft")


def _py(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, check=False)


def test_help_lists_every_command_fast_and_light():
    code = f"""
import io, json, sys, time, contextlib
t0 = time.perf_counter()
from stepdpo.cli import main
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    rc = main(["--help"])
elapsed = time.perf_counter() - t0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} + ("pyarrow",))
print(json.dumps({{"rc": rc, "out": buf.getvalue(), "elapsed": elapsed, "heavy": heavy}}))
"""
    start = time.perf_counter()
    done = _py(code)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rc"] == 0
    assert result["heavy"] == []
    # Import + help inside the interpreter: no pyarrow either (schemas loads lazily), so this
    # takes a few tens of ms on an idle box. The bound is the promise (under a second),
    # loose enough for a loaded 2-core box; the real guard is the heavy-module list above.
    assert result["elapsed"] < 1.0, result["elapsed"]
    assert wall < 10.0
    out = result["out"]
    assert out.startswith("usage: stepdpo")
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name} " in out and summary in out, name


def test_python_dash_m_stepdpo_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "stepdpo", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: stepdpo")
    for name in COMMANDS:
        assert f"  {name} " in done.stdout, name


def test_console_script_help(tmp_path):
    script = Path(sys.executable).with_name("stepdpo")
    if not script.exists():
        pytest.skip("the stepdpo console script is not installed in this environment")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "commands:" in done.stdout and "ingest" in done.stdout


def test_no_arguments_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: stepdpo" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("stepdpo ")


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"stepdpo: error: unknown command 'frobnicate' (choose from {', '.join(COMMANDS)})"
    )


def test_user_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "missing.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "stepdpo.cli", "ingest", "gsm8k", str(missing), "-o", str(tmp_path / "o.parquet")],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"stepdpo ingest: error: {missing}: no such file"]
    assert done.stdout == ""


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "gsm8k", "x.jsonl"])  # -o is required
    assert exc.value.code == 2
    assert "the following arguments are required: -o/--output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "nosuchsource", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'nosuchsource'" in capsys.readouterr().err


def test_ingest_help_documents_every_source(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for source in ("gsm8k", "prm800k", "jsonl"):
        assert f"stepdpo ingest {source} " in out
    assert "--label-kind first-error" in out


def test_help_shows_a_default_of_zero_but_not_an_unset_one():
    """0 == False in Python: a default of 0 (eval's greedy --temperature, --seed) used to be
    left out of --help as if unset."""
    import argparse
    from dataclasses import dataclass, field

    from stepdpo.options import add_dataclass_arguments

    @dataclass
    class Opts:
        temperature: float = field(default=0.0, metadata={"help": "sampling temperature"})
        seed: int = field(default=0, metadata={"help": "seed"})
        flag: bool = field(default=False, metadata={"help": "a switch"})
        name: str = field(default="", metadata={"help": "a name"})
        limit: int | None = field(default=None, metadata={"help": "a cap"})

    parser = argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=60, width=200))
    add_dataclass_arguments(parser, Opts)
    lines = {ln.split()[0]: ln for ln in parser.format_help().splitlines() if ln.strip().startswith("--")}
    assert lines["--temperature"].endswith("(default: 0.0)") and lines["--seed"].endswith("(default: 0)")
    for unset in ("--flag,", "--name", "--limit"):
        assert "default" not in lines[unset], lines[unset]


LABELER_COMMANDS = [n for n in COMMANDS if n not in TRAIN_COMMANDS]


def test_labeler_command_help_stays_light():
    """`--help` of every labeler command that exists answers without torch or transformers."""
    present = [n for n in LABELER_COMMANDS if importlib.util.find_spec(COMMANDS[n][0]) is not None]
    assert "ingest" in present
    code = f"""
import contextlib, io, json, sys
from stepdpo.cli import main
codes = {{}}
for name in {present!r}:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes[name] = main([name, "--help"])
        except SystemExit as exc:
            codes[name] = exc.code
    codes[name] = [codes[name], "usage: stepdpo " + name in buf.getvalue()]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""
    done = _py(code)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["heavy"] == []
    assert result["codes"] == {n: [0, True] for n in present}


@pytest.mark.parametrize("judge", ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"])
def test_label_with_an_api_judge_stays_light(judge, tmp_path, gsm8k_sample):
    """`stepdpo label` with an API judge, run as the program (the console script's `main()`), a real
    run over HTTP to the loopback fake: never torch, transformers or Ray (only local-model judges
    need them), and before its first request neither pandas nor pyarrow.dataset (pq.read_table's
    route, ~0.2 s of start-up: issue 18's < 1 s), nor pandas later in the run. The cyclic GC, paused for the start-up
    (stepdpo.startup), is back on at the first request and the start-up's objects are frozen."""
    from tests.fakes.llm_server import FakeLLMServer
    from tests.fakes.responses import gsm8k_rows, write_responses

    inp = write_responses(gsm8k_rows([gsm8k_sample], 6), tmp_path / "r.parquet")
    out = tmp_path / "run"
    code = f"""
import gc, json, sys
first, gc_at_first = [], []
def hook(event, args):
    if event == "socket.connect" and not first:
        first.append(sorted(sys.modules))
        gc_at_first.append([gc.isenabled(), gc.get_freeze_count()])
sys.addaudithook(hook)
from stepdpo.cli import main
sys.argv = ["stepdpo", "label", {str(inp)!r}, "--judge", {judge!r}, "-o", {str(out)!r}, "--progress", "none"]
rc = main()
print(json.dumps({{"rc": rc, "at_first_request": first[0] if first else None, "at_end": sorted(sys.modules),
                  "gc_at_first_request": gc_at_first[0] if gc_at_first else None, "gc_at_end": gc.isenabled()}}))
"""
    env_var = "OPENAI" if judge.startswith("openai") else "ANTHROPIC"
    with FakeLLMServer() as server:
        env = dict(os.environ, PYTHONPATH=str(REPO), STEPDPO_CACHE_DIR=str(tmp_path / "cache"),
                   **{f"{env_var}_API_KEY": "sk-test", f"{env_var}_BASE_URL":
                      server.url + ("/v1" if env_var == "OPENAI" else "")})
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=120, check=False)
        requests = server.total_requests
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rc"] == 0 and requests == 6  # it really labeled, over HTTP
    assert json.loads((out / "run.json").read_text())["totals"]["ok"] == 6
    first, end = result["at_first_request"], result["at_end"]
    assert first is not None
    assert [m for m in end if m.split(".")[0] in ("torch", "transformers", "ray", "trl", "datasets")] == []
    assert [m for m in first if m == "pandas" or m.startswith("pyarrow.dataset")] == []
    # ~20 and ~15 ms of start-up that the first request does not need (used at the end / on a retry)
    assert [m for m in first if m in ("pyarrow.compute", "tenacity")] == []
    assert [m for m in first if m.startswith("labeler.batch.") and m != "labeler.batch.options"] == []  # --batch only
    assert "pandas" not in end  # nor mid-run: shards are built through pyarrow.json, totals without scalars
    enabled, frozen = result["gc_at_first_request"]
    assert enabled and result["gc_at_end"]  # paused for the start-up only, never for the run
    assert frozen > 100_000  # the SDK's and Arrow's import objects: never scanned again
