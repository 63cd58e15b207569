"""gsm8k-calc: safe arithmetic, note checks on real GSM8K rows, text equations, final answers."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from labeler.judges import create_judge
from labeler.judges.base import Item
from labeler.judges.calc import CalcError, safe_eval
from labeler.judges.config import JudgeConfig

NOTE = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")


def gsm8k_items(path) -> list[Item]:
    """GSM8K rows as the ingest command shapes them: steps = answer lines, '#### N' = answer."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            row = json.loads(line)
            lines = row["answer"].split("\n")
            assert lines[-1].startswith("####"), f"line {i + 1}"
            gold = lines[-1][4:].strip()
            items.append(Item(response_id=f"gsm8k-{i}", prompt=row["question"], steps=lines[:-1],
                              gold_answer=gold, final_answer=gold))
    return items


def run_judge(items: list[Item]):
    judge = create_judge("gsm8k-calc", JudgeConfig())
    return asyncio.run(judge.judge(items))


@pytest.mark.parametrize(
    "expr, value",
    [("16-3-4", 9), ("80000*1.5", 120000), ("80,000+50,000", 130000), ("$2*3", 6),
     ("-(2+3)*4", -20), ("7//2", 3), ("7%3", 1), ("2**10", 1024), ("20%*50", 10),
     ("3 x 4", 12), ("2 hours * 60", 120), (".5*4", 2), ("120 – 80", 40)],
)
def test_safe_eval_values(expr, value):
    assert safe_eval(expr) == pytest.approx(value)


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('true')", "(1).__class__", "abs(-3)", "[1, 2]", "2**1000",
     "10**10**10", "1/0", "9" * 40 + "*" + "9" * 40, "lambda: 1", "a if b else c", ""],
)
def test_safe_eval_refuses(expr):
    with pytest.raises(CalcError):
        safe_eval(expr)


def test_correct_row_scores_and_raw():
    item = Item("r", "q", ["Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
                           "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market."],
                gold_answer="18", final_answer="18")
    (verdict,) = run_judge([item])
    assert verdict.scores == [1.0, 1.0]
    raw = json.loads(verdict.raw)
    assert raw[0]["passed"] == ["note 16-3-4=9"]
    assert "final answer 18 == gold 18" in raw[1]["passed"]


def test_corrupted_note_flags_only_its_step():
    steps = ["Janet sells 16 - 3 - 4 = <<16-3-4=10>>10 duck eggs a day.",
             "She makes 10 * 2 = $<<10*2=20>>20 every day."]
    (verdict,) = run_judge([Item("r", "q", steps, gold_answer="18", final_answer="20")])
    assert verdict.scores == [0.0, 0.0]
    raw = json.loads(verdict.raw)
    assert raw[0]["failed"] == ["note 16-3-4=10: evaluates to 9"]
    # Step 2's note is right; it fails only on the final answer.
    assert raw[1]["passed"] == ["note 10*2=20"] and raw[1]["failed"] == ["final answer 20 != gold 18"]


def test_final_answer_from_last_step_when_not_given():
    steps = ["2+2=<<2+2=4>>4", "So the answer is 4,000."]
    assert run_judge([Item("r", "q", steps, gold_answer="4000")])[0].scores == [1.0, 1.0]
    assert run_judge([Item("r", "q", steps, gold_answer="400")])[0].scores == [1.0, 0.0]
    boxed = ["2+2=<<2+2=4>>4", "Total: \\boxed{$1,200}"]
    assert run_judge([Item("r", "q", boxed, gold_answer="1200")])[0].scores == [1.0, 1.0]


def test_rounded_note_results_pass_and_wrong_ones_fail():
    ok = ["Each gets 100/3 = <<100/3=33.33>>33.33", "About <<100/3=33>>33 people per bus"]
    assert run_judge([Item("r", "q", ok)])[0].scores == [1.0, 1.0]
    bad = ["Each gets <<100/3=34.33>>34.33", "Exactly <<9/3=4>>4"]
    assert run_judge([Item("r", "q", bad)])[0].scores == [0.0, 0.0]


def test_text_equations_without_notes():
    steps = ["She has 3 + 4 = 7 apples.", "Then 7 * $2 = $15 in total.",
             "She is happy.", "12 slices * 1/3 = 4 slices", "20% * 40% = 8% of the water",
             "The answer is 15"]
    (verdict,) = run_judge([Item("r", "q", steps, gold_answer="14")])
    # Unparseable prose and equations whose left side is cut by a unit stay unscored.
    assert verdict.scores == [1.0, 0.0, None, None, 1.0, 0.0]
    raw = json.loads(verdict.raw)
    assert raw[2]["why"] == "nothing checkable in this step"


def test_nothing_checkable_is_null():
    (verdict,) = run_judge([Item("r", "q", ["Let me think.", "Done."])])
    assert verdict.scores == [None, None]


def test_all_gsm8k_test_rows_pass_and_corrupted_notes_are_flagged(gsm8k_test_full):
    items = gsm8k_items(gsm8k_test_full)
    assert len(items) == 1319
    verdicts = run_judge(items)
    zeros = [(it.response_id, json.loads(v.raw)) for it, v in zip(items, verdicts, strict=True) if 0.0 in v.scores]
    assert zeros == []
    assert all(v.scores[-1] == 1.0 for v in verdicts)  # every final answer checked and right
    scored = sum(s is not None for v in verdicts for s in v.scores)
    assert scored / sum(len(v.scores) for v in verdicts) > 0.9

    # Corrupt the first note of each row that has one; exactly that step must turn 0.
    corrupted, where = [], []
    for it in items:
        k = next((k for k, s in enumerate(it.steps) if NOTE.search(s)), None)
        if k is None:
            continue
        m = NOTE.search(it.steps[k])
        claimed = float(m.group(2).replace(",", ""))
        new = f"{abs(claimed) * 2 + 7:g}"
        steps = list(it.steps)
        steps[k] = steps[k][: m.start(2)] + new + steps[k][m.end(2):]
        corrupted.append(Item(it.response_id, it.prompt, steps, it.gold_answer, it.final_answer))
        where.append(k)
    assert len(corrupted) > 1300
    for k, it, v in zip(where, corrupted, run_judge(corrupted), strict=True):
        assert v.scores[k] == 0.0, (it.response_id, v.raw)
        assert all(s != 0.0 for j, s in enumerate(v.scores) if j != k), (it.response_id, v.raw)


def test_text_checker_on_gsm8k_prose_finds_the_known_typo(gsm8k_test_full):
    """With the notes removed, only the prose equations are left; GSM8K test row 1025 really
    says '$32 - $20 = $300' (a typo for $320 - $20), and that must be the one row flagged."""
    items = gsm8k_items(gsm8k_test_full)
    stripped = [Item(it.response_id, it.prompt, [NOTE.sub("", s) for s in it.steps],
                     it.gold_answer, it.final_answer) for it in items]
    verdicts = run_judge(stripped)
    flagged = [it.response_id for it, v in zip(stripped, verdicts, strict=True) if 0.0 in v.scores]
    assert flagged == ["gsm8k-1024"]
    checked = sum("passed" in step for v in verdicts for step in json.loads(v.raw))
    assert checked > 2500


def test_judge_metadata():
    judge = create_judge("gsm8k-calc", JudgeConfig())
    assert judge.name == "gsm8k-calc" and judge.price_model is None and judge.batch_size >= 1
    assert judge.fingerprint() == create_judge("gsm8k-calc", JudgeConfig(temperature=1.0)).fingerprint()


def test_stepdpo_label_with_gsm8k_calc_end_to_end(tmp_path, gsm8k_sample, capsys):
    """ingest → label → step_scores shards: untouched rows pass, one corrupted note is caught."""
    from schemas.tables import STEP_SCORES, read_table
    from stepdpo.cli import main

    lines = gsm8k_sample.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[0])
    assert "<<16-3-4=9>>9" in bad["answer"]
    bad["answer"] = bad["answer"].replace("<<16-3-4=9>>9", "<<16-3-4=8>>8")
    src = tmp_path / "gsm8k.jsonl"
    src.write_text("\n".join([json.dumps(bad)] + lines[1:]) + "\n", encoding="utf-8")
    responses = tmp_path / "responses.parquet"
    assert main(["ingest", "gsm8k", str(src), "-o", str(responses)]) == 0
    run = tmp_path / "run"
    argv = ["label", str(responses), "--judge", "gsm8k-calc", "-o", str(run),
            "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = read_table(run, STEP_SCORES).to_pylist()
    assert len(rows) == len(lines) == 200
    assert {r["status"] for r in rows} == {"ok"} and {r["judge"] for r in rows} == {"gsm8k-calc"}
    flagged = [r for r in rows if 0.0 in r["scores"]]
    assert [r["prompt"] for r in flagged] == [bad["question"]]
    assert flagged[0]["scores"][0] == 0.0
    assert json.loads(flagged[0]["raw"])[0]["failed"] == ["note 16-3-4=8: evaluates to 9"]
    assert all(r["scores"][-1] == 1.0 for r in rows if r is not flagged[0])
    assert all(r["cost_usd"] in (None, 0.0) for r in rows)


@pytest.mark.parametrize(
    "answer, gold, equal",
    [("$18.00", "18", True), ("1,000", "1000", True), ("3/4", "0.75", True), ("-5", "-5", True),
     ("18 dollars", "18", True), ("19", "18", False), ("3/5", "0.75", False),
     ("eighteen", "18", False), ("Eighteen.", "eighteen", True)],
)
def test_final_answer_comparison(answer, gold, equal):
    from labeler.judges.calc import answers_equal

    assert answers_equal(answer, gold) is equal


def test_safe_eval_matches_an_independent_evaluator_on_random_expressions():
    """Random expression trees: our walker against exact rational arithmetic done here."""
    import random
    from fractions import Fraction

    rng = random.Random(1234)

    def build(depth):
        if depth == 0 or rng.random() < 0.3:
            n = rng.choice([rng.randint(0, 20_000), round(rng.uniform(0, 100), 2)])
            text = f"{n:,}" if isinstance(n, int) and n >= 1000 else str(n)
            return text, Fraction(str(n)), Fraction(str(n))
        op = rng.choice("+-*/")
        (lt, lv, lm), (rt, rv, rm) = build(depth - 1), build(depth - 1)
        if op == "/" and rv == 0:
            op = "+"
        value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else 0}[op]
        return f"({lt} {op} {rt})", value, max(lm, rm, abs(value))

    checked = 0
    while checked < 500:
        text, value, largest = build(4)
        if largest > 1e12:  # past the evaluator's magnitude bound: refused, tested above
            continue
        checked += 1
        assert safe_eval(text) == pytest.approx(float(value), rel=1e-9, abs=1e-9), text


def test_large_results_off_by_a_few_are_wrong():
    """A relative tolerance of 1e-6 let 3,500,003 pass for 3,500,000 (perturbed GSM8K train rows)."""
    from labeler.judges.calc import answers_equal, result_matches

    assert not result_matches(3500000.0, "3500003")
    assert not result_matches(109200000.0, "109,199,998")
    assert not result_matches(333200.0, "333200.10")
    assert not answers_equal("333200.1", "333200")
    assert result_matches(2 / 3 * 2100000, "1400000") and result_matches(0.1 + 0.2, "0.3")
    assert answers_equal("1,400,000", "1400000")
