"""The engine's public API that online and batch mode share: one row → item conversion, one
score-count check, one writer of run.json, and package-level re-exports."""

from __future__ import annotations

import json

import pytest

from labeler.engine import RUN_SCHEMA, RunDir, build_row, run_header
from labeler.errors import FatalError, RetryableError
from labeler.judges import Item, Verdict, create_judge
from labeler.judges.config import JudgeConfig
from schemas.ids import response_id

ROW = {"response_id": response_id("2+2?", ["2+2=4", "so 4"]), "problem_id": "p", "source": "t",
       "prompt": "2+2?", "steps": ["2+2=4", "so 4"], "final_answer": "4", "gold_answer": "4",
       "reference_scores": [1.0, None], "meta": '{"k": 1}'}


def test_item_from_row_takes_every_field_a_judge_may_use():
    item = Item.from_row(ROW)
    assert item == Item(response_id=ROW["response_id"], prompt="2+2?", steps=["2+2=4", "so 4"],
                        gold_answer="4", final_answer="4", reference_scores=[1.0, None], meta='{"k": 1}')
    item.steps.append("x")  # a copy: the row's list is not the item's
    assert ROW["steps"] == ["2+2=4", "so 4"]
    bare = Item.from_row({"response_id": "r", "prompt": "p", "steps": ("a",)})
    assert bare.steps == ["a"] and bare.gold_answer is None and bare.meta is None


def test_verdict_score_count_is_checked_in_one_place():
    item = Item.from_row(ROW)
    assert Verdict([1.0, 0.0]).mismatch(item) is None
    assert Verdict([1.0]).mismatch(item) == "judge gave 1 score(s) for 2 step(s)"
    assert Verdict([1.0, 0.0, 1.0]).checked(item).error == "judge gave 3 score(s) for 2 step(s)"
    assert Verdict([1.0, None]).checked(item).error is None
    # an error the judge set first is kept
    assert Verdict([], error="too long for the context").checked(item).error == "too long for the context"


def test_error_classes_carry_what_the_engine_acts_on():
    e = RetryableError("bad json", usage={"input_tokens": 5, "output_tokens": 2, "cached_tokens": 0})
    assert e.usage["input_tokens"] == 5 and e.retry_after is None and RetryableError("x").usage is None
    assert FatalError("401", abort=True).abort and not FatalError("400").abort
    from labeler.judges.base import FatalError as Again  # the old import path still works

    assert Again is FatalError


def test_record_run_is_the_one_writer_of_run_json(tmp_path):
    judge = create_judge("gsm8k-calc", JudgeConfig())
    run = RunDir(tmp_path / "run")
    run.write_shard([build_row(ROW, judge, verdict=Verdict([1.0, 1.0]), cost=0.0, latency=0.0)])
    header = run_header(judge, None, {"input": "r.parquet", "mode": "online"})
    first = run.record_run(header, {"started_at": "t1", "state": "interrupted", "requests": 1})
    assert first["schema"] == RUN_SCHEMA and first["state"] == "interrupted"
    assert first["judge"] == "gsm8k-calc" and first["judge_fingerprint"] == judge.fingerprint()
    assert first["input"] == "r.parquet" and first["price_per_mtok"] is None
    assert first["totals"]["rows"] == first["totals"]["ok"] == 1
    # the same run recording itself again replaces its entry; the next run appends
    run.record_run(header, {"started_at": "t1", "state": "finished", "requests": 3})
    final = run.record_run(header, {"started_at": "t2", "state": "finished", "requests": 0})
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    assert on_disk == final
    assert [(r["started_at"], r["state"], r["requests"]) for r in on_disk["runs"]] == [
        ("t1", "finished", 3), ("t2", "finished", 0)]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("package", ["labeler.engine", "labeler.batch", "labeler.judges"])
def test_package_public_api_resolves(package):
    import importlib

    mod = importlib.import_module(package)
    assert mod.__all__, package
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError):
        mod.no_such_name  # noqa: B018
