"""combine: exact tables on hand-made runs for every method; --escalate sends exactly the
disputed responses (to the real OpenAI SDK against the loopback fake) and merges its scores."""

from __future__ import annotations

import json

import pytest

from labeler.combine import CombineOptions, combine, read_input
from labeler.engine.rundir import RunDir
from schemas.ids import response_id
from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.llm_server import FakeLLMServer, score_of

KEY = "sk-test-combine-0123456789"
# (problem, steps): r1..r5
PROBLEMS = {
    "r1": ("What is 2+3?", ["2+3=5", "Then double it: 5*2=11", "The answer is 11"]),
    "r2": ("What is 4*4?", ["4*4=16", "The answer is 16"]),
    "r3": ("What is 9-7?", ["9-7=3", "The answer is 3"]),
    "r4": ("What is 1+1?", ["1+1=2"]),
    "r5": ("What is 6/2?", ["6/2=3"]),
}
A = {"r1": [0.9, 0.8, 0.2], "r2": [0.6, 0.9], "r3": [0.1, 0.2], "r4": [1.0], "r5": [1.0]}
B = {"r1": [0.7, 0.3, 0.1], "r2": [0.8, None], "r3": [0.3, 0.4], "r5": "error"}


def make_run(path, judge, scores, cost=0.001):
    rows = []
    for key, value in scores.items():
        prompt, steps = PROBLEMS[key]
        ok = value != "error"
        rows.append({"response_id": response_id(prompt, steps), "problem_id": key, "source": "test",
                     "prompt": prompt, "steps": steps, "final_answer": None, "gold_answer": None,
                     "reference_scores": None, "meta": None, "judge": judge,
                     "judge_fingerprint": f"fp-{judge}", "scores": value if ok else None, "raw": None,
                     "status": "ok" if ok else "error", "error": None if ok else "boom", "attempts": 1,
                     "input_tokens": 100, "output_tokens": 10, "cached_tokens": 0,
                     "cost_usd": cost, "latency_s": 0.1, "created_at": None})
    RunDir(path).write_shard(rows)
    RunDir(path).record_run({"judge": judge, "judge_fingerprint": f"fp-{judge}"}, {"state": "finished"})
    return path


@pytest.fixture
def runs(tmp_path):
    return make_run(tmp_path / "a", "judge-a", A), make_run(tmp_path / "b", "judge-b", B)


def table(runs, **kw):
    result = combine([read_input(str(p)) for p in runs], CombineOptions(**kw))
    by_key = {r["problem_id"]: r["scores"] for r in result.rows}
    return by_key, result


def approx(d):
    return {k: pytest.approx(v, abs=1e-12) if not any(x is None for x in v) else v for k, v in d.items()}


def test_mean_min_weighted_vote(runs):
    got, result = table(runs, how="mean")
    assert got == approx({"r1": [0.8, 0.55, 0.15], "r2": [0.7, 0.9], "r3": [0.2, 0.3]})
    assert result.counts.missing == 2 and result.counts.responses == 3  # r4 absent from b, r5 an error there
    got, _ = table(runs, how="min")
    assert got == approx({"r1": [0.7, 0.3, 0.1], "r2": [0.6, 0.9], "r3": [0.1, 0.2]})
    got, _ = table(runs, how="weighted", weights=[3, 1])
    assert got == approx({"r1": [0.85, 0.675, 0.175], "r2": [0.65, 0.9], "r3": [0.15, 0.25]})
    got, result = table(runs, how="vote")
    assert got == {"r1": [1.0, None, 0.0], "r2": [1.0, 1.0], "r3": [0.0, 0.0]}
    assert result.counts.disputed == 1


def test_consensus_keeps_only_agreed_steps_with_counts(runs):
    got, result = table(runs, how="consensus")
    assert got["r1"][0] == pytest.approx(0.8) and got["r1"][1] is None and got["r1"][2] == pytest.approx(0.15)
    assert got["r2"][0] == pytest.approx(0.7) and got["r2"][1] is None
    assert got["r3"] == pytest.approx([0.2, 0.3])
    c = result.counts
    assert (c.steps, c.disputed, c.partial, c.rows_all_agreed) == (7, 1, 1, 1)
    assert [r["problem_id"] for r in result.disputed_rows] == ["r1"]  # r2's null is partial, not disputed
    raw = json.loads(next(r for r in result.rows if r["problem_id"] == "r1")["raw"])
    assert raw["disputed"] == [1] and raw["inputs"]["judge-b"] == [0.7, 0.3, 0.1]


def test_cli_writes_a_run_whose_fingerprint_names_its_inputs(runs, tmp_path, capsys):
    out = tmp_path / "both"
    assert main(["combine", *map(str, runs), "-o", str(out), "--how", "consensus"]) == 0
    err = capsys.readouterr().err
    assert "3 responses" in err and "5 of 7 step labels kept (1 disputed, 1 partial)" in err
    assert "cost $0.0090 spent, $0.001800 per accepted label" in err  # 9 rows x $0.001 / 5 labels
    rows = read_table(out, STEP_SCORES).to_pylist()
    manifest = json.loads((out / "run.json").read_text())
    assert {r["judge"] for r in rows} == {"combine:consensus"}
    assert {r["judge_fingerprint"] for r in rows} == {manifest["judge_fingerprint"]}
    assert [i["judge_fingerprint"] for i in manifest["inputs"]] == ["fp-judge-a", "fp-judge-b"]
    assert manifest["combine"]["cost_per_accepted_label"] == pytest.approx(0.0018)
    # another input fingerprint → another output fingerprint; the same inputs → the same one
    make_run(tmp_path / "b2", "judge-b2", B)
    assert main(["combine", str(runs[0]), str(tmp_path / "b2"), "-o", str(tmp_path / "o2"), "--how", "consensus"]) == 0
    assert json.loads((tmp_path / "o2" / "run.json").read_text())["judge_fingerprint"] != manifest["judge_fingerprint"]
    capsys.readouterr()
    assert main(["combine", *map(str, runs), "-o", str(out), "--how", "consensus"]) == 2
    assert "already holds a run; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--how", "weighted"], "--how weighted needs --weights with one number per input (2)"),
    (["--how", "mean", "--weights", "1", "2"], "--weights applies only to --how weighted"),
    (["--how", "mean", "--escalate", "gsm8k-calc"], "--escalate settles disputed steps"),
])
def test_bad_options_are_one_line_errors(runs, tmp_path, capsys, argv, message):
    assert main(["combine", *map(str, runs), "-o", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_run_of_two_judges_is_refused(runs, tmp_path, capsys):
    mixed = make_run(tmp_path / "mixed", "judge-a", A)
    make_run(tmp_path / "other", "judge-c", B)
    (tmp_path / "other" / "part-00000.parquet").rename(mixed / "part-00001.parquet")
    assert main(["combine", str(mixed), str(runs[1]), "-o", str(tmp_path / "o")]) == 2
    assert "combine takes one judge per input run" in capsys.readouterr().err


def test_escalate_sends_exactly_the_disputed_responses(runs, tmp_path, monkeypatch, capsys):
    with FakeLLMServer() as fake:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
        out = tmp_path / "both"
        argv = ["combine", *map(str, runs), "-o", str(out), "--how", "consensus", "--escalate",
                "openai:gpt-4o-mini", "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]
        assert main(argv) == 0, capsys.readouterr().err
        assert fake.total_requests == 1
        body = json.dumps(fake.requests[0]["body"])
        assert PROBLEMS["r1"][0] in body and all(PROBLEMS[k][0] not in body for k in ("r2", "r3", "r4", "r5"))
        rows = {r["problem_id"]: r for r in read_table(out, STEP_SCORES).to_pylist()}
        r1 = rows["r1"]["scores"]
        assert r1[0] == pytest.approx(0.8) and r1[2] == pytest.approx(0.15)
        assert r1[1] == pytest.approx(score_of(PROBLEMS["r1"][1][1]), abs=1e-9)  # the escalation judge's
        assert rows["r2"]["scores"][1] is None  # partial: not escalated
        manifest = json.loads((out / "run.json").read_text())
        c = manifest["combine"]
        assert (c["escalated_rows"], c["escalation_settled"], c["escalation_errors"], c["kept"]) == (1, 1, 0, 6)
        esc_cost = rows["r1"]["cost_usd"] - 0.002
        assert esc_cost > 0
        assert c["spent_usd"] == pytest.approx(0.009 + esc_cost, abs=1e-6)
        assert c["cost_per_accepted_label"] == pytest.approx(c["spent_usd"] / 6, abs=1e-8)
        assert manifest["escalation"]["judge"] == "openai:gpt-4o-mini"
        # a rerun pays nothing again: the escalation run resumes
        fake.reset_counts()
        assert main([*argv, "--overwrite"]) == 0
        assert fake.total_requests == 0
        again = {r["problem_id"]: r["scores"] for r in read_table(out, STEP_SCORES).to_pylist()}
        assert again == {k: v["scores"] for k, v in rows.items()}


def test_overwrite_replaces_only_a_combined_run_and_whole(runs, tmp_path, capsys, monkeypatch):
    """--overwrite used to rmtree whatever OUT was (a paid judge run, a generate folder, pairs) and
    then write shards one by one: a crash in between lost the old run and left a partial one."""
    judge_run = make_run(tmp_path / "paid", "judge-paid", A)
    (judge_run / "run.json").write_text(json.dumps({"judge": "openai:gpt-4o", "schema": "stepdpo.run/1"}))
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "pairs.json").write_text("{}")
    for out, message in ((judge_run, "holds a run of judge openai:gpt-4o, not a combined run"),
                         (pairs, "holds a pairs folder")):
        before = sorted(p.name for p in out.iterdir())
        assert main(["combine", *map(str, runs), "-o", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert sorted(p.name for p in out.iterdir()) == before
    assert main(["combine", str(runs[0]), str(runs[0]), "-o", str(tmp_path / "x")]) == 2
    assert "is given twice" in capsys.readouterr().err
    # a combined run is replaced whole: a failure while writing the new one keeps the old one
    out = tmp_path / "both"
    assert main(["combine", *map(str, runs), "-o", str(out), "--how", "mean"]) == 0
    old = read_table(out, STEP_SCORES).to_pylist()
    old_manifest = (out / "run.json").read_text()

    def crash(self, *a, **k):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(RunDir, "record_run", crash)
    with pytest.raises(RuntimeError):
        main(["combine", *map(str, runs), "-o", str(out), "--how", "min", "--overwrite"])
    monkeypatch.undo()
    assert read_table(out, STEP_SCORES).to_pylist() == old and (out / "run.json").read_text() == old_manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".both")]
    assert main(["combine", *map(str, runs), "-o", str(out), "--how", "min", "--overwrite"]) == 0
    assert {r["judge"] for r in read_table(out, STEP_SCORES).to_pylist()} == {"combine:min"}
