"""The rerun recorded in run.json (stepdpo/rerun.py) works from any directory.

A run started with relative paths (`stepdpo label in.parquet -o run --cache-dir cache`) used to
record them as given, so its rerun — printed when rows failed, shown by a reader refusing the
unfinished folder — failed or, worse, started a new folder anywhere else. The oracle: run from
one directory with relative paths and scripted failures, then execute the recorded line (shlex-
split, as a shell would) from another directory: it resumes the SAME folder, asks only for the
failed rows, and the folder holds exactly the input row set.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
from pathlib import Path

import pytest

from schemas.tables import RESPONSES, STEP_SCORES, read_table
from stepdpo.cli import main
from stepdpo.rerun import MODEL, PATH, SPEC, TEMPLATE, command_words, path_kind
from tests.fakes.policy_server import write_problems
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent

#: Every option of these commands whose value may name a file or folder, by kind: always a PATH,
#: or a MODEL / SPEC / TEMPLATE (a hub id, a spec, a built-in name; a path when one exists).
PATHS = {
    "label": {PATH: {"input", "output", "cache_dir", "prices"}, SPEC: {"judge"},
              TEMPLATE: {"template", "rollout_template"}},
    "generate": {PATH: {"input", "output", "continue_from", "cache_dir", "prices"}, SPEC: {"generator"},
                 TEMPLATE: {"template"}},
    "eval": {PATH: {"problems", "output", "cache_dir", "prices", "baseline", "pairs"}, SPEC: {"generator"},
             TEMPLATE: {"template"}, MODEL: {"model", "ref_model"}},
}


def parser_of(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"stepdpo {command}", add_help=False)
    importlib.import_module(f"stepdpo.commands.{command}").configure(parser)
    return parser


@pytest.mark.parametrize("command", sorted(PATHS))
def test_every_path_option_is_known_as_one(command):
    """The classification is read off the options' metavars (INPUT, RUN_DIR, DIR, FILE…); a new
    option that takes a path under another metavar fails here instead of breaking reruns."""
    kinds: dict[str, set[str]] = {}
    for action in parser_of(command)._actions:
        kind = path_kind(action)
        if kind is not None:
            kinds.setdefault(kind, set()).add(action.dest)
        elif action.nargs != 0:  # a value that names nothing on disk: numbers, choices, names
            last = action.dest.rsplit("_", 1)[-1]
            assert last not in {"dir", "file", "path", "output", "out", "input", "from", "model", "template"}, \
                action.dest
    assert kinds == PATHS[command]


def test_relative_paths_become_absolute_and_nothing_else_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "policy").mkdir(parents=True)
    (tmp_path / "rubric.json").write_text('{"user": "{problem}"}')
    (tmp_path / "plain").write_text("a file named like the built-in: still the built-in")
    argv = ["problems.jsonl", "--generator", "hf:models/policy", "-o", "out", "--cache-dir", "~/cache",
            "--template", "rubric.json", "--prices", "../prices.json", "--continue-from", "./old"]
    parser = parser_of("generate")
    words = command_words("stepdpo generate", parser_of_configure("generate"), parser.parse_args(argv))
    assert words == ["stepdpo", "generate", str(tmp_path / "problems.jsonl"),
                     "--generator", f"hf:{tmp_path / 'models' / 'policy'}", "-o", str(tmp_path / "out"),
                     "--template", str(tmp_path / "rubric.json"), "--continue-from", str(tmp_path / "old"),
                     "--cache-dir", "~/cache", "--prices", str(tmp_path.parent / "prices.json")]
    # Names stay names: a built-in template (even with a file of that name here), a hub id with no
    # folder of that name, an API spec with a URL, an MC judge's local backend path inside its spec.
    kept = ["--generator", "openai-compatible:m@http://127.0.0.1:9/v1", "--template", "plain"]
    words = command_words("stepdpo generate", parser_of_configure("generate"),
                          parser.parse_args(["p", *kept, "-o", "/abs"]))
    assert words[2:] == [str(tmp_path / "p"), *kept[:2], "-o", "/abs", *kept[2:]]
    judge = parser_of("label").parse_args(["in", "--judge", "mc:hf:models/policy", "-o", "r"])
    assert command_words("stepdpo label", parser_of_configure("label"), judge)[3:5] == \
        ["--judge", f"mc:hf:{tmp_path / 'models' / 'policy'}"]
    hub = parser_of("eval").parse_args(["--model", "Qwen/Qwen2.5-0.5B", "--ref-model", "models/policy", "-o", "o"])
    words = command_words("stepdpo eval", parser_of_configure("eval"), hub)
    assert "Qwen/Qwen2.5-0.5B" in words and str(tmp_path / "models" / "policy") in words


def parser_of_configure(command: str):
    return importlib.import_module(f"stepdpo.commands.{command}").configure


def _rerun(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "rerun to retry only them: " in ln]
    assert len(lines) == 1, err
    return lines[0].split("rerun to retry only them: ", 1)[1]


def test_a_label_rerun_recorded_with_relative_paths_resumes_from_another_directory(fake, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    first, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    first.mkdir(), elsewhere.mkdir()
    rows = gsm8k_rows([REPO / "data" / "gsm8k" / "test.jsonl"], 6)
    write_responses(rows, first / "r.parquet")
    monkeypatch.chdir(first)
    fake.faults.script = ["500", "500"]
    rc = main(["label", "r.parquet", "--judge", f"openai-compatible:gpt-4o-mini@{fake.url}/v1", "-o", "run",
               "--cache-dir", "cache", "--max-attempts", "1", "--concurrency", "1", "--progress", "none",
               "--stop-after-failures", "0"])
    rerun = _rerun(capsys.readouterr().err)
    assert rc == 1 and json.loads((first / "run" / "run.json").read_text())["rerun"] == rerun
    assert f" {first / 'r.parquet'} " in rerun and f"-o {first / 'run'}" in rerun
    assert f"--cache-dir {first / 'cache'}" in rerun

    monkeypatch.chdir(elsewhere)
    before = len(fake.requests)
    assert main(shlex.split(rerun)[1:]) == 0
    assert len(fake.requests) - before == 2, "the rerun asks only for the failed rows"
    assert os.listdir(elsewhere) == [], "nothing was written where the rerun was started"
    table = read_table(first / "run", STEP_SCORES)
    assert sorted(table.column("response_id").to_pylist()) == sorted(r["response_id"] for r in rows)
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_a_generate_rerun_recorded_with_relative_paths_resumes_from_another_directory(server, tmp_path, capsys,
                                                                                      monkeypatch):
    first, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    first.mkdir(), elsewhere.mkdir()
    write_problems(first / "problems.jsonl", [(3, 4), (10, 25)])
    monkeypatch.chdir(first)
    server.faults = ["500"] * 3
    rc = main(["generate", "problems.jsonl", "--generator", f"openai-compatible:policy@{server.url}/v1", "-o",
               "gen", "-n", "2", "--cache-dir", "cache", "--max-attempts", "1", "--concurrency", "1",
               "--progress", "none"])
    rerun = _rerun(capsys.readouterr().err)
    assert rc == 1 and json.loads((first / "gen" / "run.json").read_text())["rerun"] == rerun

    monkeypatch.chdir(elsewhere)
    before = server.requests
    assert main(shlex.split(rerun)[1:]) == 0
    assert server.requests - before == 3, "the rerun draws exactly the failed samples"
    assert os.listdir(elsewhere) == []
    table = read_table(first / "gen", RESPONSES)
    gids = sorted(json.loads(m)["generation_id"] for m in table.column("meta").to_pylist())
    assert len(gids) == len(set(gids)) == 4
