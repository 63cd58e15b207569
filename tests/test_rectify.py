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
