"""`stepdpo demo` up to the pairs (the training stage is the trainer's tests' business)."""

from __future__ import annotations

import pyarrow.parquet as pq

from stepdpo.cli import main
from stepdpo.commands import demo


def test_demo_rerun_with_other_inputs_relabels_from_scratch(tmp_path, monkeypatch, capsys):
    real_stage = demo._stage
    monkeypatch.setattr(demo, "_stage", lambda title, argv: None if title == "train" else real_stage(title, argv))
    monkeypatch.setattr("trainer.tiny_model.build_tiny_model", lambda path: None)
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--limit", "20"]) == 0
    # An earlier demo's run folder of another judge (e.g. an older gsm8k-calc version).
    manifest = (work / "labeled" / "run.json")
    manifest.write_text(manifest.read_text().replace('"judge_fingerprint": "', '"judge_fingerprint": "0ld'))
    assert main(["demo", "--workdir", str(work), "--limit", "5"]) == 0
    ids = set(pq.read_table(work / "perturbed.parquet", columns=["response_id"]).column(0).to_pylist())
    labeled = set(pq.read_table(work / "labeled" / "part-00000.parquet", columns=["response_id"]).column(0).to_pylist())
    assert labeled == ids and len(ids) <= 10  # not the 20-problem run's rows
    capsys.readouterr()
