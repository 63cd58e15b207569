"""`stepdpo eval`: accuracy, pass@k and maj@k against a scripted policy whose right answers are
known per (problem, sample); the paired bootstrap; implicit rewards on pairs against an
independent log-prob computation; bad input."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import pytest

from labeler.evaluation.metrics import majority, paired_bootstrap, pass_at_k
from labeler.sources.generation.runner import request_seed, task_id
from schemas.evaluation import EVAL_PROBLEMS
from schemas.folders import write_manifest
from schemas.tables import read_table
from stepdpo.cli import main
from tests.fakes.policy_server import (
    gold_of,
    kind_of,
    problem_text,
    write_problems,
)

PROBLEMS = [(3, 4), (10, 25), (7, 8), (100, 1), (2, 2), (5, 9)]


@pytest.fixture()
def problems(tmp_path) -> Path:
    return write_problems(tmp_path / "problems.jsonl", PROBLEMS)


def kinds(n: int, seed: int = 0) -> list[list[str]]:
    """The scripted outcome of every (problem, sample): right, wrong or cut off."""
    return [[kind_of(request_seed(seed, task_id(f"p{i}", problem_text(a, b), k))) for k in range(n)]
            for i, (a, b) in enumerate(PROBLEMS)]


def run_eval(server, problems, out, *extra) -> int:
    return main(["eval", str(problems), "--generator", f"openai-compatible:policy@{server.url}/v1", "-o", str(out),
                 "--progress", "none", "--cache-dir", str(Path(out).parent / "cache"), *extra])


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (c correct) holding a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_the_share_of_k_subsets_with_a_right_sample():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_majority_is_the_most_frequent_answer_ties_to_the_earliest():
    assert majority(["1", "2", "2", None]) == 1
    assert majority(["3", "4"]) == 0  # tie: earliest
    assert majority([None, None]) is None
    assert majority(["1,000", "1000", "7"], keys=["#1000", "#1000", "#7"]) == 0


def test_paired_bootstrap_brackets_the_difference():
    same = paired_bootstrap([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], resamples=200)
    assert same["difference"] == 0 and same["low"] == same["high"] == 0 and same["p_not_better"] == 1.0
    better = paired_bootstrap([1.0] * 20, [0.0] * 10 + [1.0] * 10, resamples=500)
    assert better["difference"] == 0.5 and 0 < better["low"] <= 0.5 <= better["high"] <= 1
    assert better["p_not_better"] == 0.0


def test_eval_reports_exactly_the_scripted_accuracy_pass_at_k_and_maj_at_k(server, problems, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run_eval(server, problems, out, "-n", "3", "--temperature", "0.8") == 0
    ks = kinds(3)
    assert {k for row in ks for k in row} == {"right", "wrong", "cut"}
    summary = json.loads((out / "summary.json").read_text())
    right = [[k == "right" for k in row] for row in ks]
    assert summary["problems"] == len(PROBLEMS) and summary["samples_per_problem"] == 3
    assert summary["accuracy"] == pytest.approx(sum(r[0] for r in right) / len(PROBLEMS))
    for k in (1, 2, 3):
        want = sum(brute_pass_at_k(3, sum(r), k) for r in right) / len(PROBLEMS)
        assert summary["pass_at_k"][str(k)] == pytest.approx(want)
    # maj@3: the wrong answer is gold + 1, a cut-off sample states none.
    maj = []
    for row in ks:
        stated = [("R" if k == "right" else "W") for k in row if k != "cut"]
        maj.append(bool(stated) and max(stated, key=lambda s: (stated.count(s), -stated.index(s))) == "R")
    assert summary["maj_at_k"]["3"] == pytest.approx(sum(maj) / len(PROBLEMS))
    assert summary["cut_off_samples"] == sum(k == "cut" for row in ks for k in row)
    table = read_table(out / "problems.parquet", EVAL_PROBLEMS).to_pylist()
    assert [r["problem_id"] for r in table] == [f"p{i}" for i in range(len(PROBLEMS))]
    for r, row_right, (a, b) in zip(table, right, PROBLEMS, strict=True):
        assert r["correct"] == row_right and r["num_correct"] == sum(row_right) and r["gold_answer"] == gold_of(a, b)
    printed = capsys.readouterr().out
    assert "pass@3" in printed and "maj@3" in printed
    # A rerun samples nothing again and writes the same numbers.
    before = server.requests
    assert run_eval(server, problems, out, "-n", "3", "--temperature", "0.8") == 0
    assert server.requests == before
    assert json.loads((out / "summary.json").read_text())["pass_at_k"] == summary["pass_at_k"]


def test_eval_baseline_compares_on_shared_problems(server, problems, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_eval(server, problems, a, "--seed", "0") == 0
    assert run_eval(server, problems, b, "--seed", "5", "--baseline", str(a), "--resamples", "500") == 0
    first_a = [row[0] == "right" for row in kinds(1, seed=0)]
    first_b = [row[0] == "right" for row in kinds(1, seed=5)]
    cmp = json.loads((b / "summary.json").read_text())["baseline"]
    assert cmp["problems"] == len(PROBLEMS)
    assert cmp["difference"] == pytest.approx((sum(first_b) - sum(first_a)) / len(PROBLEMS))
    assert cmp["low"] <= cmp["difference"] <= cmp["high"]
    assert cmp["only_this_better"] == sum(x and not y for x, y in zip(first_b, first_a, strict=True))
    assert "paired bootstrap" in capsys.readouterr().out
    # `inspect` of an eval folder points at its summary instead of "unknown stepdpo file kind".
    assert main(["inspect", str(b)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"stepdpo inspect: error: {b}: holds 'eval_problems' data; inspect reads responses, step_scores, pairs "
        f"files; an eval result: its numbers are in {b / 'summary.json'}, and `stepdpo eval ... --baseline {b}` "
        "compares another eval with it")


def test_eval_bad_input_is_one_line_and_samples_nothing(server, problems, tmp_path, capsys):
    assert run_eval(server, problems, tmp_path / "x", "-n", "3") == 2
    assert "identical greedy solutions" in capsys.readouterr().err
    assert run_eval(server, problems, tmp_path / "x", "--baseline", str(tmp_path)) == 2
    assert "not an eval folder" in capsys.readouterr().err
    assert main(["eval", "--model", "m", "-o", str(tmp_path / "x")]) == 2
    assert "go with --pairs" in capsys.readouterr().err
    assert main(["eval", "--pairs", str(tmp_path), "-o", str(tmp_path / "x")]) == 2
    assert "--pairs needs --model" in capsys.readouterr().err
    # the problems mode's options are refused with --pairs, not silently ignored
    for extra, message in (
        (["--generator", "hf:work/model"], f"--generator samples problems and does not go with --pairs, whose "
                                           f"policy is --model (implicit rewards need its weights): use --pairs "
                                           f"{tmp_path} --model work/model"),
        ([str(problems)], "PROBLEMS"),
        (["--baseline", str(tmp_path)], "--baseline compares two problem evaluations"),
    ):
        assert main(["eval", "--pairs", str(tmp_path), "--model", "m", "-o", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert server.requests == 0 and not (tmp_path / "x").exists()



def test_eval_refuses_an_output_folder_holding_another_result_and_leaves_it_whole(server, problems, tmp_path,
                                                                                 capsys):
    """-o onto a label run, a generate folder or a pairs folder would drop problems.parquet among
    its shards, and every reader of that folder would then fail; --limit 0 is not 'no limit'."""
    from schemas.tables import RESPONSES, from_rows, read_table, write_table

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"response_id": "r0", "problem_id": "p0", "source": "s", "prompt": "q", "steps": ["a"],
             "final_answer": "1", "gold_answer": "1", "reference_scores": None, "meta": "{}"}]
    write_table(from_rows(rows, RESPONSES), run / "part-00000.parquet", RESPONSES)
    (run / "run.json").write_text("{}")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "pairs.json").write_text("{}")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for folder, what in ((run, "a label or generate run"), (pairs, "a pairs folder"), (model, "a model")):
        before = sorted(p.name for p in folder.iterdir())
        assert run_eval(server, problems, folder) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1, err
        assert sorted(p.name for p in folder.iterdir()) == before
    (run / "run.json").unlink()
    assert run_eval(server, problems, run) == 2  # shards alone mark it too
    assert "part-00000.parquet" in capsys.readouterr().err
    assert read_table(run, RESPONSES).num_rows == 1
    assert run_eval(server, problems, tmp_path / "e", "--limit", "0") == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
    assert main(["eval", "--pairs", str(pairs), "--model", "m", "-o", str(run)]) == 2
    assert "another result" in capsys.readouterr().err
    assert server.requests == 0
    # its own earlier result is resumed, not refused
    assert run_eval(server, problems, tmp_path / "e") == 0
    assert run_eval(server, problems, tmp_path / "e") == 0

# -- implicit rewards on pairs ---------------------------------------------------------------------

def _logp(model, tokenizer, prompt: str, completion: str) -> float:
    """Independent oracle: one plain forward over prompt + completion; the completion's tokens are
    those after the prompt's own tokenization (their common prefix)."""
    import torch

    p_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion)["input_ids"]
    cut = next((i for i, (x, y) in enumerate(zip(p_ids, full, strict=False)) if x != y), min(len(p_ids), len(full)))
    ids = torch.tensor([full])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    logps = torch.log_softmax(logits[0, :-1], -1)
    return sum(logps[i - 1, full[i]].item() for i in range(cut, len(full)))


@pytest.mark.slow
def test_eval_pairs_implicit_rewards_match_an_independent_computation(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from schemas.tables import PAIRS, from_rows, write_table
    from trainer.tiny_model import build_tiny_model

    policy = build_tiny_model(tmp_path / "policy", seed=1)
    ref = build_tiny_model(tmp_path / "ref", seed=0)
    rows = []
    for i, (a, b) in enumerate(PROBLEMS[:4]):
        s = a + b
        rows.append({"pair_id": f"x{i}", "prompt": problem_text(a, b), "prefix_steps": [f"Step 1: {a} + {b} = {s}."],
                     "chosen_steps": [f"Step 2: {s} * 2 = {2 * s}."],
                     "rejected_steps": [f"Step 2: {s} * 2 = {2 * s + 1}."],
                     "chosen_scores": [1.0], "rejected_scores": [0.0], "chosen_reward": 1.0,
                     "rejected_reward": 0.0, "strategy": "first-error", "judge_fingerprint": "f",
                     "chosen_response_id": f"c{i}", "rejected_response_id": f"r{i}", "problem_id": f"p{i}"})
    pairs = tmp_path / "pairs"
    write_table(from_rows(rows, PAIRS), pairs / "part-00000.parquet", PAIRS)
    write_manifest(pairs, "pairs.json", {"schema": PAIRS.tag})  # as `stepdpo pairs` vouches for its folder
    out = tmp_path / "pe"
    assert main(["eval", "--pairs", str(pairs), "--model", str(policy), "--ref-model", str(ref), "--beta", "0.5",
                 "-o", str(out), "--output-tokens", "4"]) == 0
    results = [json.loads(line) for line in (out / "pairs_eval.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(policy)
    pm, rm = AutoModelForCausalLM.from_pretrained(policy).eval(), AutoModelForCausalLM.from_pretrained(ref).eval()
    for row, res in zip(rows, results, strict=True):
        prompt = row["prompt"] + "\n" + row["prefix_steps"][0] + "\n"
        for side in ("chosen", "rejected"):
            text = row[f"{side}_steps"][0]
            want = 0.5 * (_logp(pm, tok, prompt, text) - _logp(rm, tok, prompt, text))
            assert res[f"{side}_score"] == pytest.approx(want, abs=1e-4)
        assert res["preferred"] == ("chosen" if res["chosen_score"] > res["rejected_score"] else "rejected")
        assert isinstance(res["model_output"], str)
    with open(out / "pairs_eval.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["pair_id"] for r in table] == [r["pair_id"] for r in rows]
    assert set(table[0]) >= {"prompt", "model_output", "chosen_score", "rejected_score", "preferred"}
    summary = json.loads((out / "pairs_summary.json").read_text())
    assert summary["preferred_correctly"] == sum(r["correct"] for r in results) / len(results)
    # The reference against itself: every pair a tie, none preferred correctly.
    assert main(["eval", "--pairs", str(pairs), "--model", str(ref), "--ref-model", str(ref), "-o",
                 str(tmp_path / "self"), "--no-generate-outputs"]) == 0
    same = json.loads((tmp_path / "self" / "pairs_summary.json").read_text())
    assert same["ties"] == 4 and same["preferred_correctly"] == 0 and math.isclose(same["mean_margin"], 0.0)
    assert main(["eval", "--pairs", str(pairs), "--model", str(ref), "-o", str(tmp_path / "y")]) == 2
    assert "pass --ref-model" in capsys.readouterr().err
