"""`stepdpo train` and `stepdpo precompute-ref` through the real dispatcher."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

pytest.importorskip("trl")

from schemas.errors import UserError  # noqa: E402
from schemas.tables import PAIRS, RESPONSES, from_rows, read_table, write_table  # noqa: E402
from stepdpo.cli import main  # noqa: E402
from tests.trainer_util import gsm8k_pair_rows, write_pairs  # noqa: E402
from trainer.config import StepwiseDPOConfig  # noqa: E402
from trainer.data import has_precomputed_ref  # noqa: E402
from trainer.tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = build_tiny_model(root / "model", arch="qwen2", hidden=32, layers=1)
    pairs = write_pairs(root / "pairs", gsm8k_pair_rows(20, strategy="first-error"), per_shard=8)
    return root, model, pairs


def test_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    missing = [f.name for f in dataclasses.fields(StepwiseDPOConfig) if f.init and f"--{f.name}" not in text]
    assert not missing
    assert "step_temperature" in text and "τ in a^w" in text


def test_train_writes_model_tokenizer_config_and_metrics(setup, tmp_path, capsys):
    root, model, pairs = setup
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("stepwise_loss: step_weighted\nstep_temperature: 2.0\nlearning_rate: 0.01\nlogging_steps: 1\n")
    out = tmp_path / "run"
    code = main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(out),
                 "--config", str(cfg), "--max_steps", "3", "--per_device_train_batch_size", "4",
                 "--step_temperature", "5.0", "--save_strategy", "no"])
    assert code == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "stepwise_config.json", "metrics.jsonl"):
        assert (out / name).exists(), name
    saved = json.loads((out / "stepwise_config.json").read_text())
    assert saved["stepwise_loss"] == "step_weighted"  # from the YAML file
    assert saved["learning_rate"] == 0.01
    assert saved["step_temperature"] == 5.0  # the flag wins over the file
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert "rewards/accuracies" in steps[0] and "step/first_error_weight" in steps[0]
    printed = capsys.readouterr().out
    assert "reference: frozen copy of the policy" in printed and "final: loss=" in printed
    # provenance: the base model, the pairs folder + its manifest's fingerprint, the judges
    import hashlib

    prov = saved["provenance"]
    assert prov["base_model"] == str(model)
    assert prov["train_pairs"]["path"] == str(pairs.resolve()) and prov["train_pairs"]["num_pairs"] == 20
    assert prov["train_pairs"]["manifest_sha256"] == hashlib.sha256((pairs / "pairs.json").read_bytes()).hexdigest()
    assert prov["train_pairs"]["judge_fingerprints"] == ["test"]
    card = (out / "README.md").read_text()
    assert "fine-tuned version of None" not in card and f"fine-tuned version of `{model}`" in card
    assert prov["train_pairs"]["manifest_sha256"] in card and "judge: `test`" in card


def test_precompute_ref_then_train_without_reference_model(setup, tmp_path, capsys):
    root, model, pairs = setup
    filled = tmp_path / "filled"
    assert main(["precompute-ref", "--pairs", str(pairs), "--model", str(model), "-o", str(filled),
                 "--batch-size", "3"]) == 0
    assert sorted(p.name for p in filled.glob("*.parquet")) == sorted(p.name for p in pairs.glob("*.parquet"))
    assert has_precomputed_ref(filled) and not has_precomputed_ref(pairs)
    table = read_table(filled, PAIRS)
    assert table.num_rows == 20
    for row in table.to_pylist():
        assert len(row["ref_chosen_step_logps"]) == len(row["chosen_steps"])
        assert all(v < 0 for v in row["ref_chosen_step_logps"] + row["ref_rejected_step_logps"])
    out = tmp_path / "run"
    assert main(["train", "--pairs", str(filled), "--model", str(model), "--output_dir", str(out),
                 "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                 "--save_strategy", "no"]) == 0
    assert "reference: precomputed per-step log-probs" in capsys.readouterr().out


def test_without_max_steps_one_run_covers_num_train_epochs_and_max_steps_0_is_refused(setup, tmp_path, capsys):
    root, model, pairs = setup  # 20 pairs
    out = tmp_path / "run"
    base = ["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--save_strategy", "no", "--logging_steps", "1",
            "--num_train_epochs", "1"]
    assert main([*base, "--max_steps", "0"]) == 2
    assert "--max_steps must be at least 1, got 0" in capsys.readouterr().err
    assert main(base) == 0
    assert "20 pairs x 1 epoch(s): --max_steps 3" in capsys.readouterr().out
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # the epoch metric counts pairs seen (8, 16, 24 of 20), not 1.0 after the first of max_steps passes
    assert [r["epoch"] for r in steps] == [0.4, 0.8, 1.2]


def test_train_refuses_a_file_of_another_kind(setup, tmp_path, capsys):
    root, model, _ = setup
    bad = tmp_path / "responses.parquet"
    write_table(from_rows([{"response_id": "r", "prompt": "p", "steps": ["a"]}], RESPONSES), bad, RESPONSES)
    code = main(["train", "--pairs", str(bad), "--model", str(model), "--max_steps", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "this is a 'responses' file, but a 'pairs' file is needed here" in err


def test_unknown_yaml_field_is_named(setup, tmp_path, capsys):
    root, model, pairs = setup
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("step_temprature: 2.0\n")
    code = main(["train", "--pairs", str(pairs), "--model", str(model), "--config", str(cfg), "--max_steps", "1"])
    assert code == 2
    assert "unknown field(s) step_temprature" in capsys.readouterr().err


def test_precompute_refuses_to_overwrite_its_input(setup, capsys):
    root, model, pairs = setup
    code = main(["precompute-ref", "--pairs", str(pairs), "--model", str(model), "-o", str(pairs)])
    assert code == 2
    assert "write to a new folder, not over the input shards" in capsys.readouterr().err


def test_shards_with_some_rows_unfilled_do_not_count_as_precomputed(setup, tmp_path):
    root, model, _ = setup
    rows = gsm8k_pair_rows(4)
    rows[0]["ref_chosen_step_logps"] = [-1.0] * len(rows[0]["chosen_steps"])
    rows[0]["ref_rejected_step_logps"] = [-1.0] * len(rows[0]["rejected_steps"])
    part = write_pairs(tmp_path / "partial", rows)
    assert not has_precomputed_ref(part)
    for r in rows[1:]:
        r["ref_chosen_step_logps"] = [-1.0] * len(r["chosen_steps"])
        r["ref_rejected_step_logps"] = [-1.0] * len(r["rejected_steps"])
    assert has_precomputed_ref(write_pairs(tmp_path / "full", rows))


def _train_config(argv):
    import argparse

    from stepdpo.commands import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    return train_cli.build_config(parser.parse_args(["--pairs", "p", "--model", "m", *argv]))[1]


def test_yaml_values_are_typed_and_any_given_flag_wins(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    # PyYAML reads 1e-4 as a string; `false` for a field with a --no_ twin must not be lost.
    cfg.write_text("learning_rate: 1e-4\nbeta: 0.3\nmax_steps: 5\ngradient_checkpointing: false\n"
                   "remove_unused_columns: false\nweight_decay: '0.01'\n")
    config = _train_config(["--config", str(cfg), "--output_dir", str(tmp_path / "o")])
    assert config.learning_rate == 1e-4 and isinstance(config.learning_rate, float)
    assert config.weight_decay == 0.01
    assert config.gradient_checkpointing is False and config.remove_unused_columns is False
    assert config.beta == 0.3
    # A flag given with the parser's default value still overrides the file.
    config = _train_config(["--config", str(cfg), "--output_dir", str(tmp_path / "o"), "--beta", "0.1",
                            "--gradient_checkpointing", "true"])
    assert config.beta == 0.1 and config.gradient_checkpointing is True
    # Without a file, the defaults are TRL's own.
    config = _train_config(["--output_dir", str(tmp_path / "o"), "--max_steps", "1"])
    assert config.gradient_checkpointing is True and config.remove_unused_columns is True


def test_badly_typed_yaml_value_is_named(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("learning_rate: fast\nmax_steps: 1\n")
    with pytest.raises(UserError, match="cfg.yaml: argument --learning_rate/--learning-rate: invalid float value: 'fast'"):
        _train_config(["--config", str(cfg), "--output_dir", str(tmp_path / "o")])


def test_train_refuses_reference_logps_precomputed_with_other_settings(setup, tmp_path, capsys):
    root, model, pairs = setup
    filled = tmp_path / "filled"
    assert main(["precompute-ref", "--pairs", str(pairs), "--model", str(model), "-o", str(filled),
                 "--max-length", "1024"]) == 0
    capsys.readouterr()
    code = main(["train", "--pairs", str(filled), "--model", str(model), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "1", "--max_length", "100"])
    assert code == 2
    err = capsys.readouterr().err
    assert "max_length=100 (precomputed with 1024)" in err and "--max-length 100" in err


def test_eval_pairs_are_evaluated_and_eval_strategy_without_them_is_refused(setup, tmp_path, capsys):
    root, model, pairs = setup
    held_out = write_pairs(tmp_path / "held_out", gsm8k_pair_rows(6, strategy="first-error", offset=40))
    base = ["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no"]
    assert main([*base, "--eval_strategy", "steps", "--eval_steps", "1"]) == 2
    assert "--eval_strategy steps needs --eval_pairs" in capsys.readouterr().err
    assert main([*base, "--eval_pairs", str(held_out)]) == 2
    assert "--eval_pairs needs --eval_strategy" in capsys.readouterr().err
    assert main([*base, "--eval_pairs", str(held_out), "--eval_strategy", "steps", "--eval_steps", "1",
                 "--per_device_eval_batch_size", "3"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(math.isfinite(r["eval_loss"]) and "eval_step/margin" in r for r in evals)


@pytest.mark.parametrize("flag,value", [("--loss_type", "ipo"), ("--label_smoothing", "0.1"),
                                        ("--use_weighting", "true"), ("--ld_alpha", "0.5"),
                                        ("--precompute_ref_log_probs", "true")])
def test_trl_loss_options_the_stepwise_losses_ignore_are_refused(tmp_path, flag, value):
    with pytest.raises(UserError, match=flag.lstrip("-")):
        _train_config(["--output_dir", str(tmp_path / "o"), "--max_steps", "1", flag, value])
    if flag != "--precompute_ref_log_probs":
        with pytest.raises(ValueError, match="StepwiseDPOTrainer does not use"):
            StepwiseDPOConfig(output_dir=str(tmp_path / "o"), use_cpu=True, **{flag.lstrip("-"): _typed(value)})


def _typed(value):
    return {"true": True}.get(value, value if not value[0].isdigit() else float(value))


def test_streamed_pairs_are_shuffled_like_trls_random_sampler(setup, tmp_path, monkeypatch):
    from trainer import data

    root, model, pairs = setup  # 20 pairs in 3 shards
    ids = lambda ds: [r["prompt"] + r["chosen"] for r in ds]  # noqa: E731
    in_order = ids(data.load_pairs(pairs))
    shuffled = data.load_pairs(pairs, shuffle_seed=0)
    first = ids(shuffled)
    assert first != in_order and sorted(first) == sorted(in_order)  # nothing lost or duplicated
    assert ids(data.load_pairs(pairs, shuffle_seed=0)) == first  # deterministic per seed
    shuffled.set_epoch(1)
    assert ids(shuffled) != first  # a new order every epoch
    # The CLI shuffles with --seed unless --train_sampling_strategy sequential.
    seen = []
    real = data.load_pairs
    monkeypatch.setattr(data, "load_pairs", lambda *a, **kw: seen.append(kw.get("shuffle_seed")) or real(*a, **kw))
    base = ["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--save_strategy", "no", "--seed", "7"]
    assert main(base) == 0
    assert main([*base, "--train_sampling_strategy", "sequential"]) == 0
    assert seen == [7, None]


def test_final_line_reports_the_run_loss_when_no_step_was_logged(setup, tmp_path, capsys):
    root, model, pairs = setup
    assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "1", "--per_device_train_batch_size", "2", "--save_strategy", "no"]) == 0
    final = [line for line in capsys.readouterr().out.splitlines() if line.startswith("final:")]
    assert len(final) == 1 and "train_loss=0.69" in final[0] and "--logging_steps 10 > --max_steps 1" in final[0]


def test_bad_reference_model_and_lora_targets_are_clear_errors(setup, tmp_path, capsys):
    root, model, pairs = setup
    base = ["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "1"]
    assert main([*base, "--ref_model", str(tmp_path / "missing")]) == 2
    assert f"--ref_model {tmp_path / 'missing'}: no such model folder" in capsys.readouterr().err
    assert main([*base, "--lora_r", "4", "--lora_targets", "nope_proj"]) == 2
    assert "LoRA: Target modules nope_proj not found" in capsys.readouterr().err


CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_chat_template_renders_the_problem_as_a_user_turn(setup, tmp_path, capsys):
    import shutil

    from transformers import AutoTokenizer

    from trainer.alignment import chat_prompt
    from trainer.data import load_pairs

    root, model, pairs = setup
    assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "r0"),
                 "--max_steps", "1", "--chat_template", "true"]) == 2
    assert "has no chat template" in capsys.readouterr().err
    chat = tmp_path / "chat-model"
    shutil.copytree(model, chat)
    tok = AutoTokenizer.from_pretrained(chat)
    tok.chat_template = CHATML
    tok.save_pretrained(chat)
    row = next(iter(load_pairs(pairs)))
    assert chat_prompt(tok, row["question"], row["prefix_steps"]) == (
        f"<|user|>{row['question']}\n<|assistant|>" + "".join(s + "\n" for s in row["prefix_steps"]))
    # precompute-ref and train agree on the chat layout; a run without it is refused.
    filled = tmp_path / "filled"
    assert main(["precompute-ref", "--pairs", str(pairs), "--model", str(chat), "-o", str(filled),
                 "--chat-template"]) == 0
    base = ["train", "--pairs", str(filled), "--model", str(chat), "--output_dir", str(tmp_path / "run"),
            "--max_steps", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
            "--learning_rate", "0", "--save_strategy", "no"]
    assert main(base) == 2
    assert "chat_template=False (precomputed with True)" in capsys.readouterr().err
    assert main([*base, "--chat_template", "true"]) == 0
    final = [line for line in capsys.readouterr().out.splitlines() if line.startswith("final:")][0]
    assert "loss=0.6931," in final  # the precomputed chat-layout reference equals the policy (lr 0)


def test_max_length_zero_is_no_limit_and_a_run_with_no_pair_left_fails(setup, tmp_path, capsys):
    root, model, pairs = setup
    assert _train_config(["--output_dir", str(tmp_path / "o"), "--max_steps", "1", "--max_length", "0"]).max_length is None
    code = main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "2", "--max_length", "8"])
    assert code == 2
    assert "no training step ran" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_precompute_resumes_with_the_same_settings_and_train_refuses_an_unfinished_one(setup, tmp_path, capsys,
                                                                                      monkeypatch):
    from trainer import precompute

    root, model, pairs = setup  # 3 shards
    filled = tmp_path / "filled"
    real = precompute.reference_step_logps
    calls = []

    def interrupted(*a, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(a[2]))
        return real(*a, **kw)

    monkeypatch.setattr(precompute, "reference_step_logps", interrupted)
    argv = ["precompute-ref", "--pairs", str(pairs), "--model", str(model), "-o", str(filled)]
    assert main(argv) == 130  # stopped during the second shard
    assert len(list(filled.glob("*.parquet"))) == 1
    code = main(["train", "--pairs", str(filled), "--model", str(model), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "1"])
    assert code == 2 and "did not finish" in capsys.readouterr().err
    assert main([*argv, "--max-length", "512"]) == 2  # other settings: not mixed into the same folder
    assert "made with other settings (max_length)" in capsys.readouterr().err
    seen = []
    monkeypatch.setattr(precompute, "reference_step_logps",
                        lambda *a, **kw: seen.append(len(a[2])) or real(*a, **kw))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(already done)" in out and len(seen) == 2  # only the two unfinished shards were computed
    assert has_precomputed_ref(filled) and read_table(filled, PAIRS).num_rows == 20
    assert json.loads((filled / "precompute.json").read_text())["complete"] is True


def test_precompute_reports_progress_per_batch(setup):
    from trainer.precompute import load_reference, reference_step_logps

    root, model, _ = setup
    ref, tok = load_reference(str(model))
    done = []
    reference_step_logps(ref, tok, gsm8k_pair_rows(7), batch_size=3, progress=done.append)
    assert done == [3, 6, 7]


def test_resume_from_checkpoint_continues_the_run(setup, tmp_path, capsys):
    root, model, pairs = setup
    out = tmp_path / "run"
    base = ["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_steps", "2"]
    assert main([*base, "--max_steps", "1", "--resume_from_checkpoint", "last"]) == 2
    assert "no complete checkpoint-N folder" in capsys.readouterr().err
    assert main([*base, "--max_steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert main([*base, "--max_steps", "3", "--resume_from_checkpoint", "last"]) == 0
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3]  # the resumed run trained step 3 only, and appended to the log


def test_saved_config_is_a_valid_config_file_for_the_next_run(setup, tmp_path):
    root, model, pairs = setup
    filled = tmp_path / "filled"
    assert main(["precompute-ref", "--pairs", str(pairs), "--model", str(model), "-o", str(filled)]) == 0
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--pairs", str(filled), "--model", str(model), "--output_dir", str(first),
                 "--max_steps", "1", "--beta", "0.3", "--save_strategy", "no"]) == 0
    saved = json.loads((first / "stepwise_config.json").read_text())
    assert saved["pad_token"] is None and saved["precompute_ref_log_probs"] is False  # not '<PAD_TOKEN>' / True
    assert main(["train", "--pairs", str(filled), "--model", str(model), "--output_dir", str(second),
                 "--config", str(first / "stepwise_config.json")]) == 0
    again = json.loads((second / "stepwise_config.json").read_text())
    assert {k for k in saved if saved[k] != again.get(k)} == {"output_dir"}


def test_reference_line_names_the_reference_model_also_with_lora(setup, tmp_path, capsys):
    root, model, pairs = setup
    assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "1", "--lora_r", "4", "--ref_model", str(model), "--save_strategy", "no"]) == 0
    assert f"reference: {model}" in capsys.readouterr().out


def test_empty_pair_shards_are_skipped_and_all_empty_is_a_clear_error(setup, tmp_path, capsys):
    root, model, pairs = setup
    empty = tmp_path / "empty"
    write_pairs(empty, [])  # `stepdpo pairs` with no pair made
    base = ["train", "--model", str(model), "--output_dir", str(tmp_path / "run"), "--max_steps", "1",
            "--save_strategy", "no"]
    assert main([*base, "--pairs", str(empty)]) == 2
    assert "no pairs to train on (every shard is empty)" in capsys.readouterr().err
    mixed = write_pairs(tmp_path / "mixed", gsm8k_pair_rows(4), per_shard=2)
    write_table(from_rows([], PAIRS), mixed / "part-00001.parquet", PAIRS)  # listed in pairs.json, now empty
    assert main([*base, "--pairs", str(mixed)]) == 0


def test_trl_native_flags_train_a_lora_adapter_with_the_named_stepwise_loss(setup, tmp_path, capsys):
    """`trl dpo`'s flags work as written: ModelConfig's model/LoRA/dtype/attention options, TRL's
    --loss_type naming our loss, the dashed spelling of a field, and --config under the flags."""
    root, model, pairs = setup
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("lora_r: 4\nlora_alpha: 32\nlogging_steps: 1\nenv:\n  STEPDPO_TEST_ENV: from-yaml\n")
    out = tmp_path / "run"
    code = main(["train", "--pairs", str(pairs), "--model_name_or_path", str(model), "--use_peft",
                 "--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj", "--loss_type", "margin",
                 "--torch_dtype", "float32", "--attn_implementation", "eager", "--max-length", "256",
                 "--config", str(cfg), "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no"])
    assert code == 0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 32  # flag over YAML; YAML over TRL's default 32→32
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    saved = json.loads((out / "stepwise_config.json").read_text())
    assert saved["stepwise_loss"] == "margin" and saved["loss_type"] == ["margin"] and saved["max_length"] == 256
    assert "reference: adapter switched off" in capsys.readouterr().out
    import os

    assert os.environ.pop("STEPDPO_TEST_ENV") == "from-yaml"


def test_loss_type_and_stepwise_loss_name_one_loss(tmp_path):
    assert _train_config(["--output_dir", str(tmp_path), "--loss_type", "soft_label"]).stepwise_loss == "soft_label"
    assert _train_config(["--output_dir", str(tmp_path), "--stepwise_loss", "sigmoid"]).loss_type == ["sigmoid"]
    with pytest.raises(UserError, match="loss_type margin and stepwise_loss combined disagree"):
        _train_config(["--output_dir", str(tmp_path), "--loss_type", "margin", "--stepwise_loss", "combined"])
    with pytest.raises(UserError, match="loss_type ipo is a TRL DPOTrainer loss"):
        _train_config(["--output_dir", str(tmp_path), "--loss_type", "sigmoid", "ipo"])


@pytest.mark.parametrize("argv,message", [
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be ≥ 1, got 0"),
    (["--learning_rate", "-1"], "learning_rate must be ≥ 0, got -1"),
    (["--lora_r", "-2"], "--lora_r must be at least 1, got -2"),
    (["--beta", "-1"], "beta must be > 0, got -1"),
    (["--max_length", "-5"], "max_length must be ≥ 0, got -5"),
    (["--max_steps", "0"], "--max_steps must be at least 1, got 0"),
    (["--report_to", "wandb"], "--report_to wandb: the 'wandb' package is not installed (pip install "
                               "'stepwise-dpo[trackers]'"),
    (["--report_to", "tensorboard"], "the 'tensorboard' package is not installed"),
    (["--use_liger_kernel", "true"], "use_liger_kernel is not supported"),
])
def test_bad_train_flags_are_one_line_errors(setup, tmp_path, capsys, argv, message):
    root, model, pairs = setup
    code = main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "o"),
                 *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("stepdpo train: error: "), err
    assert message in err


def test_output_dir_file_and_missing_local_model_are_named(setup, tmp_path, capsys):
    root, model, pairs = setup
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(afile)]) == 2
    assert f"--output_dir {afile}: is a file, not a folder" in capsys.readouterr().err
    missing = tmp_path / "models" / "nope"
    assert main(["train", "--pairs", str(pairs), "--model", str(missing), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--model_name_or_path {missing}: no such model folder" in err and "Repo id" not in err
    assert main(["train", "--pairs", str(pairs), "--output_dir", str(tmp_path / "o")]) == 2
    assert "--model_name_or_path (or --model) is required" in capsys.readouterr().err
    # into a label run (a model among its shards) or over the base model: refused, nothing touched
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    base_files = sorted(p.name for p in model.iterdir())
    assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(run)]) == 2
    assert "--output_dir" in (err := capsys.readouterr().err) and "holds a label or generate run" in err
    assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(model)]) == 2
    assert "is the base model's folder" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["run.json"] and sorted(p.name for p in model.iterdir()) == base_files


def test_hub_token_never_lands_in_training_args_bin(setup, tmp_path, monkeypatch):
    import torch

    root, model, pairs = setup
    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "run"
    assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(out),
                 "--max_steps", "1", "--hub_token", "hf_SECRET123", "--save_steps", "1"]) == 0
    for path in [out / "training_args.bin", *out.glob("checkpoint-*/training_args.bin")]:
        saved = torch.load(path, weights_only=False)
        assert saved.hub_token is None
        assert b"hf_SECRET123" not in path.read_bytes()
    assert "hf_SECRET123" not in (out / "stepwise_config.json").read_text()
    import os

    assert os.environ.pop("HF_TOKEN") == "hf_SECRET123"  # where huggingface_hub finds it for push_to_hub


@pytest.mark.parametrize("command,argv", [
    ("precompute-ref", ["--pairs", "p", "--model", "m", "-o", "o", "--max_length", "7", "--batch_size", "3",
                        "--truncation_mode", "keep_end"]),
    ("pairs", ["run", "-o", "out", "--shard_size", "5"]),
])
def test_every_command_takes_both_spellings_of_an_option(command, argv):
    import argparse
    import importlib

    from stepdpo.cli import COMMANDS
    from stepdpo.options import accept_both_spellings

    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).configure(parser)
    accept_both_spellings(parser)
    args = parser.parse_args(argv)
    if command == "precompute-ref":
        assert (args.max_length, args.batch_size, args.truncation_mode) == (7, 3, "keep_end")
        dashed = parser.parse_args(["--pairs", "p", "--model", "m", "-o", "o", "--max-length", "9"])
        assert dashed.max_length == 9
    else:
        assert args.shard_size == 5


def test_resume_last_skips_a_checkpoint_cut_by_a_kill_and_metrics_do_not_repeat(setup, tmp_path, capsys):
    import shutil

    root, model, pairs = setup
    out = tmp_path / "run"
    base = ["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_steps", "1"]
    assert main([*base, "--max_steps", "2"]) == 0
    # a later run was killed while saving checkpoint-3 (weights written, trainer_state.json not yet),
    # after it had logged step 3
    cut = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", cut)
    (cut / "trainer_state.json").unlink()
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 3, "loss": 0.5}) + "\n" + '{"step": 3, "lo')
    capsys.readouterr()
    assert main([*base, "--max_steps", "4", "--resume_from_checkpoint", "last"]) == 0
    printed = capsys.readouterr().out
    assert "skipping checkpoint-3: no trainer_state.json" in printed
    assert f"resuming from {out / 'checkpoint-2'}" in printed
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3, 4]
    (out / "checkpoint-4" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert main([*base, "--max_steps", "5", "--resume_from_checkpoint", str(out / "checkpoint-4")]) == 2
    assert "cannot resume from it: trainer_state.json is unreadable" in capsys.readouterr().err
    shutil.rmtree(cut)
    (cut / "x").parent.mkdir()
    assert main([*base, "--max_steps", "5", "--resume_from_checkpoint", str(cut)]) == 2
    assert "cannot resume from it: no trainer_state.json" in capsys.readouterr().err


def test_precompute_ref_drops_stale_shards_and_train_refuses_a_partial_folder(setup, tmp_path, capsys):
    root, model, _ = setup
    pairs = write_pairs(tmp_path / "pairs", gsm8k_pair_rows(12, strategy="first-error"), per_shard=4)
    filled = tmp_path / "filled"
    argv = ["precompute-ref", "--pairs", str(pairs), "--model", str(model), "-o", str(filled)]
    assert main(argv) == 0
    assert len(list(filled.glob("*.parquet"))) == 3
    # the pairs are re-sharded (12 pairs in 2 shards) and precompute-ref rerun into the same folder
    for f in pairs.glob("*.parquet"):
        f.unlink()
    write_pairs(pairs, gsm8k_pair_rows(12, strategy="first-error"), per_shard=6)
    capsys.readouterr()
    assert main(argv) == 0
    assert "removed part-00002.parquet" in capsys.readouterr().out
    assert sorted(p.name for p in filled.glob("*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    assert read_table(filled, PAIRS).num_rows == 12
    meta = json.loads((filled / "precompute.json").read_text())
    assert meta["complete"] is True and meta["pairs"] == 12 and meta["shards"] == sorted(
        p.name for p in filled.glob("*.parquet"))
    assert json.loads((filled / "pairs.json").read_text())["judge_fingerprints"] == ["test"]
    # an empty (or cut) precompute.json is a partial folder, not "no settings recorded"
    (filled / "precompute.json").write_text("")
    code = main(["train", "--pairs", str(filled), "--model", str(model), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "1"])
    assert code == 2 and "precompute.json: not a readable JSON manifest" in capsys.readouterr().err


def test_reaggregating_with_another_aggregation_than_the_pairs_is_refused(setup, tmp_path, capsys):
    root, model, _ = setup
    pairs = write_pairs(tmp_path / "pairs", gsm8k_pair_rows(4), aggregate="min")
    base = ["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "o"),
            "--max_steps", "1", "--loss_type", "soft_label"]
    assert main([*base, "--aggregation", "product"]) == 2
    err = capsys.readouterr().err
    assert "--aggregation product: " in err and "was built with --aggregate min" in err


def test_a_run_gives_no_gradient_checkpointing_deprecation_warning(setup, tmp_path):
    import warnings

    root, model, pairs = setup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "o"),
                     "--max_steps", "1", "--save_strategy", "no"]) == 0
    texts = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert texts == []


def test_the_train_example_of_stepdpo_help_runs_as_written(setup, tmp_path, monkeypatch, capsys):
    """`stepdpo --help` shows a train line with no --max_steps: it runs (one pass of
    --num_train_epochs over the pairs), here with the hub model swapped for the tiny one."""
    import shlex

    from stepdpo.cli import EPILOG

    root, model, pairs = setup
    line = next(ln.strip() for ln in EPILOG.splitlines() if ln.strip().startswith("stepdpo train"))
    argv = shlex.split(line)[1:]
    argv[argv.index("--pairs") + 1] = str(pairs)
    model_flag = "--model" if "--model" in argv else "--model_name_or_path"
    argv[argv.index(model_flag) + 1] = str(model)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert (tmp_path / "work" / "model" / "stepwise_config.json").is_file()
    from trainer.config import StepwiseDPOConfig

    assert StepwiseDPOConfig(output_dir=str(tmp_path), use_cpu=True).ddp_find_unused_parameters is False
