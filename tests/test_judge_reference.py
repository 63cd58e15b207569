"""reference: human step labels pass through; rows without them are clear error rows."""

from __future__ import annotations

import asyncio

from labeler.judges import create_judge
from labeler.judges.base import Item
from labeler.judges.config import JudgeConfig


def run(items):
    return asyncio.run(create_judge("reference", JudgeConfig()).judge(items))


def test_passes_scores_through_including_nulls():
    items = [Item("a", "q", ["s1", "s2", "s3"], reference_scores=[1.0, 0.5, 0.0]),
             Item("b", "q", ["s1", "s2"], reference_scores=[1, None])]
    va, vb = run(items)
    assert va.scores == [1.0, 0.5, 0.0] and va.error is None
    assert vb.scores == [1.0, None] and vb.error is None
    assert all(isinstance(s, float) for s in va.scores)


def test_missing_scores_is_an_error_row():
    (v,) = run([Item("row-7", "q", ["s1", "s2"])])
    assert v.scores == [None, None]
    assert v.error == ("response row-7 has no reference_scores (the reference judge needs a "
                       "source with human step labels, e.g. PRM800K)")
    (v,) = run([Item("row-8", "q", ["s1"], reference_scores=[])])
    assert v.error.startswith("response row-8 has no reference_scores")


def test_wrong_length_and_out_of_range():
    v1, v2 = run([Item("x", "q", ["s1", "s2"], reference_scores=[1.0]),
                  Item("y", "q", ["s1"], reference_scores=[-1.0])])
    assert v1.error == "response x has 1 reference_scores for 2 steps"
    assert v2.error == "response y step 0: reference score -1.0 is not in [0, 1]"


def test_metadata():
    judge = create_judge("reference", JudgeConfig())
    assert judge.name == "reference" and judge.price_model is None
    assert len(judge.fingerprint()) == 16


def test_stepdpo_label_with_reference_end_to_end(tmp_path, capsys):
    """PRM800K human ratings come out of `stepdpo label --judge reference` as the scores."""
    from pathlib import Path

    from schemas.tables import STEP_SCORES, read_table
    from stepdpo.cli import main

    data = Path(__file__).parent / "data" / "prm800k"
    responses = tmp_path / "responses.parquet"
    assert main(["ingest", "prm800k", str(data / "phase2_sample.jsonl"), "-o", str(responses)]) == 0
    run = tmp_path / "run"
    assert main(["label", str(responses), "--judge", "reference", "-o", str(run),
                 "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]) == 0
    rows = read_table(run, STEP_SCORES).to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows)
    assert all(r["scores"] == r["reference_scores"] for r in rows)
    assert any(0.0 in r["scores"] for r in rows) and any(1.0 in r["scores"] for r in rows)


def test_nan_label_is_an_error_row_not_a_crash_of_the_cache_key():
    from labeler.engine.cache import cache_key

    judge = create_judge("reference", JudgeConfig())
    item = Item("r", "p", ["a", "b"], reference_scores=[1.0, float("nan")])
    assert cache_key(judge.fingerprint(), item.prompt, item.steps, judge.cache_inputs(item))
    [v] = run([item])
    assert v.error and "not in [0, 1]" in v.error
