"""A run folder whose last run did not finish is refused by every reader, with one line naming
the folder, its state and the fix; ``--allow-incomplete`` reads exactly the rows on disk.

The folders are real: a ``stepdpo generate`` process against the scripted policy and a
``stepdpo label`` process against the fake LLM server, each killed with SIGKILL mid-run."""

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

from schemas.folders import unfinished_run
from schemas.tables import RESPONSES, STEP_SCORES, read_table, write_table
from stepdpo.cli import main
from tests.fakes.llm_server import FakeLLMServer, FaultConfig
from tests.fakes.policy_server import FakePolicyServer, write_problems
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent
PROBLEMS = [(3, 4), (10, 25), (7, 8), (100, 1), (2, 2), (5, 9)]


def _kill_when(proc: subprocess.Popen, folder: Path, shards: int) -> None:
    deadline = time.monotonic() + 90
    while len(list(folder.glob("part-*.parquet"))) < shards:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, f"no {shards} shards within 90 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _rows_on_disk(folder: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("part-*.parquet"))


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict[str, Path]:
    """``gen``: a generate run killed after 3 of 30 samples; ``run``: a label run killed after
    2 of 12 shards; ``problems``: the problems file; ``url``: the policy (still serving)."""
    base = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEPDPO_CACHE_DIR": str(base / "cache"),
           "OPENAI_API_KEY": "sk-test"}
    problems = write_problems(base / "problems.jsonl", PROBLEMS)
    with FakePolicyServer(latency=0.05) as policy, FakeLLMServer(FaultConfig(latency_s=0.05)) as llm:
        gen = base / "gen"
        gen_argv = ["generate", str(problems), "--generator", f"openai-compatible:policy@{policy.url}/v1", "-o",
                    str(gen), "-n", "5", "--shard-size", "1", "--concurrency", "1", "--progress", "none"]
        proc = subprocess.Popen([sys.executable, "-m", "stepdpo", *gen_argv],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        responses = write_responses(gsm8k_rows([REPO / "data" / "gsm8k" / "test.jsonl"], 24), base / "in.parquet")
        run = base / "run"
        run_argv = ["label", str(responses), "--judge", "openai:gpt-4o-mini", "-o", str(run), "--shard-size", "2",
                    "--concurrency", "1", "--progress", "none"]
        proc2 = subprocess.Popen([sys.executable, "-m", "stepdpo", *run_argv],
                                 env={**env, "OPENAI_BASE_URL": llm.url + "/v1"}, cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_when(proc, gen, 3)
        _kill_when(proc2, run, 2)
    return {"gen": gen, "run": run, "problems": problems, "gen_argv": gen_argv, "run_argv": run_argv}


def _recorded_rerun(killed: dict, name: str) -> str:
    """The rerun the killed run recorded: its own command line, which parses to exactly the
    options the run was started with."""
    import argparse
    import importlib
    import shlex

    rerun = json.loads((killed[name] / "run.json").read_text())["rerun"]
    argv = killed[f"{name}_argv"]
    words = shlex.split(rerun)
    assert words[:2] == ["stepdpo", argv[0]], rerun
    parsed = []
    for given in (words[2:], argv[1:]):
        parser = argparse.ArgumentParser()
        importlib.import_module(f"stepdpo.commands.{argv[0]}").configure(parser)
        parsed.append(parser.parse_args(given))
    assert parsed[0] == parsed[1], rerun
    return rerun


def _one_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_killed_folders_are_what_a_kill_leaves(killed):
    for name, total in (("gen", 30), ("run", 24)):
        manifest = json.loads((killed[name] / "run.json").read_text())
        assert manifest["state"] == "running"
        assert 0 < _rows_on_disk(killed[name]) < total, "the kill must land mid-run"


def test_every_reader_of_a_killed_generate_folder_refuses_it(killed, capsys, tmp_path):
    gen = str(killed["gen"])
    n = _rows_on_disk(killed["gen"])
    policy = "openai-compatible:policy@http://127.0.0.1:9/v1"  # never reached: refused before
    readers = {
        "label": ["label", gen, "--judge", "answer-match", "-o", str(tmp_path / "lab")],
        "generate": ["generate", gen, "--generator", policy, "-o", str(tmp_path / "g2")],
        "eval": ["eval", gen, "--generator", policy, "-o", str(tmp_path / "ev")],
        "perturb": ["perturb", gen, "-o", str(tmp_path / "p.parquet")],
        "pairs": ["pairs", gen, "-o", str(tmp_path / "pairs"), "--strategy", "prm800k-alternatives"],
        "sft": ["sft", "--responses", gen, "--model_name_or_path", str(tmp_path / "none"),
                "--output_dir", str(tmp_path / "sft")],
        "train-rm": ["train-rm", gen, "--model_name_or_path", str(tmp_path / "none"),
                     "--output_dir", str(tmp_path / "rm"), "--max_steps", "1"],
    }
    for command, argv in readers.items():
        err = _one_error(capsys, argv)
        assert err.startswith(f"stepdpo {command}: error: {gen}: its last run did not finish (state: running"), err
        assert f"rerun `{_recorded_rerun(killed, 'gen')}` to finish it" in err  # the exact command
        assert f"pass --allow-incomplete to use the {n} row(s) it has" in err
    assert not any((tmp_path / d).exists() for d in ("lab", "g2", "p.parquet", "pairs", "sft", "rm"))


def test_allow_incomplete_reads_exactly_the_rows_on_disk(killed, capsys, tmp_path, server):
    gen = killed["gen"]
    on_disk = read_table(gen, RESPONSES).column("response_id").to_pylist()
    warning = f"stepdpo: warning: {gen}: its last run did not finish (state: running"
    assert main(["label", str(gen), "--judge", "answer-match", "-o", str(tmp_path / "lab"),
                 "--progress", "none", "--allow-incomplete"]) == 0
    err = capsys.readouterr().err
    assert warning in err and f"using the {len(on_disk)} row(s) it has (--allow-incomplete)" in err
    labeled = read_table(tmp_path / "lab", STEP_SCORES).column("response_id").to_pylist()
    # one row per distinct response (two identical samples of a problem share a response id)
    assert sorted(labeled) == sorted(set(on_disk))

    assert main(["perturb", str(gen), "-o", str(tmp_path / "p.parquet"), "--allow_incomplete"]) == 0
    out = capsys.readouterr()
    assert warning in out.err and f"perturb: {len(on_disk)} input rows" in out.out

    # eval samples the problems of the rows on disk, and says so once (through generate)
    problems = set(read_table(gen, RESPONSES).column("problem_id").to_pylist())
    assert main(["eval", str(gen), "--generator", f"openai-compatible:policy@{server.url}/v1", "-o",
                 str(tmp_path / "ev"), "--progress", "none", "--cache-dir", str(tmp_path / "cache"),
                 "--allow-incomplete"]) == 0
    assert capsys.readouterr().err.count(warning) == 1
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["problems"] == len(problems) < len(PROBLEMS)

    # sft trains on the rows on disk (--select all: every one of them)
    from trainer.tiny_model import build_tiny_model

    base = build_tiny_model(tmp_path / "base", vocab_text=[" ".join(r["steps"]) for r in
                                                            read_table(gen, RESPONSES).to_pylist()])
    assert main(["sft", "--responses", str(gen), "--model_name_or_path", str(base), "--output_dir",
                 str(tmp_path / "sft"), "--max_steps", "1", "--select", "all", "--allow-incomplete"]) == 0
    assert warning in capsys.readouterr().err
    assert json.loads((tmp_path / "sft" / "sft_config.json").read_text())["counts"]["rows"] == len(on_disk)

    assert main(["inspect", str(gen), "--json"]) == 0  # inspect reads on, and says what it reads
    out = capsys.readouterr()
    assert f"inspect: note: {gen}: its last run did not finish (state: running" in out.err
    assert f"the {len(on_disk)} row(s) written so far" in out.err
    assert json.loads(out.out)["rows"] == len(on_disk)


def test_every_reader_of_a_killed_label_run_refuses_it(killed, capsys, tmp_path):
    run = str(killed["run"])
    n = _rows_on_disk(killed["run"])
    readers = {
        "pairs": ["pairs", run, "-o", str(tmp_path / "pairs")],
        "combine": ["combine", run, str(tmp_path / "other"), "-o", str(tmp_path / "comb")],
        "train-rm": ["train-rm", run, "--model_name_or_path", str(tmp_path / "none"),
                     "--output_dir", str(tmp_path / "rm"), "--max_steps", "1"],
        "generate": ["generate", "--continue-from", run, "--generator",
                     "openai-compatible:policy@http://127.0.0.1:9/v1", "-o", str(tmp_path / "cont")],
    }
    for command, argv in readers.items():
        err = _one_error(capsys, argv)
        assert err.startswith(f"stepdpo {command}: error: {run}: its last run did not finish (state: running"), err
        assert f"rerun `{_recorded_rerun(killed, 'run')}` to finish it" in err and f"the {n} row(s) it has" in err
    rc = main(["pairs", run, "-o", str(tmp_path / "pairs"), "--allow-incomplete"])
    assert rc == 0
    out = capsys.readouterr()
    assert f"from {n} rows of" in out.out and "its last run did not finish" in out.err


def test_what_counts_as_unfinished(tmp_path):
    """The rule on folders built by hand: states, a split job, shards with no manifest, and a
    folder of someone else's Parquet files (not a run folder: no opinion)."""
    rows = gsm8k_rows([REPO / "data" / "gsm8k" / "test.jsonl"], 2)
    shard = write_responses(rows, tmp_path / "src.parquet")
    table = read_table(shard, RESPONSES)

    def folder(name: str, files: dict[str, dict | None]) -> Path:
        d = tmp_path / name
        d.mkdir()
        for fname, body in files.items():
            if body is None:
                write_table(table, d / fname, RESPONSES)
            else:
                (d / fname).write_text(json.dumps(body))
        return d

    done = {"schema": "stepdpo.generate/1", "state": "finished"}
    assert unfinished_run(folder("ok", {"part-00000.parquet": None, "run.json": done})) is None
    assert unfinished_run(shard) is None  # a file is written whole
    assert unfinished_run(folder("dataset", {"train-00000-of-00001.parquet": None})) is None
    assert unfinished_run(folder("pairs", {"part-00000.parquet": None, "pairs.json": {"complete": True}})) is None
    assert unfinished_run(folder("hand", {"part-00000.parquet": None, "run.json": {}})) is None
    for state in ("interrupted", "aborted", "budget", "pending"):
        got = unfinished_run(folder(state, {"part-00000.parquet": None,
                                            "run.json": {"schema": "stepdpo.run/1", "state": state}}))
        assert got is not None and (got.state, got.command, got.rows) == (state, "stepdpo label", 2)
    bare = unfinished_run(folder("bare", {"part-00000.parquet": None}))
    assert bare is not None and (bare.state, bare.command) == ("shards but no run.json", "stepdpo generate")
    assert "rerun `stepdpo generate ... -o" in bare.message()
    split = unfinished_run(folder("split", {"part-k0-of-2-00000.parquet": None, "run-k0-of-2.json": done}))
    assert split is not None and "job k1 of 2" in split.state


def test_a_folder_being_written_is_named_with_its_own_command(killed, capsys, tmp_path):
    """While a writer holds the folder's lock, a reader says so (not 'killed'), and a second
    writer is told which command holds it: `stepdpo generate` for a generate folder."""
    from labeler.engine.rundir import RunDir
    from labeler.sources.generation.store import GenerationDir

    gen = killed["gen"]
    with GenerationDir(gen).locked():
        err = _one_error(capsys, ["label", str(gen), "--judge", "answer-match", "-o", str(tmp_path / "lab")])
        assert err.endswith(f"{gen}: a `stepdpo generate` is writing it right now; wait for it to finish, or pass "
                            f"--allow-incomplete to use the {_rows_on_disk(gen)} row(s) it has so far")
        err = _one_error(capsys, ["generate", str(killed["problems"]), "--generator",
                                  "openai-compatible:policy@http://127.0.0.1:9/v1", "-o", str(gen), "-n", "5"])
        assert f"{gen}: another `stepdpo generate` is writing this run folder (same job)" in err
    with RunDir(killed["run"]).locked():
        err = _one_error(capsys, ["pairs", str(killed["run"]), "-o", str(tmp_path / "pairs")])
        assert "a `stepdpo label` is writing it right now; wait for it to finish" in err
