"""stepdpo.startup: the cyclic GC is paused for the start-up of the program only, then frozen and
back on; never left off for a command's run, on any path out; in-process callers untouched."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from stepdpo import startup
from stepdpo.cli import STARTUP_IN_RUN, main

REPO = Path(__file__).resolve().parent.parent


def test_the_program_pauses_the_gc_for_its_start_up_only(tmp_path):
    """Run as the program (``main()`` reads sys.argv): a command outside STARTUP_IN_RUN starts its
    run() with the GC on; label turns it back on itself before any work, and every way out (an
    error before or after that point) leaves it on."""
    assert {"label", "generate"} <= STARTUP_IN_RUN and "inspect" not in STARTUP_IN_RUN
    missing = tmp_path / "missing.parquet"
    code = f"""
import gc, json, sys
import stepdpo.commands.inspect as inspect_cmd
from stepdpo import startup
from stepdpo.cli import main
seen = {{}}
def run(args):  # what inspect's run() finds when it starts
    seen["inspect"] = [gc.isenabled(), startup.paused()]
    return 0
inspect_cmd.run = run
out = {{}}
def program(*argv):
    sys.argv = ["stepdpo", *argv]
    return [main(), gc.isenabled(), startup.paused()]
out["inspect"] = program("inspect", "anything")
frozen_after_first = gc.get_freeze_count()
# label: refused before its start-up ends (bad option), and after it (missing input)
out["label_bad_option"] = program("label", {str(missing)!r}, "--judge", "gsm8k-calc", "-o", "x", "--concurrency", "0")
out["label_missing_input"] = program("label", {str(missing)!r}, "--judge", "gsm8k-calc", "-o", "x")
out["unknown_command"] = program("no-such-command")
print(json.dumps({{"out": out, "seen": seen, "frozen": frozen_after_first}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["seen"]["inspect"] == [True, False]  # the run starts with the GC on
    assert result["frozen"] > 10_000  # the start-up's objects went to the permanent generation
    assert result["out"] == {"inspect": [0, True, False], "label_bad_option": [2, True, False],
                             "label_missing_input": [2, True, False], "unknown_command": [2, True, False]}
    assert "--concurrency must be at least 1" in done.stderr and "missing.parquet" in done.stderr


def test_in_process_callers_are_left_alone(tmp_path):
    """``main([...])`` (tests, notebooks) neither pauses nor freezes: freezing the caller's objects
    would keep whatever of them later becomes cyclic garbage for the life of its process."""
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    rc = main(["label", str(tmp_path / "missing.parquet"), "--judge", "gsm8k-calc", "-o", str(tmp_path / "r")])
    assert rc == 2
    assert gc.isenabled() and gc.get_freeze_count() == frozen and not startup.paused()


def test_a_gc_switched_off_by_the_caller_stays_off():
    """pause/resume only undo their own pause: a process that runs without the GC keeps it off."""
    gc.disable()
    try:
        frozen = gc.get_freeze_count()
        startup.pause_gc()
        assert not startup.paused()
        startup.resume_gc()
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()
    startup.pause_gc()
    assert startup.paused() and not gc.isenabled()
    startup.resume_gc()
    startup.resume_gc()  # twice: harmless
    assert gc.isenabled() and not startup.paused()
    gc.unfreeze()  # this test process's objects: back to the ordinary generations


def test_generate_as_the_program_stays_light(tmp_path, fake, gsm8k_sample):
    """`stepdpo generate` with an API backend, run as the program over HTTP to the loopback fake:
    the GC is back on (start-up frozen) at its first request, neither pyarrow.compute, tenacity
    nor pandas before it, and no pandas in the whole run (its shards and its resume read, too)."""
    out = tmp_path / "gen"
    code = f"""
import gc, json, sys
first = []
def hook(event, args):
    if event == "socket.connect" and not first:
        first.append([gc.isenabled(), gc.get_freeze_count(), sorted(sys.modules)])
sys.addaudithook(hook)
from stepdpo.cli import main
sys.argv = ["stepdpo", "generate", {str(gsm8k_sample)!r}, "--generator", "openai:gpt-4o-mini", "--template", "chat",
            "-o", {str(out)!r}, "--limit", "5", "-n", "2", "--progress", "none"]
rc = main()
print(json.dumps({{"rc": rc, "first": first[0] if first else None, "end": sorted(sys.modules)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "STEPDPO_CACHE_DIR": str(tmp_path / "cache"),
           "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.url + "/v1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["rc"] == 0 and fake.total_requests == 10  # 5 problems x 2 samples, really drawn over HTTP
    enabled, frozen, at_first = result["first"]
    assert enabled and frozen > 100_000
    assert [m for m in at_first if m in ("pyarrow.compute", "tenacity", "pandas")] == []
    assert "pandas" not in result["end"]
