"""How a labeling run stops early without losing a paid answer.

Three things end a run before its last row, and all three go through one :class:`Stop`:

* a fatal fault (the API key is refused, the output disk is full, the server looks down):
  no new request starts and no retry is tried, but requests already sent finish, so their
  answers (paid for) reach the cache and the shards before the run ends;
* SIGINT / SIGTERM: the same drain, announced on stderr; a second signal cancels what is still
  in flight at once (those answers were not received, so nothing paid is dropped);
* the dead-server probe (:class:`DownProbe`): when the first N requests of a run ALL fail the
  way a down or unreachable server fails (connection refused or reset, no answer within the
  deadline, HTTP 5xx), or when, after answers, a server stops answering for longer than a
  request's retries ride out, the run stops with one line instead of waiting out
  ``timeout × attempts`` for every row (hours at the defaults).

The labeling engine (:mod:`labeler.engine.runner`) and the generation engine
(:mod:`labeler.sources.generation.runner`) share these pieces.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any


class Interrupted(Exception):
    """The run was stopped by a signal after writing what it had received (exit 130)."""

    def __init__(self, signame: str) -> None:
        super().__init__(f"interrupted by {signame}")
        self.signame = signame


class Stopped(Exception):
    """Raised instead of starting a request (or a retry) once the run is stopping."""


class Stop:
    """The stop flag of one run: why it stops, whether it is fatal, and an interruptible sleep."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.fatal = False
        self.signame: str | None = None
        self.event = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def stop(self, reason: str, *, fatal: bool = True) -> None:
        """The first reason wins; later ones (the same fault seen by other workers) are ignored."""
        if self.reason is None:
            self.reason, self.fatal = reason, fatal
            self.event.set()

    def check(self) -> None:
        if self.reason is not None:
            raise Stopped(self.reason)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` that ends early when the run stops (a retry backoff of a minute
        must not hold a stopping run)."""
        if self.reason is None and seconds > 0:
            try:
                await asyncio.wait_for(self.event.wait(), seconds)
            except TimeoutError:
                pass


class SignalDrain:
    """``with SignalDrain(stop, tasks_fn):`` — SIGINT/SIGTERM drain the run, a second one cancels.

    Handlers are installed on the running loop (main thread only); elsewhere this does nothing
    and Python's default Ctrl-C behaviour applies."""

    def __init__(self, stop: Stop, in_flight: Callable[[], list[asyncio.Task[Any]]],
                 say: Callable[[str], None] | None = None) -> None:
        self.stop, self.in_flight = stop, in_flight
        self.say = say or (lambda m: print(m, file=sys.stderr, flush=True))
        self.installed: list[signal.Signals] = []
        self.count = 0

    def _on_signal(self, sig: signal.Signals) -> None:
        self.count += 1
        if self.count == 1:
            self.stop.signame = sig.name
            self.stop.stop(f"interrupted by {sig.name}", fatal=False)
            busy = sum(not t.done() for t in self.in_flight())
            self.say(f"label: {sig.name}: no new requests; waiting for the {busy} in flight so that "
                     "their answers are kept (send it again to stop at once)")
        else:
            self.say(f"label: {sig.name} again: stopping now")
            for task in self.in_flight():
                task.cancel()

    def __enter__(self) -> SignalDrain:
        try:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
                self.installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.installed:  # SIGINT goes back to raising KeyboardInterrupt
            loop.remove_signal_handler(sig)


class DownProbe:
    """Watches request outcomes for a server that is down: at the start of a run, or mid-run.

    ``record(kind, started)`` with the failure kind of a down-looking error (``"timeout"``,
    ``"connection error"``, ``"HTTP 503"``…) or None for anything else (an answer, a 429, a
    malformed answer, a 400: the server is up), and the monotonic time the request started.
    Returns the stop message once the check fires (then never again); ``n = 0`` turns it off.

    Both checks count a *streak*: down failures with no other outcome in between, and within it
    only the failures of requests that STARTED AFTER the streak's first failure was seen (a wave
    already in flight when the server went away fails at once, and the first wave of a run can
    time out on a starved client while the server is fine):

    * at the start (no answer yet): ``n`` such failures stop the run (a wrong URL, a server
      that is not up: nothing was going to work);
    * mid-run (after an answer): ``n`` such failures AND the streak lasting at least
      ``window_s`` seconds (:func:`ride_out_s`: as long as the retry waits of one request, so
      a 503 burst that the retries ride out never stops a long run; a server that stays away
      longer would have failed those rows anyway). The run stops instead of spending every
      remaining row's attempts on a dead server.
    """

    def __init__(self, n: int, window_s: float = 0.0, kept: str = "the rows answered before it are kept",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.n, self.window_s, self.kept, self.clock = n, window_s, kept, clock
        self.armed = n > 0
        self.answered = 0  # outcomes that showed the server up
        self.last_answer: float | None = None
        self._reset()

    def _reset(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.first_failure: float | None = None
        self.late = 0
        self.example = ""

    def record(self, kind: str | None, started: float, text: str = "") -> str | None:
        if not self.armed:
            return None
        now = self.clock()
        if kind is None:
            self.answered += 1
            self.last_answer = now
            self._reset()
            return None
        self.kinds[kind] += 1
        self.example = self.example or text
        if self.first_failure is None:
            self.first_failure = now
        elif started >= self.first_failure:
            self.late += 1
        if self.late < self.n:
            return None
        if self.answered and now - self.first_failure < self.window_s:
            return None  # a blip the retries may still ride out
        self.armed = False
        return self.message(now)

    def message(self, now: float) -> str:
        seen = sum(self.kinds.values())
        how = ", ".join(f"{c} × {k}" for k, c in self.kinds.most_common())
        check = (f"check that it is up and reachable (the base URL, the network{proxy_hint()}), then rerun the "
                 "same command")
        if not self.answered:
            return (f"the server looks down: the first {seen} requests all failed ({how}; e.g. {self.example}); "
                    f"{check} (--stop-after-failures 0 turns this check off)")
        since = now - (self.last_answer if self.last_answer is not None else now)
        return (f"the server stopped answering mid-run: {seen} requests failed in the {since:.0f} s since its last "
                f"answer, none answered ({how}; e.g. {self.example}); {self.kept}; {check} to do the rest "
                "(--stop-after-failures 0 turns this check off)")


def ride_out_s(initial: float, max_wait: float, max_attempts: int) -> float:
    """Seconds of retry waits one request rides out before it gives up: the backoff of each retry
    without its jitter (``initial`` doubling, each held to ``max_wait``), summed over
    ``max_attempts``. 31 s at the defaults (1 s, 60 s, 6 attempts); 0 with one attempt."""
    return sum(min(max_wait, initial * 2 ** a) for a in range(max(0, max_attempts - 1)))


#: The variables httpx (both transports) reads a proxy from; NO_PROXY exempts hosts from them.
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def proxy_hint(environ: Any = None) -> str:
    """``", the proxy in HTTP_PROXY; NO_PROXY=HOST bypasses it"`` when a proxy variable is set:
    the requests may have gone to the proxy, not the server, a dead proxy fails like a dead server,
    and on the httpx transport its error does not say "proxy". Names the variables, never their
    values (a proxy URL may carry a password); ``""`` when none is set."""
    environ = os.environ if environ is None else environ
    names = [name for name in PROXY_VARS if environ.get(name) or environ.get(name.lower())]
    if not names:
        return ""
    return f", the proxy in {' / '.join(names)}; NO_PROXY=HOST bypasses it"
