"""train-rm: process and outcome reward models learn a task whose correctness is visible
(tests/rm_tasks.py says why), the saved folders score exactly what the trainer's head computes
through `prm:`/`orm:`, and the label rules and the loss match their definitions."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from labeler.judges import create_judge  # noqa: E402
from labeler.judges.base import Item  # noqa: E402
from labeler.judges.config import JudgeConfig  # noqa: E402
from schemas.errors import UserError  # noqa: E402
from stepdpo.commands.train_rm import evaluate  # noqa: E402
from tests.prm_models import CHATML  # noqa: E402
from tests.rm_tasks import digit_task, write_responses  # noqa: E402
from trainer.reward_data import (  # noqa: E402
    RewardCollator,
    encode_process,
    heldout_rows,
    label_source,
    outcome_target,
    step_targets,
)
from trainer.reward_model import (  # noqa: E402
    RewardModelConfig,
    predict,
    soft_cross_entropy,
    train_reward_model,
)
from trainer.tiny_model import build_tiny_model  # noqa: E402


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), max_steps=100, per_device_train_batch_size=16,
                learning_rate=3e-3, warmup_steps=10, logging_steps=50, save_strategy="no",
                report_to="none", use_cpu=True, disable_tqdm=True, eval_fraction=0.2, seed=0)
    base.update(kw)
    return RewardModelConfig(**base)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny Qwen2 causal LM with a chat template and NO <extra_0>: train-rm must add it."""
    from transformers import AutoTokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("rm") / "base", arch="qwen2",
                            extra_tokens=["<|im_start|>", "<|im_end|>"])
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok.encode("<extra_0>", add_special_tokens=False)) > 1
    tok.chat_template = CHATML
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_responses(digit_task(500), tmp_path_factory.mktemp("task") / "responses.parquet")


def items_of(rows):
    return [Item(r["response_id"], r["prompt"], r["steps"]) for r in rows]


def test_prm_learns_and_prm_judge_reproduces_the_trainer(tmp_path, backbone, task):
    cfg = config(tmp_path, after_first_error="keep")
    source = label_source([str(task)])
    model, tok, _ = train_reward_model(source, str(backbone), cfg)
    metrics = evaluate(model, tok, source, cfg)
    assert metrics["rows"] > 50 and metrics["auc"] >= 0.9, metrics
    # the released checkpoint layout
    out = tmp_path / "out"
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["Qwen2ForProcessRewardModel"] and "auto_map" not in saved
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        names = set(fh.keys())
    assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= names
    assert all(n.startswith(("model.", "score.")) for n in names)
    # prm: on the folder gives the trainer's held-out probabilities
    rows = heldout_rows(source, cfg.eval_fraction)
    expected = predict(model, tok, rows, cfg)
    judge = create_judge(f"prm:{out}", JudgeConfig(style="qwen", device="cpu", dtype="float32", prm_batch_size=5))
    assert judge.model_class == "Qwen2Model+score"
    got = [v.scores for v in judge.score_items(items_of(rows))]
    worst = max(abs(a - b) for g, e in zip(got, expected, strict=True) for a, b in zip(g, e, strict=True))
    assert worst <= 1e-5


def test_orm_learns_and_orm_judge_reproduces_the_trainer(tmp_path, backbone, task):
    cfg = config(tmp_path, kind="outcome", aggregate="min")
    source = label_source([str(task)])
    model, tok, _ = train_reward_model(source, str(backbone), cfg)
    metrics = evaluate(model, tok, source, cfg)
    assert metrics["rows"] > 50 and metrics["auc"] >= 0.9, metrics
    rows = heldout_rows(source, cfg.eval_fraction)
    expected = predict(model, tok, rows, cfg)
    judge = create_judge(f"orm:{tmp_path / 'out'}", JudgeConfig(device="cpu", dtype="float32", prm_batch_size=3))
    got = [v.scores for v in judge.score_items(items_of(rows))]
    for g, e in zip(got, expected, strict=True):
        assert g[:-1] == [None] * (len(g) - 1) == e[:-1]
        assert abs(g[-1] - e[-1]) <= 1e-5


def test_labels_follow_threshold_soft_and_after_first_error():
    hard = RewardModelConfig(output_dir="x", threshold=0.5)
    assert step_targets([0.9, 0.2, 0.8, None, 0.1], hard) == [1.0, 0.0, None, None, None]
    keep = RewardModelConfig(output_dir="x", after_first_error="keep")
    assert step_targets([0.9, 0.2, 0.8, None, 0.1], keep) == [1.0, 0.0, 1.0, None, 0.0]
    soft = RewardModelConfig(output_dir="x", soft_labels=True, after_first_error="keep")
    assert step_targets([0.9, 0.2, float("nan"), 1.5], soft) == [0.9, 0.2, None, 1.0]
    assert outcome_target([1.0, 0.5, None, 0.8], RewardModelConfig(output_dir="x", aggregate="min")) == 1.0
    assert outcome_target([1.0, 0.4], RewardModelConfig(output_dir="x", aggregate="min")) == 0.0
    assert outcome_target([None], RewardModelConfig(output_dir="x")) is None


def test_loss_is_read_only_at_the_separators(backbone):
    from transformers import AutoTokenizer

    from trainer.reward_model import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(backbone)
    cfg = RewardModelConfig(output_dir="x")
    assert prepare_tokenizer(tok, cfg) is True
    sep = tok.convert_tokens_to_ids("<extra_0>")
    steps = ["use 3", "a step that writes <extra_0> itself", "use 7"]
    ids, positions = encode_process(tok, "Problem", steps, "<extra_0>", 2048)
    assert [ids[p] for p in positions] == [sep] * 3
    assert ids.count(sep) == 4  # the literal one inside step 2 is not a score position
    batch = RewardCollator(tok.pad_token_id)([
        {"input_ids": ids, "positions": positions, "targets": [1.0, 0.0, 0.25]},
        {"input_ids": ids[:5], "positions": [4], "targets": [1.0]}])
    where = batch["targets"] != -100.0
    assert where.sum() == 4 and batch["targets"][0, positions].tolist() == [1.0, 0.0, 0.25]
    # the soft cross-entropy equals torch's cross-entropy on hard targets, and its definition on soft ones
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5], [0.1, 0.1]])
    hard = torch.tensor([1.0, 0.0, 1.0])
    assert soft_cross_entropy(logits, hard).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, hard.long()).item(), abs=1e-6)
    q = torch.tensor([0.25, 0.5, 0.9])
    p1 = torch.softmax(logits, -1)[:, 1]
    manual = -(q * p1.log() + (1 - q) * (1 - p1).log()).mean().item()
    assert soft_cross_entropy(logits, q).item() == pytest.approx(manual, abs=1e-6)
    assert not math.isnan(manual)


def test_cli_trains_with_lora_and_soft_labels_and_writes_the_manifest(tmp_path, backbone, task, capsys):
    from stepdpo.cli import main

    out = tmp_path / "prm"
    argv = ["train-rm", str(task), "--model_name_or_path", str(backbone), "--output_dir", str(out),
            "--max_steps", "3", "--per_device_train_batch_size", "4", "--use_peft", "--lora_r", "4",
            "--soft_labels", "--eval_fraction", "0.1", "--logging_steps", "1", "--disable_tqdm", "true"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"process reward model: {out} (judge prm:{out} --style qwen)" in printed
    assert "held-out (" in printed and "ProcessBench F1" in printed
    manifest = json.loads((out / "reward_model.json").read_text())
    assert manifest["lora"] and manifest["soft_labels"] and manifest["label_column"] == "reference_scores"
    assert set(manifest["heldout"]) >= {"step_accuracy", "auc", "processbench_f1"}
    with __import__("safetensors").safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert not [k for k in fh.keys() if "lora" in k]  # merged into the backbone
    judge = create_judge(f"prm:{out}", JudgeConfig(style="qwen", device="cpu", dtype="float32"))
    assert len(judge.score_items([Item("r", "Problem 1", ["use 1", "use 8"])])[0].scores) == 2

    # Retrain into the same folder and kill -9 it: the old weights are still there, but they are
    # not what the folder now claims to be, so prm:/orm: refuse to load it (one line each).
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    again = ["train-rm", str(task), "--model_name_or_path", str(backbone), "--output_dir", str(out),
             "--max_steps", "100000", "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]
    proc = subprocess.Popen([sys.executable, "-m", "stepdpo", *again], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while json.loads((out / "reward_model.json").read_text()).get("complete") is not False:
        assert proc.poll() is None and time.monotonic() < deadline, "train-rm never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "model.safetensors").is_file()  # the previous run's weights
    for kind in ("prm", "orm"):
        with pytest.raises(UserError) as err:
            create_judge(f"{kind}:{out}", JudgeConfig(style="qwen", device="cpu", dtype="float32"))
        assert str(err.value) == (f"{out / 'reward_model.json'}: the run that wrote this folder did not finish; "
                                  f"rerun `stepdpo train-rm ... --output_dir {out}` to the end before judging "
                                  f"with {kind}:{out}")


@pytest.mark.parametrize("extra, message", [
    ([], "--max_steps is required"),
    (["--max-steps", "2", "--kind", "both"], "invalid choice"),
    (["--max_steps", "2", "--after_first_error", "drop"], "invalid choice"),
    (["--max_steps", "2", "--eval_fraction", "1.5"], "eval_fraction must be in [0, 1)"),
])
def test_bad_flags_are_one_line_errors(tmp_path, backbone, task, capsys, extra, message):
    from stepdpo.cli import main

    argv = ["train-rm", str(task), "--model_name_or_path", str(backbone), "--output_dir",
            str(tmp_path / "o"), *extra]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage error, as for every command
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1], err


def test_wrong_inputs_are_refused(tmp_path, backbone, capsys):
    from schemas.tables import PAIRS, from_rows, write_table
    from stepdpo.cli import main

    pairs = tmp_path / "pairs.parquet"
    write_table(from_rows([], PAIRS), pairs, PAIRS)
    assert main(["train-rm", str(pairs), "--model_name_or_path", str(backbone), "--output_dir",
                 str(tmp_path / "o"), "--max_steps", "2"]) == 2
    assert "a pairs file; train-rm reads step_scores runs or responses files" in capsys.readouterr().err
    unlabeled = [dict(r, reference_scores=None) for r in digit_task(4)]
    path = write_responses(unlabeled, tmp_path / "unlabeled.parquet")
    assert main(["train-rm", str(path), "--model_name_or_path", str(backbone), "--output_dir",
                 str(tmp_path / "o"), "--max_steps", "2"]) == 2
    # Named with the fix before a model loads (it was "no training step can run" after loading).
    assert capsys.readouterr().err.strip() == (
        f"stepdpo train-rm: error: {path}: responses with no reference_scores (no step labels); label it "
        f"first (`stepdpo label {path} --judge ... -o RUN`) and train on RUN")
    assert not (tmp_path / "o").exists()


def test_stream_is_shuffled_per_epoch_and_loses_nothing(tmp_path, backbone, task):
    from transformers import AutoTokenizer

    from trainer.reward_data import RowStream
    from trainer.reward_model import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(backbone)
    seq = RewardModelConfig(output_dir="x", train_sampling_strategy="sequential", eval_fraction=0.2)
    prepare_tokenizer(tok, seq)
    source = label_source([str(task)])
    ordered = [tuple(e["input_ids"]) for e in RowStream(source, tok, seq)]
    shuffled = RowStream(source, tok, RewardModelConfig(output_dir="x", eval_fraction=0.2), buffer_size=50)
    first = [tuple(e["input_ids"]) for e in shuffled]
    again = [tuple(e["input_ids"]) for e in shuffled]
    shuffled.set_epoch(1)
    second = [tuple(e["input_ids"]) for e in shuffled]
    assert sorted(first) == sorted(second) == sorted(ordered) and len(ordered) > 300
    assert first == again and first != ordered and second != first


def test_output_dir_holding_another_result_or_the_base_model_is_refused_before_loading(tmp_path, backbone,
                                                                                      task, capsys):
    """--output_dir onto a label run would drop a model among its shards; onto the base model it
    would replace the model being trained from; onto a file it was a traceback. Each is one line,
    before any model loads, and leaves the folder as it was."""
    from stepdpo.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (tmp_path / "file.txt").write_text("x")
    base_files = sorted(p.name for p in backbone.iterdir())
    cases = [(run, "holds a label or generate run"), (tmp_path / "file.txt", "exists and is not a folder"),
             (backbone, "is the base model's folder")]
    for out, message in cases:
        argv = ["train-rm", str(task), "--model_name_or_path", str(backbone), "--output_dir", str(out),
                "--max_steps", "2"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]
    assert sorted(p.name for p in backbone.iterdir()) == base_files
    for extra, message in ((["--learning_rate", "-1"], "--learning_rate must be >= 0"),
                           (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at")):
        argv = ["train-rm", str(task), "--model_name_or_path", str(backbone), "--output_dir",
                str(tmp_path / "o"), "--max_steps", "2", *extra]
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_a_model_that_cannot_load_leaves_no_half_folder(tmp_path, task, capsys):
    """It left a folder holding only the "unfinished" reward_model.json record."""
    from stepdpo.cli import main

    out = tmp_path / "rm"
    assert main(["train-rm", str(task), "--model_name_or_path", str(tmp_path / "no-model"),
                 "--output_dir", str(out), "--max_steps", "1"]) == 2
    assert "cannot load" in capsys.readouterr().err and not out.exists()
