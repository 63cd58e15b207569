"""Step-DPO's rectify loop end to end on the scripted policy: sample → locate first errors
(gsm8k-calc) → continue the correct prefixes → answer-match → first-error pairs whose chosen
step comes from a correct continuation of the same prefix."""

from __future__ import annotations

import json

import pytest

from schemas.tables import PAIRS, RESPONSES, STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.policy_server import (
    FakePolicyServer,
    solution_steps,
    write_problems,
)

PROBLEMS = [(3, 4), (10, 25), (7, 8), (100, 1), (6, 6)]


@pytest.fixture()
def problems(tmp_path):
    return write_problems(tmp_path / "problems.jsonl", PROBLEMS, text_field="problem")


def test_rectify_end_to_end(problems, tmp_path, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    with FakePolicyServer() as srv:
        policy = f"openai-compatible:policy@{srv.url}/v1"
        assert main(["generate", str(problems), "--generator", policy, "-o", str(tmp_path / "gen"), "-n", "3",
                     "--progress", "none", *cache]) == 0
        assert main(["label", str(tmp_path / "gen"), "--judge", "gsm8k-calc", "-o", str(tmp_path / "located"),
                     "--progress", "none", *cache]) == 0
        located = read_table(tmp_path / "located", STEP_SCORES).to_pylist()
        wrong = {r["response_id"]: r for r in located if r["scores"] and 0.0 in r["scores"]}
        assert wrong, "the script must produce wrong solutions"
        assert all(r["scores"].index(0.0) == 1 for r in wrong.values())  # the doubled sum at step 2
        assert main(["generate", "--continue-from", str(tmp_path / "located"), "--generator", policy, "-n", "4",
                     "-o", str(tmp_path / "cont"), "--progress", "none", *cache]) == 0
    conts = read_table(tmp_path / "cont", RESPONSES).to_pylist()
    assert len(conts) == 4 * len(wrong)
    for c in conts:
        meta = json.loads(c["meta"])
        bad = wrong[meta["continues"]]
        assert meta["prefix_len"] == 1 and c["steps"][:1] == bad["steps"][:1]
        a, b = PROBLEMS[int(c["problem_id"][1:])]
        assert c["steps"][1:] in (solution_steps(a, b, "right")[1:], solution_steps(a, b, "wrong")[1:])
    assert main(["label", str(tmp_path / "cont"), "--judge", "answer-match", "-o", str(tmp_path / "checked"),
                 "--progress", "none", *cache]) == 0
    checked = {r["response_id"]: r for r in read_table(tmp_path / "checked", STEP_SCORES).to_pylist()}
    right_cont = {json.loads(c["meta"])["continues"] for c in conts if checked[c["response_id"]]["scores"][-1] == 1.0}
    assert right_cont, "some wrong solution must have a correct continuation"

    for mode in ("step", "rest"):
        out = tmp_path / f"pairs-{mode}"
        assert main(["pairs", str(tmp_path / "located"), str(tmp_path / "checked"), "-o", str(out),
                     "--strategy", "first-error", "--continuation", mode]) == 0
        pairs = read_table(out, PAIRS).to_pylist()
        assert {p["rejected_response_id"] for p in pairs} == right_cont and len(pairs) == len(right_cont)
        for p in pairs:
            bad = wrong[p["rejected_response_id"]]
            cont = next(c for c in conts if c["response_id"] == p["chosen_response_id"])
            assert json.loads(cont["meta"])["continues"] == bad["response_id"]
            a, b = PROBLEMS[int(bad["problem_id"][1:])]
            assert p["prefix_steps"] == solution_steps(a, b, "right")[:1]
            end = 2 if mode == "step" else None
            assert p["chosen_steps"] == solution_steps(a, b, "right")[1:end]
            assert p["rejected_steps"] == solution_steps(a, b, "wrong")[1:end]
            assert p["chosen_reward"] > p["rejected_reward"]
    capsys.readouterr()


def test_rectify_pairs_every_wrong_solution_of_a_shared_prefix(tmp_path, capsys):
    """Two different wrong solutions of one problem share step 1 and err at step 2 (15 and 16 for
    14). The policy continues both prefixes with the same text, so their continuations share
    response_ids and `label` keeps one row each (under one `continues`): each wrong solution must
    still get its pair, chosen from a correct continuation of that very prefix."""
    a, b = PROBLEMS[0]
    right = solution_steps(a, b, "right")
    s = a + b
    wrong = [right[:1] + [f"Step 2: {s} * 2 = {2 * s + d}.", f"Step 3: The answer is \\boxed{{{2 * s + d}}}."]
             for d in (1, 2)]
    src = tmp_path / "wrong.jsonl"
    src.write_text("".join(json.dumps({"id": "p0", "problem": f"a={a} b={b}: add a and b, then double the sum.",
                                       "answer": str(2 * s), "steps": st, "label": 1}) + "\n" for st in wrong))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["ingest", "jsonl", str(src), "--prompt-field", "problem", "--steps-field", "steps", "--id-field",
                 "id", "--label-field", "label", "--label-kind", "first-error", "--gold-field", "answer",
                 "-o", str(tmp_path / "wrong.parquet")]) == 0
    assert main(["label", str(tmp_path / "wrong.parquet"), "--judge", "reference", "-o", str(tmp_path / "located"),
                 "--progress", "none", *cache]) == 0
    with FakePolicyServer() as srv:
        assert main(["generate", "--continue-from", str(tmp_path / "located"), "--generator",
                     f"openai-compatible:policy@{srv.url}/v1", "-n", "4", "-o", str(tmp_path / "cont"),
                     "--progress", "none", *cache]) == 0
    conts = read_table(tmp_path / "cont", RESPONSES).to_pylist()
    assert len(conts) == 8 and len({c["response_id"] for c in conts}) < 8  # the texts repeat
    assert main(["label", str(tmp_path / "cont"), "--judge", "answer-match", "-o", str(tmp_path / "checked"),
                 "--progress", "none", *cache]) == 0
    assert main(["pairs", str(tmp_path / "located"), str(tmp_path / "checked"), "-o", str(tmp_path / "pairs"),
                 "--strategy", "first-error"]) == 0
    pairs = read_table(tmp_path / "pairs", PAIRS).to_pylist()
    located = read_table(tmp_path / "located", STEP_SCORES).to_pylist()
    assert sorted(p["rejected_steps"] for p in pairs) == sorted(w[1:2] for w in wrong)
    assert {p["rejected_response_id"] for p in pairs} == {r["response_id"] for r in located}
    for p in pairs:
        assert p["prefix_steps"] == right[:1] and p["chosen_steps"] == right[1:2]
    capsys.readouterr()
