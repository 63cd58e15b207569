"""The answer-match judge: exact scores on solutions whose outcome is known, through the real
`stepdpo label` command, its shards and its cache."""

from __future__ import annotations

import asyncio
import json

import pytest

from labeler.judges import create_judge
from labeler.judges.base import Item
from labeler.judges.config import JudgeConfig
from schemas.errors import UserError
from schemas.ids import response_id
from schemas.tables import RESPONSES, STEP_SCORES, from_rows, read_table, write_table
from stepdpo.cli import main

# (steps, final_answer column, gold) -> expected outcome (None: error row)
CASES = [
    (["Step 1: 48/2 = 24", "Step 2: 48+24 = 72. The answer is 72."], None, "72", 1.0),
    (["Step 1: 48/2 = 24", "Step 2: so \\boxed{\\frac{144}{2}}"], None, "72", 1.0),
    (["Step 1: 48/2 = 25", "Step 2: 48+25 = 73. The answer is 73."], None, "72", 0.0),
    (["Step 1: 48/2 = 24", "Step 2: 48+24 ="], None, "72", 0.0),          # cut off: no answer
    (["It costs $1,000 in all.", "#### 1,000"], "1,000", "1000", 1.0),
    (["x = 3"], "3", "\\frac{6}{2}", 1.0),
    (["The answer is 5."], None, None, None),                              # no gold: error row
]


def _rows():
    rows = []
    for i, (steps, final, gold, _) in enumerate(CASES):
        prompt = f"problem {i}"
        rows.append({"response_id": response_id(prompt, steps), "problem_id": f"p{i}", "source": "test",
                     "prompt": prompt, "steps": steps, "final_answer": final, "gold_answer": gold})
    return rows


def _judge(fill="last"):
    cfg = JudgeConfig()
    cfg.fill = fill
    return create_judge("answer-match", cfg)


def test_scores_the_final_step_by_its_answer():
    judge = _judge()
    items = [Item(r["response_id"], r["prompt"], r["steps"], r["gold_answer"], r["final_answer"]) for r in _rows()]
    verdicts = asyncio.run(judge.judge(items))
    for (steps, _, _, expected), v in zip(CASES, verdicts, strict=True):
        if expected is None:
            assert v.error and "no gold_answer" in v.error
            continue
        assert v.error is None
        assert v.scores == [None] * (len(steps) - 1) + [expected]
        assert json.loads(v.raw)["correct"] is (expected == 1.0)


def test_fill_all_and_fingerprint():
    last, all_ = _judge("last"), _judge("all")
    assert last.fingerprint() != all_.fingerprint()
    v = asyncio.run(all_.judge([Item("r", "p", ["a", "b", "The answer is 4"], "4")]))[0]
    assert v.scores == [1.0, 1.0, 1.0]
    with pytest.raises(UserError, match="takes no model"):
        create_judge("answer-match:gpt-4o", JudgeConfig())


def test_label_command_end_to_end_and_rerun_from_cache(tmp_path, capsys):
    src = tmp_path / "responses.parquet"
    write_table(from_rows(_rows(), RESPONSES), src, RESPONSES)
    run = tmp_path / "run"
    cache = tmp_path / "cache"
    # the row with no gold answer is an error row: a run with holes exits 1
    assert main(["label", str(src), "--judge", "answer-match", "-o", str(run), "--cache-dir", str(cache),
                 "--progress", "none"]) == 1
    table = read_table(run, STEP_SCORES).to_pylist()
    by_id = {r["response_id"]: r for r in table}
    for row, (_, _, _, expected) in zip(_rows(), CASES, strict=True):
        got = by_id[row["response_id"]]
        if expected is None:
            assert got["status"] == "error" and got["scores"] is None
        else:
            assert got["status"] == "ok" and got["scores"][-1] == expected
            assert got["judge"] == "answer-match" and got["cost_usd"] == 0.0
    # --fill all is another judge fingerprint: a new folder, every step filled.
    run2 = tmp_path / "run-all"
    assert main(["label", str(src), "--judge", "answer-match", "--fill", "all", "-o", str(run2),
                 "--cache-dir", str(cache), "--progress", "none"]) == 1
    rows2 = [r for r in read_table(run2, STEP_SCORES).to_pylist() if r["status"] == "ok"]
    assert all(len(set(r["scores"])) == 1 for r in rows2) and len(rows2) == len(CASES) - 1
    capsys.readouterr()
