"""A 2-process CPU (gloo) run under `accelerate launch` matches the 1-process run on the same
global batch: same first gradient, same loss after one synchronised update."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from stepdpo.cli import main  # noqa: E402
from tests.trainer_util import gsm8k_pair_rows, write_pairs  # noqa: E402
from trainer.tiny_model import build_tiny_model  # noqa: E402


def _steps(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tmp_path):
    model = build_tiny_model(tmp_path / "model", hidden=32, layers=1)
    # One shard: accelerate then splits every global batch of 4 between the two ranks (with
    # several shards it gives each rank its own files instead, a different global batch).
    pairs = write_pairs(tmp_path / "pairs", gsm8k_pair_rows(16))
    common = ["train", "--pairs", str(pairs), "--model", str(model), "--max_steps", "2",
              "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "0.01",
              "--stepwise_loss", "step_weighted", "--seed", "0"]
    accelerate = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    # --multi_gpu picks the torchrun launcher; with no GPU accelerate runs MULTI_CPU over gloo.
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "stepdpo.cli", *common, "--per_device_train_batch_size", "2",
           "--output_dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*common, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "one")]) == 0
    two, one = _steps(tmp_path / "two"), _steps(tmp_path / "one")
    assert len(two) == len(one) == 2
    assert two[0]["num_tokens"] == one[0]["num_tokens"]  # the same global batch was seen
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-5)
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], abs=1e-4)
    assert two[1]["loss"] != pytest.approx(one[0]["loss"], abs=1e-4)  # it did train
    assert (tmp_path / "two" / "model.safetensors").exists()
