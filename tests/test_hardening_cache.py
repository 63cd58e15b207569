"""Issue #16 items 6 and 11: the judge cache never unpickles, and a bad cache is one line.

Real diskcache folders throughout: an entry planted by diskcache's default (pickling) Disk, a
cache whose SQLite files are garbage, one on a read-only mount, and one that fills up (SQLite's
own ``max_page_count`` limit, stored in the cache's settings as diskcache does) mid-run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from diskcache import FanoutCache

from labeler.engine.cache import JsonTextDisk, JudgeCache, cache_key
from labeler.judges.base import Verdict
from schemas.tables import STEP_SCORES, read_table
from stepdpo.cli import main
from tests.fakes.llm_server import score_of
from tests.fakes.responses import gsm8k_rows, write_responses

REPO = Path(__file__).resolve().parent.parent
GSM8K = [REPO / "data" / "gsm8k" / "test_sample.jsonl"]


class RunsCode:
    """Unpickling this touches ``marker``: the attack of a planted cache entry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"
    planted = FanoutCache(str(tmp_path / "c"), shards=8)  # diskcache's default Disk: pickles
    planted.set("k-pickle", RunsCode(marker))
    planted.set("k-bytes", b"\x80\x04binary")
    planted.set(("a", "tuple", "key"), "x")  # a pickled KEY, met when iterating
    planted.set("k-foreign", json.dumps({"answer": 42}))
    planted.set("k-range", json.dumps({"scores": [7.5]}))
    planted.close()
    assert not marker.exists()

    warnings: list[str] = []
    cache = JudgeCache(tmp_path / "c", warn=warnings.append)
    for key in ("k-pickle", "k-bytes", "k-foreign", "k-range"):
        assert cache.get(key) is None  # a miss, never an exception
    assert cache.refused == 4 and cache.hits == 0 and cache.misses == 4
    assert not marker.exists(), "the cache unpickled a planted entry"
    assert len(warnings) == 1 and "is not a stepdpo answer (stored in pickle mode" in warnings[0]
    assert cache.values() == [json.dumps({"answer": 42}), json.dumps({"scores": [7.5]})]  # iterating loads nothing
    assert not marker.exists()
    # The fresh answer replaces the planted one, as JSON text.
    assert cache.put("k-pickle", Verdict(scores=[0.5, 1.0]))
    assert cache.get("k-pickle").scores == [0.5, 1.0]
    cache.close()
    ours = FanoutCache(str(tmp_path / "c"), shards=8, disk=JsonTextDisk)
    with pytest.raises(TypeError):  # and nothing but text can be stored through our Disk
        ours.set("k-obj", {"scores": [1.0]})
    ours.close()
    # diskcache's own JSONDisk would have run it: the threat is real, not hypothetical.
    import zlib

    from diskcache import JSONDisk

    shutil.rmtree(tmp_path / "c")
    planted = FanoutCache(str(tmp_path / "c"), shards=8)
    planted.set(zlib.compress(json.dumps("k").encode(), 1), RunsCode(marker))  # JSONDisk's form of key "k"
    planted.close()
    naive = FanoutCache(str(tmp_path / "c"), shards=8, disk=JSONDisk)
    with pytest.raises(TypeError):  # it unpickles first (running the code), then fails to decompress
        naive.get("k")
    naive.close()
    assert marker.exists()


@pytest.fixture
def env(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cache")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url + "/v1")
    monkeypatch.setenv("STEPDPO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def label(capsys, inp: Path, out: Path, *extra: str) -> tuple[int, str]:
    rc = main(["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o", str(out), "--progress", "none",
               "--backoff", "0.01", *extra])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_label_with_a_planted_entry_asks_the_judge_and_runs_nothing(env, fake, capsys):
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import create_judge

    rows = gsm8k_rows(GSM8K, 6)
    inp = write_responses(rows, env / "in.parquet")
    judge = create_judge("openai:gpt-4o-mini", JudgeConfig())
    key = cache_key(judge.fingerprint(), rows[0]["prompt"], rows[0]["steps"], judge.cache_inputs(None))
    marker = env / "pwned"
    planted = FanoutCache(str(env / "cache"), shards=8)
    planted.set(key, RunsCode(marker))
    planted.close()

    rc, log = label(capsys, inp, env / "run")
    assert rc == 0 and not marker.exists()
    assert fake.total_requests == 6  # the planted row was a miss, asked anew
    assert log.count("is not a stepdpo answer (stored in pickle mode, not as JSON text)") == 1
    out = read_table(env / "run", STEP_SCORES).to_pylist()
    assert all(r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]] for r in out)
    fake.reset_counts()  # the fresh answer replaced the planted entry: a new folder costs nothing
    rc, log = label(capsys, inp, env / "run2")
    assert rc == 0 and fake.total_requests == 0 and "warning" not in log


def test_cache_that_fills_up_mid_run_warns_once_and_loses_nothing(env, fake, capsys):
    rows = gsm8k_rows(GSM8K, 60)
    inp = write_responses(rows, env / "in.parquet")
    # SQLite's max_page_count, kept in the cache's settings: the shards fill up after a few entries.
    FanoutCache(str(env / "cache"), shards=8, sqlite_max_page_count=8).close()
    rc, log = label(capsys, inp, env / "run", "--concurrency", "8")
    assert rc == 0, log
    assert log.count("cannot store answers (database or disk is full)") == 1 and "Traceback" not in log
    out = read_table(env / "run", STEP_SCORES).to_pylist()
    assert len(out) == 60 and all(r["status"] == "ok" and r["scores"] == [score_of(s) for s in r["steps"]]
                                  for r in out)
    stored = len(JudgeCache(env / "cache"))
    assert 0 < stored < 60  # some fitted, the rest did not: the shards hold all 60 anyway
    fake.reset_counts()
    rc, _ = label(capsys, inp, env / "run2", "--concurrency", "8")
    assert rc == 0 and fake.total_requests == 60 - stored


def test_corrupt_cache_is_one_line(env, fake, capsys):
    rows = gsm8k_rows(GSM8K, 2)
    inp = write_responses(rows, env / "in.parquet")
    JudgeCache(env / "cache").close()
    db = env / "cache" / "000" / "cache.db"
    db.write_bytes(b"this is not a SQLite database" * 100)
    for p in db.parent.glob("cache.db-*"):
        p.unlink()
    rc, log = label(capsys, inp, env / "run")
    assert rc == 2 and fake.total_requests == 0
    assert log.strip().splitlines() == [log.strip()]
    assert (f"stepdpo label: error: judge cache {env / 'cache'} cannot be opened (file is not a database): "
            "corrupt, or the disk full?") in log
    assert "--cache-dir DIR" in log and "--no-cache" in log
    rc, _ = label(capsys, inp, env / "run", "--no-cache")
    assert rc == 0


def _read_only_label(cache: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``stepdpo label`` with ``cache`` read-only for it: a read-only bind mount in a private
    mount namespace where we can (root ignores file modes), else file modes."""
    cmd = [sys.executable, "-m", "stepdpo.cli", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if os.geteuid() != 0:
        os.chmod(cache, 0o555)
        for sub in cache.rglob("*"):
            os.chmod(sub, 0o555 if sub.is_dir() else 0o444)
        return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only for us")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, str(cache), *cmd], env=env,
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_read_only_cache_is_one_line(env, fake, capsys):
    rows = gsm8k_rows(GSM8K, 2)
    inp = write_responses(rows, env / "in.parquet")
    JudgeCache(env / "cache").close()
    proc = _read_only_label(env / "cache", ["label", str(inp), "--judge", "openai:gpt-4o-mini", "-o",
                                            str(env / "run"), "--progress", "none"])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"stepdpo label: error: judge cache {env / 'cache'} is read-only for this user; move it away, "
                     "choose another with --cache-dir DIR (or $STEPDPO_CACHE_DIR), or run with --no-cache"]
    assert fake.total_requests == 0


def test_a_file_given_as_the_cache_folder_is_named_as_such(env, fake, capsys):
    """Not 'corrupt, or the disk full?': the fix is another path. Both caches, nothing written."""
    from tests.fakes.policy_server import FakePolicyServer, write_problems

    inp = write_responses(gsm8k_rows(GSM8K, 2), env / "in.parquet")
    (env / "afile").write_text("notes")
    rc, log = label(capsys, inp, env / "run", "--cache-dir", str(env / "afile"))
    assert rc == 2 and fake.total_requests == 0 and not (env / "run").exists()
    assert log.strip() == (f"stepdpo label: error: judge cache {env / 'afile'} is a file, not a folder; move it "
                           "away, choose another with --cache-dir DIR (or $STEPDPO_CACHE_DIR), or run with --no-cache")
    with FakePolicyServer() as srv:
        rc = main(["generate", str(write_problems(env / "p.jsonl", [(1, 2)])), "--generator",
                   f"openai-compatible:p@{srv.url}/v1", "-o", str(env / "gen"), "--cache-dir", str(env / "afile")])
        assert rc == 2 and srv.requests == 0 and not (env / "gen").exists()
    assert capsys.readouterr().err.strip() == (f"stepdpo generate: error: generation cache {env / 'afile'}: it is a "
                                               "file, not a folder; choose another with --cache-dir DIR or run "
                                               "with --no-cache")
