"""`stepdpo perturb`: one step's arithmetic corrupted, carried forward or not, seeded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labeler.sources.perturb import (
    NOTE,
    NUMBER,
    PerturbConfig,
    check_solution,
    evaluate,
    perturb_rows,
)
from schemas.errors import UserError
from schemas.ids import response_id
from schemas.tables import RESPONSES, STEP_SCORES, from_rows, read_table, write_table
from stepdpo.cli import main


def gsm8k_rows(path: Path) -> list[dict]:
    """`responses` rows from GSM8K jsonl, built by hand (independent of labeler.sources.ingest)."""
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        obj = json.loads(line)
        lines = obj["answer"].split("\n")
        steps, answer = lines[:-1], lines[-1].removeprefix("####").strip().replace(",", "")
        rows.append(
            {
                "response_id": response_id(obj["question"], steps),
                "problem_id": f"gsm8k-test:{i}",
                "source": "gsm8k",
                "prompt": obj["question"],
                "steps": steps,
                "final_answer": answer,
                "gold_answer": answer,
                "meta": json.dumps({"line": i + 1}),
            }
        )
    return rows


@pytest.fixture(scope="module")
def sample_rows(gsm8k_sample: Path) -> list[dict]:
    return gsm8k_rows(gsm8k_sample)


SPRINT = {
    "response_id": "r-sprint",
    "problem_id": "p-sprint",
    "source": "gsm8k",
    "prompt": "James runs 3 sprints 3 times a week, 60 meters each. How many meters a week?",
    "steps": ["He sprints 3*3=<<3*3=9>>9 times", "So he runs 9*60=<<9*60=540>>540 meters"],
    "final_answer": "540",
    "gold_answer": "540",
    "meta": None,
}


def _variants(out: list[dict]) -> list[dict]:
    return [r for r in out if r["meta"] and "perturbation" in json.loads(r["meta"])]


def _info(row: dict) -> dict:
    return json.loads(row["meta"])["perturbation"]


def _shape(text: str) -> str:
    return NUMBER.sub("#", text).replace("-#", "#")


def _notes_ok_except(steps: list[str], skip: tuple[int, int]) -> bool:
    for k, step in enumerate(steps):
        for j, m in enumerate(NOTE.finditer(step)):
            if (k, j) == skip:
                continue
            value = evaluate(m.group(1))
            if value is None or abs(value - float(m.group(2).replace(",", ""))) > 0.01:
                return False
    return True


@pytest.mark.parametrize("seed", range(8))
def test_exact_variant_of_a_two_step_solution(seed: int) -> None:
    out, stats = perturb_rows([SPRINT], PerturbConfig(variants=1, seed=seed))
    assert stats["variants"] == 1 and out[0]["response_id"] == "r-sprint"
    (var,) = _variants(out)
    info = _info(var)
    v = int(info["new_result"])
    assert v != int(info["original_result"])
    if info["step"] == 0:
        # The wrong 9 is carried: step 2 multiplies the wrong number correctly.
        assert var["steps"] == [
            f"He sprints 3*3=<<3*3={v}>>{v} times",
            f"So he runs {v}*60=<<{v}*60={v * 60}>>{v * 60} meters",
        ]
        assert var["final_answer"] == str(v * 60)
        assert info["carried_steps"] == [1]
    else:
        assert var["steps"] == [SPRINT["steps"][0], f"So he runs 9*60=<<9*60={v}>>{v} meters"]
        assert var["final_answer"] == str(v)
    assert var["gold_answer"] == "540"
    assert var["problem_id"] == "p-sprint"
    assert var["response_id"] == response_id(SPRINT["prompt"], var["steps"])
    k = info["step"]
    assert var["reference_scores"] == [1.0] * k + [0.0] + [None] * (1 - k)


def test_no_propagate_changes_only_the_corrupted_note() -> None:
    seen_steps = set()
    for seed in range(12):
        out, _ = perturb_rows([SPRINT], PerturbConfig(variants=1, seed=seed, propagate=False))
        (var,) = _variants(out)
        info = _info(var)
        v = info["new_result"]
        seen_steps.add(info["step"])
        if info["step"] == 0:
            assert var["steps"] == [f"He sprints 3*3=<<3*3={v}>>{v} times", SPRINT["steps"][1]]
            assert var["final_answer"] == "540"  # the last step did not change
        else:
            assert var["steps"] == [SPRINT["steps"][0], f"So he runs 9*60=<<9*60={v}>>{v} meters"]
            assert var["final_answer"] == v
    assert seen_steps == {0, 1}


def test_variants_differ_in_one_steps_arithmetic_plus_carried_numbers(sample_rows: list[dict]) -> None:
    by_id = {r["response_id"]: r for r in sample_rows}
    out, stats = perturb_rows(sample_rows, PerturbConfig(variants=2, seed=3))
    variants = _variants(out)
    assert stats["variants"] == len(variants) > 300
    assert len({r["response_id"] for r in out}) == len(out)  # new, unique ids
    for var in variants:
        info = _info(var)
        orig = by_id[info["of"]]
        k, j = info["step"], info["note"]
        assert var["steps"][:k] == orig["steps"][:k]  # the shared correct prefix
        assert var["steps"][k] != orig["steps"][k]
        note = list(NOTE.finditer(var["steps"][k]))[j]
        assert note.group(1) == info["expr"] == list(NOTE.finditer(orig["steps"][k]))[j].group(1)
        assert note.group(2) == info["new_result"]
        assert evaluate(info["expr"]) != pytest.approx(float(info["new_result"].replace(",", "")))
        # The only arithmetic error is the corrupted note; every other note checks out.
        assert _notes_ok_except(var["steps"], (k, j))
        # Apart from numbers (a carried result may turn negative), no text changed anywhere.
        for a, b in zip(var["steps"], orig["steps"], strict=True):
            assert _shape(a) == _shape(b)
        assert var["gold_answer"] == orig["gold_answer"]
        assert var["problem_id"] == orig["problem_id"]
        assert json.loads(var["meta"])["line"] == json.loads(orig["meta"])["line"]
    # Carrying the error forward makes most final answers wrong, as a student's would be.
    wrong = sum(v["final_answer"] != v["gold_answer"] for v in variants)
    assert wrong > len(variants) // 2


def test_comma_style_is_kept() -> None:
    row = dict(
        SPRINT,
        response_id="r-house",
        steps=[
            "Costs 80,000+50,000=$<<80000+50000=130000>>130,000",
            "Profit 200,000-130,000=$<<200000-130000=70000>>70,000",
        ],
        final_answer="70000",
        gold_answer="70000",
    )
    for seed in range(10):
        out, _ = perturb_rows([row], PerturbConfig(seed=seed))
        (var,) = _variants(out)
        if _info(var)["step"] == 0:
            new = int(_info(var)["new_result"])
            assert var["steps"][0] == f"Costs 80,000+50,000=$<<80000+50000={new}>>{new:,}"
            assert var["steps"][1] == (
                f"Profit 200,000-{new:,}=$<<200000-{new}={200000 - new}>>{200000 - new:,}"
            )
            assert var["final_answer"] == str(200000 - new)
            return
    pytest.fail("no seed corrupted the first step")


def test_same_seed_same_output_any_row_order(sample_rows: list[dict]) -> None:
    cfg = PerturbConfig(variants=2, seed=11)
    a, _ = perturb_rows(sample_rows[:40], cfg)
    b, _ = perturb_rows(sample_rows[:40], cfg)
    c, _ = perturb_rows(list(reversed(sample_rows[:40])), cfg)
    d, _ = perturb_rows(sample_rows[:40], PerturbConfig(variants=2, seed=12))
    assert a == b
    assert {r["response_id"] for r in a} == {r["response_id"] for r in c}
    assert {r["response_id"] for r in _variants(a)} != {r["response_id"] for r in _variants(d)}


def test_incorrect_or_noteless_solutions_are_kept_but_not_perturbed() -> None:
    wrong = dict(SPRINT, response_id="r-wrong", final_answer="541")
    bad_note = dict(SPRINT, response_id="r-bad", steps=["He sprints 3*3=<<3*3=10>>10 times"], final_answer="540")
    plain = dict(SPRINT, response_id="r-plain", steps=["He runs 540 meters"])
    out, stats = perturb_rows([wrong, bad_note, plain], PerturbConfig(variants=3))
    assert [r["response_id"] for r in out] == ["r-wrong", "r-bad", "r-plain"]
    assert all(r.get("reference_scores") is None for r in out)  # unverified: no labels invented
    assert stats["skipped"] == {
        "final answer differs from gold": 1,
        "a calculator note does not check out": 1,
        "no calculator notes": 1,
    }
    out, _ = perturb_rows([wrong, SPRINT], PerturbConfig(variants=1, keep_original=False))
    assert len(out) == 1 and _info(out[0])["of"] == "r-sprint"
    assert check_solution(SPRINT["steps"], "540", "540") is None


def test_calculator_is_safe() -> None:
    assert evaluate("80,000*1.5") == 120000
    assert evaluate("(3+4)*-2") == -14
    assert evaluate("__import__('os').system('true')") is None
    assert evaluate("9**9**9") is None
    assert evaluate("1/0") is None


def test_cli_writes_a_responses_file(tmp_path: Path, sample_rows: list[dict], capsys) -> None:
    src = write_table(from_rows(sample_rows, RESPONSES), tmp_path / "responses.parquet", RESPONSES)
    out = tmp_path / "perturbed.parquet"
    assert main(["perturb", str(src), "-o", str(out), "--variants", "2", "--seed", "5"]) == 0
    rows = read_table(out, RESPONSES).to_pylist()
    noteless = sum(check_solution(r["steps"], r["final_answer"], r["gold_answer"]) is not None for r in sample_rows)
    assert len(rows) == len(sample_rows) + 2 * (len(sample_rows) - noteless)
    assert len({r["response_id"] for r in rows}) == len(rows)
    assert f"{len(rows)} rows written" in capsys.readouterr().out
    again = tmp_path / "again.parquet"
    assert main(["perturb", str(src), "-o", str(again), "--variants", "2", "--seed", "5"]) == 0
    assert read_table(again, RESPONSES).equals(read_table(out, RESPONSES))


def test_wrong_file_kind_is_a_clear_error(tmp_path: Path, capsys) -> None:
    row = dict(SPRINT, judge="j", judge_fingerprint="f", scores=[1.0, 1.0], status="ok")
    scores = write_table(from_rows([row], STEP_SCORES), tmp_path / "scores.parquet", STEP_SCORES)
    assert main(["perturb", str(scores), "-o", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"stepdpo perturb: error: {scores}: this is a 'step_scores' file, but a 'responses' file is needed here"
    )
    with pytest.raises(UserError, match="--variants must be 0 or more"):
        perturb_rows([SPRINT], PerturbConfig(variants=-1))
    assert not re.search(r"Traceback", err)


def _calc_first_errors(rows: list[dict]) -> list[tuple[int, int]]:
    """(gsm8k-calc's first error, corrupted step) for every variant; originals must be clean."""
    from labeler.judges.base import Item
    from labeler.judges.calc import check_response
    from schemas.aggregate import first_error

    got = []
    for r in rows:
        item = Item(r["response_id"], r["prompt"], r["steps"], r["gold_answer"], r["final_answer"])
        fe = first_error(check_response(item)[0])
        meta = json.loads(r["meta"] or "{}")
        if "perturbation" in meta:
            got.append((fe, meta["perturbation"]["step"]))
        elif r.get("reference_scores"):  # a verified original
            assert fe == -1, r["steps"]
    return got


@pytest.mark.parametrize("propagate", [True, False])
def test_gsm8k_calc_flags_exactly_the_corrupted_step(sample_rows: list[dict], propagate: bool) -> None:
    out, _ = perturb_rows(sample_rows, PerturbConfig(variants=2, seed=0, propagate=propagate))
    got = _calc_first_errors(out)
    assert len(got) > 300
    assert [fe for fe, _ in got] == [step for _, step in got]


def test_gsm8k_calc_agrees_on_the_full_test_set(gsm8k_test_full: Path) -> None:
    out, stats = perturb_rows(gsm8k_rows(gsm8k_test_full), PerturbConfig(variants=1, seed=1))
    got = _calc_first_errors(out)
    assert stats["variants"] == len(got) > 1290
    assert [fe for fe, _ in got] == [step for _, step in got]


def test_output_onto_its_own_input_is_refused(tmp_path: Path, sample_rows: list[dict], capsys) -> None:
    """#16 item 15: `perturb IN -o IN` replaced the user's responses with originals + variants."""
    src = write_table(from_rows(sample_rows, RESPONSES), tmp_path / "responses.parquet", RESPONSES)
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "responses.parquet"):
        assert main(["perturb", str(src), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"stepdpo perturb: error: -o {out}: is the input itself, which perturb would "
                       f"overwrite; write the variants to another file, e.g. -o "
                       f"{out.with_name('responses_perturbed.parquet')}")
    assert src.read_bytes() == before
    folder = tmp_path / "shards"
    folder.mkdir()
    write_table(from_rows(sample_rows, RESPONSES), folder / "part-00000.parquet", RESPONSES)
    assert main(["perturb", str(folder), "-o", str(folder / "perturbed.parquet")]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["part-00000.parquet"]
