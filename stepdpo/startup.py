"""Start-up without the cyclic garbage collector's toll.

Importing an SDK builds hundreds of thousands of long-lived objects (``import anthropic``
alone: ~1,500 pydantic models, ~200,000 tracked objects). While they are created the cyclic
GC runs ~390 young, ~35 middle and 3 full collections, each full one scanning everything
imported so far: 0.21-0.24 s of the ~1.2 s CPU that ``stepdpo label`` with an ``anthropic:``
judge spent before its first request, to find ~2,000 unreachable objects. Left in the ordinary
generations, the same objects are scanned again by the run's first full collection (~0.12 s
mid-run on a 1,319-row job; 0.013 s once they are frozen).

So when stepdpo owns the process (the console script, ``python -m stepdpo``), the dispatcher
calls :func:`pause_gc` before importing the command, and the start-up ends with
:func:`resume_gc`: ``gc.freeze()`` moves everything alive into the permanent generation, which
no later collection scans, and the collector is switched back on for the run. Commands whose
``run()`` imports the heavy half itself (an API judge's SDK) call :func:`resume_gc` once that is
done; for every other command the dispatcher calls it before ``run()``. It is never left off:
the dispatcher calls it again on the way out, whatever happened.

In-process callers (tests, notebooks calling ``stepdpo.cli.main([...])``) are left alone: freezing
their objects would keep whatever of them later becomes cyclic garbage for the life of their
process.
"""

from __future__ import annotations

import gc

_paused = False


def pause_gc() -> None:
    """Switch the cyclic GC off for the start-up (a no-op when it is already off: not ours)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_gc() -> None:
    """End of start-up: freeze what is alive (never scanned again) and switch the GC back on.

    A no-op unless :func:`pause_gc` switched it off, so callers need not know whether the
    process is stepdpo's own; calling it twice is harmless."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def paused() -> bool:
    """Whether the GC is off for start-up right now (tests and benchmarks check it)."""
    return _paused
