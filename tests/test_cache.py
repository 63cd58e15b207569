"""The judge cache: real diskcache on disk, JSON values, no eviction, errors never stored."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from labeler.engine.cache import JudgeCache, cache_key, default_cache_dir
from labeler.judges.base import Verdict


def test_key_is_stable_and_sensitive():
    k = cache_key("fp1", "What is 2+2?", ["2+2=4"])
    assert k == cache_key("fp1", "What is 2+2?", ["2+2=4"]) and len(k) == 64
    assert len({k, cache_key("fp2", "What is 2+2?", ["2+2=4"]), cache_key("fp1", "What is 2+3?", ["2+2=4"]),
                cache_key("fp1", "What is 2+2?", ["2+2=5"]), cache_key("fp1", "What is 2+2?", ["2+", "2=4"])}) == 5


def test_roundtrip_persists_across_instances(tmp_path):
    cache = JudgeCache(tmp_path / "c")
    v = Verdict(scores=[0.25, None, 1.0], raw='{"steps": []}', input_tokens=120, output_tokens=30,
                cached_tokens=64, headers={"x-ratelimit-limit-requests": "5"})
    key = cache_key("fp", "p", ["a", "b", "c"])
    assert cache.get(key) is None and cache.misses == 1
    assert cache.put(key, v)
    cache.close()
    again = JudgeCache(tmp_path / "c")
    hit = again.get(key)
    assert again.hits == 1
    assert (hit.scores, hit.raw, hit.input_tokens, hit.output_tokens, hit.cached_tokens) == \
        ([0.25, None, 1.0], '{"steps": []}', 120, 30, 64)
    assert hit.headers is None  # response headers are not part of an answer
    # Values are JSON text, never pickles.
    [value] = again.values()
    assert isinstance(value, str) and json.loads(value)["scores"] == [0.25, None, 1.0]
    again.close()


def test_errors_are_never_cached(tmp_path):
    cache = JudgeCache(tmp_path)
    assert not cache.put("k1", Verdict(scores=[0.5], error="context too long"))
    assert not cache.put("k2", Verdict(scores=[]))
    assert len(cache) == 0
    cache.close()


def test_eviction_is_off(tmp_path):
    cache = JudgeCache(tmp_path)
    cache.put("k", Verdict(scores=[1.0]))
    cache.close()
    settings = {}
    for db in Path(tmp_path).rglob("cache.db"):
        con = sqlite3.connect(db)
        settings.update(dict(con.execute("SELECT key, value FROM Settings").fetchall()))
        con.close()
    assert settings["eviction_policy"] == "none"


def test_default_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("STEPDPO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "stepdpo" / "judge"


def _one_solution(path: Path, **fields) -> Path:
    from schemas.ids import response_id
    from tests.fakes.responses import write_responses

    prompt, steps = "Tom has 3 apples and buys 4. How many?", ["3+4 = <<3+4=7>>7", "He has 7."]
    row = {"response_id": response_id(prompt, steps), "problem_id": "p", "source": "t", "prompt": prompt,
           "steps": steps, "final_answer": "7", "gold_answer": "7", "reference_scores": None, "meta": None}
    row.update(fields)
    return write_responses([row], path)


def test_answers_that_depend_on_labels_or_gold_are_not_replayed_for_other_labels(tmp_path, capsys):
    """Same prompt and steps, different human labels / gold answer: the cache must not answer."""
    from schemas.tables import STEP_SCORES, read_table
    from stepdpo.cli import main

    def label(inp: Path, judge: str, out: str, rc: int = 0) -> list[dict]:
        assert main(["label", str(inp), "--judge", judge, "-o", str(tmp_path / out),
                     "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]) == rc
        return read_table(tmp_path / out, STEP_SCORES).to_pylist()

    labeled = _one_solution(tmp_path / "a.parquet", reference_scores=[1.0, 0.0])
    unlabeled = _one_solution(tmp_path / "b.parquet")
    assert label(labeled, "reference", "ra")[0]["scores"] == [1.0, 0.0]
    row = label(unlabeled, "reference", "rb", rc=2)[0]  # its only row failed: a run with no ok row exits 2
    assert row["status"] == "error" and row["scores"] is None, "labels of another file came from the cache"
    relabeled = _one_solution(tmp_path / "c.parquet", reference_scores=[1.0, 1.0])
    assert label(relabeled, "reference", "rc")[0]["scores"] == [1.0, 1.0]

    assert label(labeled, "gsm8k-calc", "ca")[0]["scores"][-1] == 1.0
    wrong_gold = _one_solution(tmp_path / "d.parquet", gold_answer="8")
    assert label(wrong_gold, "gsm8k-calc", "cb")[0]["scores"][-1] == 0.0
    capsys.readouterr()


def test_cache_key_without_inputs_is_unchanged():
    assert cache_key("fp", "p", ["a"]) == cache_key("fp", "p", ["a"], None) == cache_key("fp", "p", ["a"], {})
    assert cache_key("fp", "p", ["a"], {"gold_answer": "1"}) != cache_key("fp", "p", ["a"], {"gold_answer": "2"})
