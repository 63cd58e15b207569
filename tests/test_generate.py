"""`stepdpo generate` against a scripted OpenAI-compatible policy whose right, wrong and cut-off
answers are known per (problem, sample): exact rows, answer-match labels, resume, kill -9,
faults, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labeler.sources.generation.runner import request_seed, task_id
from schemas.tables import RESPONSES, STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.policy_server import (
    FakePolicyServer,
    gold_of,
    kind_of,
    problem_text,
    solution_steps,
    write_problems,
)

REPO = Path(__file__).resolve().parent.parent
PROBLEMS = [(3, 4), (10, 25), (7, 8), (100, 1)]


@pytest.fixture()
def problems(tmp_path) -> Path:
    return write_problems(tmp_path / "problems.jsonl", PROBLEMS)


def expected(n: int, seed: int = 0) -> dict[str, dict]:
    """generation_id -> the row the scripted policy must produce."""
    out = {}
    for i, (a, b) in enumerate(PROBLEMS):
        for k in range(n):
            gid = task_id(f"p{i}", problem_text(a, b), k)
            kind = kind_of(request_seed(seed, gid))
            out[gid] = {"problem_id": f"p{i}", "steps": solution_steps(a, b, kind), "kind": kind, "k": k,
                        "answer": {"right": gold_of(a, b), "wrong": str(int(gold_of(a, b)) + 1), "cut": None}[kind]}
    return out


def gen(server, problems, out, *extra) -> int:
    return main(["generate", str(problems), "--generator", f"openai-compatible:policy@{server.url}/v1",
                 "-o", str(out), "--progress", "none", "--backoff", "0.01", *extra])


def rows_by_gid(folder) -> dict[str, dict]:
    rows = read_table(folder, RESPONSES).to_pylist()
    out = {}
    for r in rows:
        gid = json.loads(r["meta"])["generation_id"]
        assert gid not in out, "a (problem, sample) was written twice"
        out[gid] = r
    return out


def test_generate_gives_exactly_the_scripted_rows_and_answer_match_labels_them(server, problems, tmp_path, capsys):
    out, cache = tmp_path / "gen", tmp_path / "cache"
    assert gen(server, problems, out, "-n", "3", "--cache-dir", str(cache)) == 0
    want = expected(3)
    got = rows_by_gid(out)
    assert set(got) == set(want) and server.requests == 12
    kinds = {w["kind"] for w in want.values()}
    assert kinds == {"right", "wrong", "cut"}, "the script must exercise every outcome"
    for gid, w in want.items():
        r = got[gid]
        meta = json.loads(r["meta"])
        assert r["steps"] == w["steps"] and r["final_answer"] == w["answer"]
        assert r["problem_id"] == w["problem_id"] and r["gold_answer"] == gold_of(*PROBLEMS[int(w["problem_id"][1:])])
        assert meta["sample_index"] == w["k"] and meta["generator"] == "openai-compatible:policy"
        assert meta["finish_reason"] == ("length" if w["kind"] == "cut" else "stop")
        assert meta["sampling"] == {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 1024, "seed": 0}
    # The request carried the Step-DPO prompt and the sampling parameters.
    body = server.bodies[0]
    assert body["prompt"].endswith("### Response: Let's think step by step.\nStep 1: ")
    assert body["temperature"] == 0.8 and body["top_p"] == 0.95 and body["max_tokens"] == 1024
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["totals"]["samples"] == 12 and manifest["state"] == "finished"
    assert manifest["runs"][-1]["tasks"] == 12 and manifest["runs"][-1]["missing"] == 0
    assert manifest["schema"] == "stepdpo.generate/1" and len(manifest["runs"]) == 1

    # answer-match on the folder: exactly 1 for right, 0 for wrong and cut off.
    run = tmp_path / "checked"
    assert main(["label", str(out), "--judge", "answer-match", "-o", str(run), "--progress", "none",
                 "--cache-dir", str(tmp_path / "jc")]) == 0
    labeled = {r["response_id"]: r for r in read_table(run, STEP_SCORES).to_pylist()}
    for gid, w in want.items():
        row = labeled[got[gid]["response_id"]]
        assert row["status"] == "ok" and row["scores"][-1] == (1.0 if w["kind"] == "right" else 0.0)

    # A rerun makes no request; -n 4 draws only sample 3 of each problem.
    assert gen(server, problems, out, "-n", "3", "--cache-dir", str(cache)) == 0
    assert server.requests == 12 and rows_by_gid(out).keys() == want.keys()
    assert gen(server, problems, out, "-n", "4", "--cache-dir", str(cache)) == 0
    assert server.requests == 16 and rows_by_gid(out).keys() == expected(4).keys()
    # Same samples into a new folder: all from the cache.
    assert gen(server, problems, tmp_path / "gen2", "-n", "4", "--cache-dir", str(cache)) == 0
    assert server.requests == 16 and len(rows_by_gid(tmp_path / "gen2")) == 16
    capsys.readouterr()


def test_samples_that_repeat_one_another_are_one_solution_and_both_commands_say_so(server, problems, tmp_path,
                                                                                   capsys):
    """The scripted policy repeats itself (every right answer of a problem is the same text): a
    solution's response_id is problem + steps, so repeated samples are one solution, labeled
    once. Not silently: generate and label each say it in one line, with the exact counts."""
    out = tmp_path / "gen"
    assert gen(server, problems, out, "-n", "6", "--no-cache") == 0
    want = expected(6)
    distinct = {(w["problem_id"], tuple(w["steps"])) for w in want.values()}
    repeats = len(want) - len(distinct)
    assert 0 < len(distinct) < len(want), "the script must repeat itself"
    err = capsys.readouterr().err
    assert (f"generate: note: the 24 samples in {out} are {len(distinct)} distinct solutions ({repeats} repeat "
            "another sample of the same problem word for word") in err
    assert f"`stepdpo label` labels each solution once: {len(distinct)} rows" in err
    totals = json.loads((out / "run.json").read_text())["totals"]
    assert (totals["samples"], totals["distinct_solutions"]) == (24, len(distinct))
    ids = read_table(out, RESPONSES).column("response_id").to_pylist()
    assert len(ids) == 24 and len(set(ids)) == len(distinct)

    run = tmp_path / "checked"
    assert main(["label", str(out), "--judge", "answer-match", "-o", str(run), "--progress", "none",
                 "--no-cache"]) == 0
    err = capsys.readouterr().err
    assert f"label: note: {repeats} row(s) of {out} repeat an earlier row's solution" in err
    assert sorted(read_table(run, STEP_SCORES).column("response_id").to_pylist()) == sorted(set(ids))


def test_faults_are_retried_and_dry_run_sends_nothing(server, problems, tmp_path, capsys):
    out = tmp_path / "gen"
    assert gen(server, problems, out, "-n", "1", "--dry-run", "--no-cache") == 0
    assert server.requests == 0 and not out.exists()
    est = json.loads(capsys.readouterr().out)
    assert est["samples"] == 4 and est["output_tokens_max"] == 4 * 1024
    server.faults = ["429", "500", "429"]
    assert gen(server, problems, out, "-n", "1", "--no-cache") == 0
    assert server.requests == 4 + 3 and len(rows_by_gid(out)) == 4
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["runs"][-1]["retries"] == 3
    capsys.readouterr()


def test_kill_9_mid_run_then_rerun_gives_every_sample_once(problems, tmp_path):
    out, cache = tmp_path / "gen", tmp_path / "cache"
    with FakePolicyServer(latency=0.05) as srv:
        env = {**os.environ, "PYTHONPATH": str(REPO), "STEPDPO_CACHE_DIR": str(cache)}
        cmd = [sys.executable, "-m", "stepdpo", "generate", str(problems), "--generator",
               f"openai-compatible:policy@{srv.url}/v1", "-o", str(out), "-n", "5", "--shard-size", "1",
               "--concurrency", "2", "--progress", "none"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = len(list(out.glob("part-*.parquet")))
        assert 3 <= before < 20, "the kill must land mid-run"
        assert main(["generate", str(problems), "--generator", f"openai-compatible:policy@{srv.url}/v1",
                     "-o", str(out), "-n", "5", "--progress", "none", "--cache-dir", str(cache)]) == 0
    got = rows_by_gid(out)  # asserts no duplicate
    assert set(got) == set(expected(5))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_bad_input_and_refusals_are_one_line_errors(server, problems, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no answer here"}) + "\n")
    assert gen(server, bad, tmp_path / "o1") == 2
    assert "no answer field" in capsys.readouterr().err
    assert gen(server, problems, tmp_path / "o2", "-n", "0") == 2
    assert gen(server, problems, tmp_path / "o3", "--top-p", "1.5") == 2
    assert main(["generate", str(problems), "--generator", "nope:x", "-o", str(tmp_path / "o4")]) == 2
    assert "unknown generator" in capsys.readouterr().err
    # Another configuration into the same folder is refused, before any request.
    assert gen(server, problems, tmp_path / "o5", "--no-cache") == 0
    n = server.requests
    assert gen(server, problems, tmp_path / "o5", "--no-cache", "--temperature", "0.2") == 2
    err = capsys.readouterr().err
    assert "write to a new -o folder" in err and server.requests == n
    # ... naming what differs (both sides used to read "policy with template step-dpo")
    assert "temperature 0.8," in err and "temperature 0.2," in err, err
    # --continue-from an outcome-only run is refused with the reason.
    run = tmp_path / "am"
    assert main(["label", str(tmp_path / "o5"), "--judge", "answer-match", "-o", str(run), "--progress", "none",
                 "--no-cache"]) == 0
    capsys.readouterr()
    assert main(["generate", "--continue-from", str(run), "--generator", f"openai-compatible:policy@{server.url}/v1",
                 "-o", str(tmp_path / "o6")]) == 2
    err = capsys.readouterr().err
    assert "knows only whether the final answer is right" in err and err.count("\n") == 1


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_chat_backends_through_the_real_sdks(server, backend, monkeypatch):
    """openai: (no prefill: a continuation's prefix is shown in the user turn) and anthropic:
    (assistant prefill) give the scripted steps, fresh and as continuations."""
    import asyncio

    from labeler.sources.generation.base import Sampling
    from labeler.sources.generation.problems import Problem
    from labeler.sources.generation.prompts import TEMPLATES
    from labeler.sources.generation.registry import create_generator
    from labeler.sources.generation.runner import GenConfig, GenerationEngine
    from labeler.sources.generation.store import GenerationDir
    from labeler.sources.generation.tasks import sample_tasks
    from labeler.sources.splitters import get_splitter

    env = {"openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "/v1"), "anthropic": ("ANTHROPIC_API_KEY",
                                                                                "ANTHROPIC_BASE_URL", "")}
    key, url, suffix = env[backend]
    monkeypatch.setenv(key, "sk-test-123456")
    monkeypatch.setenv(url, server.url + suffix)
    gen = create_generator(f"{backend}:model-x")
    sampling = Sampling()
    a, b = PROBLEMS[0]
    tasks = sample_tasks([Problem("p0", problem_text(a, b), gold_of(a, b), "t")], TEMPLATES["chat"], 6, sampling)
    engine = GenerationEngine(gen, GenerationDir("unused"), GenConfig(), sampling, get_splitter("step-markers"))

    async def draw(ts):
        try:
            return [(t, (await gen.generate([t.request], sampling))[0]) for t in ts]
        finally:
            await gen.aclose()

    def seed(task):  # the Messages API takes no seed: the fake then sees 0
        return task.request.seed if backend == "openai" else 0

    for task, g in asyncio.run(draw(tasks)):
        row = engine.row_of(task, g)
        assert row["steps"] == solution_steps(a, b, kind_of(seed(task)))
    # A continuation of the correct first step.
    prefix = solution_steps(a, b, "right")[:1]
    for t in tasks:
        t.prefix_steps, t.marker = prefix, "Step 2: "
        t.request.prefill, t.request.continuation = prefix[0] + "\nStep 2: ", True
    for task, g in asyncio.run(draw(tasks)):
        row = engine.row_of(task, g)
        assert row["steps"] == solution_steps(a, b, kind_of(seed(task), continuation=True))
    assert all("sk-test" not in json.dumps(b) for b in server.bodies)


def test_flaw_rewrites_correct_solutions_with_known_reference_scores(server, tmp_path, capsys):
    from schemas.ids import response_id
    from schemas.tables import from_rows, write_table

    rows = []
    for i, (a, b) in enumerate(PROBLEMS):
        steps = [s.split(": ", 1)[1] for s in solution_steps(a, b, "right")]  # written without markers
        rows.append({"response_id": response_id(problem_text(a, b), steps), "problem_id": f"p{i}", "source": "t",
                     "prompt": problem_text(a, b), "steps": steps, "final_answer": gold_of(a, b),
                     "gold_answer": gold_of(a, b)})
    wrong = dict(rows[0], steps=rows[0]["steps"][:2] + ["The answer is \\boxed{1}."], final_answer="1",
                 response_id="x")
    src = tmp_path / "solutions.parquet"
    write_table(from_rows(rows + [wrong], RESPONSES), src, RESPONSES)
    out = tmp_path / "flawed"
    assert gen(server, src, out, "--flaw", "--flaw-step", "2", "--no-cache") == 0
    got = read_table(out, RESPONSES).to_pylist()
    assert len(got) == len(PROBLEMS)  # the already-wrong solution is not flawed again
    for r in got:
        a, b = PROBLEMS[int(r["problem_id"][1:])]
        original = [s.split(": ", 1)[1] for s in solution_steps(a, b, "right")]
        assert r["steps"][0] == original[0]
        assert r["steps"][1:] == [s.split(": ", 1)[1] for s in solution_steps(a, b, "wrong")[1:]]
        assert r["reference_scores"] == [1.0, 0.0, None]
        assert json.loads(r["meta"])["flaw"]["step"] == 1
    # The free step judge finds the known error where reference_scores put it.
    run = tmp_path / "calc"
    assert main(["label", str(out), "--judge", "gsm8k-calc", "-o", str(run), "--progress", "none",
                 "--no-cache"]) == 0
    for r in read_table(run, STEP_SCORES).to_pylist():
        assert r["scores"][:2] == [1.0, 0.0]
    body = server.bodies[-1]
    assert body["messages"][0]["role"] == "system" and "from step 2 on" in body["messages"][1]["content"]
    # Nothing correct to rewrite (only the wrong solution, or steps too few): one line that says
    # why, not "no problems"; no request, no folder.
    only_wrong = tmp_path / "wrong.parquet"
    write_table(from_rows([wrong], RESPONSES), only_wrong, RESPONSES)
    capsys.readouterr()
    before = server.requests
    for src_, extra, why in ((only_wrong, [], "skipped: 1 not correct"),
                             (src, ["--flaw-step", "4"], f"skipped: 1 not correct, {len(PROBLEMS)} shorter than --flaw-step 4")):
        assert gen(server, src_, tmp_path / "none", "--flaw", "--no-cache", *extra) == 0
        err = capsys.readouterr().err
        assert f"generate: nothing to rewrite in {src_}: --flaw rewrites correct solutions" in err and why in err
    assert server.requests == before and not (tmp_path / "none").exists()


def test_a_dead_backend_stops_the_run_with_one_line(problems, tmp_path, capsys, transport):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "gen"
    start = time.monotonic()
    rc = main(["generate", str(problems), "--generator", f"openai-compatible:policy@http://127.0.0.1:{port}/v1",
               "-o", str(out), "-n", "10", "--max-attempts", "2", "--backoff", "0.01", "--progress", "none",
               "--no-cache", "--concurrency", "4", "--http-transport", transport])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("stepdpo generate: error:")]
    assert rc == 2 and len(lines) == 1 and "stopped: the server looks down: the first" in lines[0], err
    assert "× connection error" in lines[0]
    assert time.monotonic() - start < 60
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["state"] == "aborted" and manifest["totals"]["samples"] == 0
    # With the dead-server check off, the older backstop still ends it: the first 16 samples
    # failed after their retries and none worked.
    rc = main(["generate", str(problems), "--generator", f"openai-compatible:policy@http://127.0.0.1:{port}/v1",
               "-o", str(out), "-n", "10", "--max-attempts", "2", "--backoff", "0.01", "--progress", "none",
               "--no-cache", "--concurrency", "4", "--http-transport", transport, "--stop-after-failures", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "samples all failed" in err and "connection error" in err and "looks down" not in err


def test_backend_and_input_mismatches_are_refused_up_front(server, problems, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    # OpenAI's own API has no raw completions: the Step-DPO text template is refused before a request.
    assert main(["generate", str(problems), "--generator", "openai:gpt-4o-mini", "-o", str(tmp_path / "a")]) == 2
    assert "--template chat" in capsys.readouterr().err and server.requests == 0 and not (tmp_path / "a").exists()
    # --flaw needs solutions (a responses file), not a problems file.
    assert gen(server, problems, tmp_path / "b", "--flaw") == 2
    assert "needs a responses file" in capsys.readouterr().err
    assert main(["generate", str(problems), "--generator", "hf:./no/such/model", "-o", str(tmp_path / "c")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    # A labeled run given as INPUT is named, with the option that continues it.
    run = tmp_path / "run"
    assert gen(server, problems, tmp_path / "d", "--no-cache") == 0
    assert main(["label", str(tmp_path / "d"), "--judge", "gsm8k-calc", "-o", str(run), "--progress", "none",
                 "--no-cache"]) == 0
    capsys.readouterr()
    assert gen(server, run, tmp_path / "e") == 2
    assert "a 'step_scores' file" in capsys.readouterr().err


class _Planted:
    """Unpickling this would create a file: proof that a cache entry ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_cache_entry_is_never_loaded(server, problems, tmp_path, capsys):
    from diskcache import FanoutCache

    from labeler.sources.generation.base import Sampling
    from labeler.sources.generation.problems import load_problems
    from labeler.sources.generation.prompts import TEMPLATES
    from labeler.sources.generation.registry import create_generator
    from labeler.sources.generation.store import generation_key
    from labeler.sources.generation.tasks import sample_tasks

    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    gen_ = create_generator(f"openai-compatible:policy@{server.url}/v1")
    sampling = Sampling()
    tasks = sample_tasks(load_problems(problems), TEMPLATES["step-dpo"], 1, sampling)
    planted = FanoutCache(str(cache), shards=8)  # diskcache's default Disk pickles
    for t in tasks:
        planted.set(generation_key(gen_, t.request, sampling), _Planted(str(marker)))
    planted.close()
    assert gen(server, problems, tmp_path / "out", "--cache-dir", str(cache)) == 0
    assert not marker.exists() and server.requests == len(tasks)
    assert "is not ours" in capsys.readouterr().err
    assert len(rows_by_gid(tmp_path / "out")) == len(tasks)


@pytest.mark.parametrize("flag, value, line", [
    ("--timeout", "0", "--timeout must be a positive number of seconds, not 0"),
    ("--timeout", "nan", "--timeout must be a positive number of seconds, not nan"),
    ("--log-interval", "0", "--log-interval must be positive"),
    ("--backoff", "-1", "--backoff and --max-backoff must not be negative"),
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--temperature", "0", "-n 2 at --temperature 0 draws 2 identical greedy solutions; set --temperature "
                           "(Step-DPO samples at 0.8)"),
])
def test_bad_engine_options_are_refused_before_any_request(flag, value, line, server, problems, tmp_path, capsys):
    """As `label` refuses them: one line, no request, no folder (a --timeout of 0 used to fail
    every request and leave an aborted folder)."""
    out = tmp_path / "gen"
    assert gen(server, problems, out, "-n", "2", flag, value) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"stepdpo generate: error: {line}"]
    assert server.requests == 0 and not out.exists()
