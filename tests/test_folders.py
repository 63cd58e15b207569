"""Run and pairs folders as other tools see them: the README's one-liners read every row."""

from __future__ import annotations

import glob

import pandas as pd
import pyarrow.dataset as ds

from schemas import PAIRS, STEP_SCORES, read_table
from stepdpo.cli import main


def test_run_and_pairs_folders_read_with_pyarrow_dataset_and_pandas(tmp_path, gsm8k_sample, capsys):
    resp, pert, run, pairs = (tmp_path / n for n in ("r.parquet", "p.parquet", "run", "pairs"))
    assert main(["ingest", "gsm8k", str(gsm8k_sample), "-o", str(resp), "--limit", "30"]) == 0
    assert main(["perturb", str(resp), "-o", str(pert), "--variants", "1"]) == 0
    assert main(["label", str(pert), "--judge", "gsm8k-calc", "-o", str(run), "--no-cache",
                 "--shard-size", "16"]) == 0
    assert main(["pairs", str(run), "-o", str(pairs), "--shard-size", "7"]) == 0
    capsys.readouterr()
    assert (run / "run.json").is_file() and (pairs / "pairs.json").is_file()
    for folder, kind in ((run, STEP_SCORES), (pairs, PAIRS)):
        ours = read_table(folder, kind)
        assert len(list(folder.glob("*.parquet"))) > 1  # several shards, a manifest beside them
        # The README's one-liners, as written there.
        df = pd.read_parquet(sorted(glob.glob(f"{folder}/*.parquet")))
        table = ds.dataset(sorted(glob.glob(f"{folder}/*.parquet"))).to_table()
        key = "response_id" if kind is STEP_SCORES else "pair_id"
        assert sorted(df[key]) == sorted(table.column(key).to_pylist()) == sorted(ours.column(key).to_pylist())
        assert len(df) == ours.num_rows > 10
        assert table.schema.metadata[b"stepdpo.schema"] == kind.tag.encode()
