"""`stepdpo demo` up to the pairs (the training stage is the trainer's tests' business)."""

from __future__ import annotations

import pyarrow.parquet as pq

from stepdpo.cli import main


def test_demo_rerun_with_other_inputs_relabels_from_scratch(tmp_path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--limit", "20", "--until", "pairs"]) == 0
    out = capsys.readouterr().out
    assert "$ stepdpo pairs" in out and "$ stepdpo train" not in out and "tiny model" not in out
    # An earlier demo's run folder of another judge (e.g. an older gsm8k-calc version).
    manifest = (work / "labeled" / "run.json")
    manifest.write_text(manifest.read_text().replace('"judge_fingerprint": "', '"judge_fingerprint": "0ld'))
    assert main(["demo", "--workdir", str(work), "--limit", "5", "--until", "pairs"]) == 0
    ids = set(pq.read_table(work / "perturbed.parquet", columns=["response_id"]).column(0).to_pylist())
    labeled = set(pq.read_table(work / "labeled" / "part-00000.parquet", columns=["response_id"]).column(0).to_pylist())
    assert labeled == ids and len(ids) <= 10  # not the 20-problem run's rows
    capsys.readouterr()


def test_a_paid_judge_leaving_a_few_rows_failed_does_not_stop_the_demo(tmp_path, capsys, fake, monkeypatch):
    """`label` exits 1 when rows failed after their retries; the demo notes it and builds the
    pairs from the rows labeled (a few failed rows of a real judge must not end a worked example)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    fake.faults.script = ["400"]  # one row refused (not retried): one hole
    work = tmp_path / "demo"
    assert main(["demo", "--workdir", str(work), "--limit", "5", "--until", "pairs", "--judge",
                 "openai:gpt-4o-mini"]) == 0
    captured = capsys.readouterr()
    assert "label: 1 of 10 responses failed after their retries" in captured.err
    assert "demo: label finished with some rows failed" in captured.out and "$ stepdpo pairs" in captured.out
    statuses = pq.read_table(work / "labeled" / "part-00000.parquet", columns=["status"]).column(0).to_pylist()
    assert sorted(statuses) == ["error"] + ["ok"] * 9
