"""`stepdpo sft`: the solutions it keeps, the text it trains on (DPO's chosen side, exactly), and
real gradient steps that raise the training solutions' log-probability."""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("trl")

from schemas.convert import pair_to_preference  # noqa: E402
from schemas.ids import response_id  # noqa: E402
from schemas.tables import RESPONSES, from_rows, write_table  # noqa: E402
from stepdpo.cli import main  # noqa: E402
from stepdpo.commands.sft import select_rows  # noqa: E402
from trainer.sft import sft_example  # noqa: E402


def _row(i: int, steps: list[str], final: str | None, gold: str | None) -> dict:
    prompt = f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?"
    return {"response_id": response_id(prompt, steps), "problem_id": f"p{i}", "source": "test", "prompt": prompt,
            "steps": steps, "final_answer": final, "gold_answer": gold, "reference_scores": None, "meta": None}


def _rows() -> list[dict]:
    rows = []
    for i in range(6):
        right = [f"Step 1: {i} + {i + 2} = {2 * i + 2}.", f"Step 2: The answer is {2 * i + 2}."]
        rows.append(_row(i, right, str(2 * i + 2), str(2 * i + 2)))
    rows.append(_row(10, ["Step 1: 10 + 12 = 23.", "Step 2: The answer is 23."], "23", "22"))  # wrong
    rows.append(_row(11, ["Step 1: 11 + 13 = 24.", "Step 2: The answer is 24."], "24", None))  # no gold
    rows.append(_row(12, ["Step 1: 12 + 14 = 26.", "Step 2: The answer is \\boxed{26}."], None, "26.0"))
    return rows


def test_select_keeps_exactly_the_correct_solutions():
    kept, counts = select_rows(_rows(), "correct")
    assert [r["problem_id"] for r in kept] == [f"p{i}" for i in range(6)] + ["p12"]
    assert counts == {"rows": 9, "used": 7, "wrong": 1, "no_gold": 1}
    every, counts = select_rows(_rows(), "all")
    assert len(every) == 9 and counts["used"] == 9


@pytest.mark.parametrize("sep", ["\n", " ", "\n\n"])
def test_sft_text_is_the_dpo_chosen_side(sep):
    row = _rows()[0]
    pref = pair_to_preference({"prompt": row["prompt"], "prefix_steps": [], "chosen_steps": row["steps"],
                               "rejected_steps": ["x"]}, sep)
    ex = sft_example(None, row["prompt"], row["steps"], sep)
    assert ex == {"prompt": pref["prompt"], "completion": pref["chosen"]}


def _logp(model_dir, rows) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total = 0.0
    for r in rows:
        ex = sft_example(tok, r["prompt"], r["steps"])
        p_ids = tok(ex["prompt"])["input_ids"]
        ids = tok(ex["prompt"] + ex["completion"])["input_ids"]
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        total += sum(logps[i - 1, ids[i]].item() for i in range(len(p_ids), len(ids)))
    return total


def test_sft_trains_on_the_correct_solutions(tmp_path, capsys):
    from trainer.tiny_model import build_tiny_model

    rows = _rows()
    base = build_tiny_model(tmp_path / "base", vocab_text=[r["prompt"] + " " + " ".join(r["steps"]) for r in rows])
    responses = tmp_path / "responses.parquet"
    write_table(from_rows(rows, RESPONSES), responses, RESPONSES)
    out = tmp_path / "sft"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["sft", "--responses", str(responses), "--model_name_or_path", str(base), "--output_dir",
                     str(out), "--max_steps", "12", "--learning_rate", "0.01", "--per_device_train_batch_size",
                     "4", "--logging_steps", "4"]) == 0
    assert not [w for w in caught if "checkpointing" in str(w.message)]  # TRL's default warned on every run
    record = json.loads((out / "sft_config.json").read_text())
    assert record["counts"] == {"rows": 9, "used": 7, "wrong": 1, "no_gold": 1}
    assert record["base_model"] == str(base) and record["global_step"] == 12
    kept, _ = select_rows(rows, "correct")
    assert _logp(out, kept) > _logp(base, kept) + 1.0  # the solutions it trained on became likelier
    assert "7 solution(s) of 9" in capsys.readouterr().out


def test_checkpointing_keeps_trls_default_without_the_deprecation_warning(tmp_path):
    from trainer.sft import StepwiseSFTConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers' FutureWarning would raise here
        on = StepwiseSFTConfig(output_dir=str(tmp_path), use_cpu=True)
        off = StepwiseSFTConfig(output_dir=str(tmp_path), use_cpu=True, gradient_checkpointing=False)
        new = StepwiseSFTConfig(output_dir=str(tmp_path), use_cpu=True, activation_checkpointing=False)
    assert on.activation_checkpointing is True  # TRL's default: on
    assert off.activation_checkpointing is False and new.activation_checkpointing is False


def test_sft_bad_input_is_one_line(tmp_path, capsys):
    rows = [r for r in _rows() if r["problem_id"] in ("p10", "p11")]
    responses = tmp_path / "bad.parquet"
    write_table(from_rows(rows, RESPONSES), responses, RESPONSES)
    assert main(["sft", "--responses", str(responses), "--model_name_or_path", "m", "--output_dir",
                 str(tmp_path / "o")]) == 2
    assert "no solution to train on (1 wrong, 1 without a gold answer)" in capsys.readouterr().err
    assert main(["sft", "--model_name_or_path", "m", "--output_dir", str(tmp_path / "o")]) == 2
    assert "--responses is required" in capsys.readouterr().err


def test_sft_refuses_an_output_dir_holding_another_result_or_the_base_model(tmp_path, capsys):
    """--output_dir onto a label run dropped a model among its shards, and onto the base model
    replaced the model being trained from; both one line now, before any model loads."""
    responses = tmp_path / "r.parquet"
    write_table(from_rows(_rows(), RESPONSES), responses, RESPONSES)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    for out, message in ((run, "holds a label or generate run"), (base, "is the base model's folder")):
        before = sorted(p.name for p in out.iterdir())
        assert main(["sft", "--responses", str(responses), "--model_name_or_path", str(base), "--output_dir",
                     str(out), "--max_steps", "1"]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert sorted(p.name for p in out.iterdir()) == before
