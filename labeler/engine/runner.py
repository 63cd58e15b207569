"""The labeling engine: every response of the input scored once, cheaply, and resumably.

One asyncio loop runs ``concurrency`` workers. Each takes the next batch of responses
(``judge.batch_size`` of them; 1 for API judges, where all steps of a response go in ONE
request), waits for the rate limiter, calls the judge, retries what is retryable
(:mod:`labeler.engine.retry`), and turns each answer into a ``step_scores`` row. Answers are stored
in the judge cache (:mod:`labeler.engine.cache`) in one transaction per ``cache_batch`` answers, or
once the oldest is ``cache_flush_s`` old (checked as answers arrive and at every run.json
checkpoint, so a stall does not hold them), and always before the shard holding their rows; rows are
written in shards of ``shard_size`` (:mod:`labeler.engine.rundir`). A run killed at any point
loses at most the rows of its unwritten shard: those whose answers were stored come back from
the cache for free on the rerun, the last few (under one batch) are asked again. No row is ever
written twice or lost.

Reusing the pieces (the provider-batch mode does; the row helpers live in
:mod:`labeler.engine.rows` and are re-exported here):

* input:   ``load_rows(path, limit, num_shards, shard_index)`` → response dicts;
           ``Item.from_row(row)`` → what a judge is given
* plan:    ``Engine.plan(rows)`` repairs the folder, skips done rows and answers cached ones;
           ``Engine.flush()`` writes the rows made so far as a shard
* resume:  ``RunDir(out).done_ids()``; ``RunDir.write_shard(rows)``; ``RunDir.compact()``;
           ``RunDir.record_run(run_header(judge, price, info), this_run)``: the one writer of
           ``run.json`` (counts recomputed from the shards)
* cache:   ``JudgeCache(dir)``, ``cache_key(judge.fingerprint(), prompt, steps)``, ``get``/``put``
* rows:    ``build_row(row, judge, verdict=..., attempts=..., cost=..., latency=...)`` for an
           answer, ``build_row(row, judge, error="...", attempts=...)`` for a failure;
           ``verdict_cost(verdict, price)`` with ``price_of(judge, load_prices())``
* judges:  API judges expose ``request_body(item)`` and ``parse_body(item, body, headers)``;
           ``verdict.checked(item)`` holds an answer to one score per step.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from labeler.engine.budget import Budget, BudgetReached, folder_spend
from labeler.engine.cache import JudgeCache, cache_key
from labeler.engine.pricing import Price
from labeler.engine.progress import Progress, Stats, error_reason
from labeler.engine.ratelimit import RateLimiter
from labeler.engine.retry import RetryPolicy, call_with_retries
from labeler.engine.rows import (
    FREE,
    build_row,
    estimate,
    load_rows,
    price_of,
    run_header,
    verdict_cost,
)
from labeler.engine.rundir import RUN_SCHEMA, RunDir
from labeler.engine.stopping import DownProbe, Interrupted, SignalDrain, Stop, Stopped, ride_out_s
from labeler.errors import FatalError, RetryableError
from labeler.judges.base import Item, Judge, Verdict
from schemas.errors import UserError

# The row helpers live in labeler.engine.rows; they stay importable from here.
__all__ = ["FREE", "RUN_SCHEMA", "Engine", "EngineConfig", "build_row", "estimate", "load_rows", "price_of",
           "run_header", "verdict_cost"]


@dataclass
class EngineConfig:
    concurrency: int = 32
    rpm: float | None = None
    tpm: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shard_size: int = 1000
    progress: str = "auto"
    log_interval: float = 10.0
    #: Stop when the first N requests all fail like a down server, or, mid-run, N requests fail
    #: that way with no answer in between for longer than a request's retries wait (0: never).
    stop_after_failures: int = 8
    #: Seconds between run.json checkpoints of this run's requests and spend.
    checkpoint_s: float = 5.0
    max_cost: float | None = None  # USD cap on the run folder's spend (labeler.engine.budget)
    #: Answers stored in the judge cache per transaction; they are also stored before every
    #: shard, once ``cache_flush_s`` old and at every checkpoint, so a kill -9 re-asks at most
    #: these few.
    cache_batch: int = 64
    cache_flush_s: float = 1.0


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- the engine ----------------------------------------------------------------------------------

class Engine:
    """``await Engine(judge, run_dir, config, cache, prices).run(rows, manifest)``.

    A fault in one row (an odd answer, a judge bug) is that row's error; a fault of the run (a
    refused key, a full output disk, a dead server, a signal) stops new requests but lets those
    in flight finish, so every answer received reaches the cache and the shards
    (:mod:`labeler.engine.stopping`). ``run.json`` records this run's requests and spend as it
    goes (every shard, every ``checkpoint_s`` seconds), so a run killed with -9 still shows what
    it spent."""

    def __init__(self, judge: Judge, run_dir: RunDir, config: EngineConfig,
                 cache: JudgeCache | None = None, prices: dict[str, Price] | None = None) -> None:
        self.judge = judge
        self.run_dir = run_dir
        self.config = config
        self.cache = cache
        self.price = price_of(judge, prices or {})
        self.fingerprint = judge.fingerprint()
        self.stats = Stats()
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.stop = Stop()
        self.probe = self._down_probe()
        self._buffer: list[dict[str, Any]] = []
        self._unstored: list[tuple[str, Verdict]] = []  # answers not yet in the judge cache
        self._unstored_since = 0.0
        self._write_error: str | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._run_task: asyncio.Task[Any] | None = None
        self._warned: set[str] = set()
        self._header: dict[str, Any] | None = None
        self._started_at = ""
        self.budget: Budget | None = None
        self.shards_written: list[str] = []
        judge.use_concurrency(config.concurrency)

    def _down_probe(self) -> DownProbe:
        retry = self.config.retry
        return DownProbe(self.config.stop_after_failures, ride_out_s(retry.initial, retry.max_wait, retry.max_attempts),
                         kept=f"the rows labeled before it are kept in {self.run_dir.path}")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            print(f"label: warning: {message}", file=sys.stderr, flush=True)

    # rows ---------------------------------------------------------------------------------
    def _emit(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        s = self.stats
        s.done += 1
        if row["status"] == "ok":
            s.ok += 1
        else:
            s.error += 1
            s.reasons[error_reason(row["error"])] += 1
        if len(self._buffer) >= self.config.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the rows made so far (labeled or answered from the cache) as one shard.

        A failed write (disk full) keeps them buffered and stops the run: their answers are in
        the cache, so a rerun gets them for free."""
        self.store_answers()  # cached first: a kill before the shard lands costs nothing on the rerun
        if not self._buffer or self._write_error is not None:
            return
        try:
            path = self.run_dir.write_shard(self._buffer)
        except Exception as exc:  # noqa: BLE001 - ENOSPC, EFBIG, EROFS, a bad value: all stop the run
            self._write_error = f"cannot write a shard in {self.run_dir.path} ({_error_text(exc)})"
            self.stop.stop(self._write_error)
            return
        self._buffer = []
        if path is not None:
            self.shards_written.append(path.name)
            self._checkpoint()

    def store_answers(self) -> None:
        """Store the answers received since the last store in the judge cache, in one
        transaction (:meth:`JudgeCache.put_many`)."""
        if self._unstored and self.cache is not None:
            answers, self._unstored = self._unstored, []
            self.cache.put_many(answers)

    # one batch ----------------------------------------------------------------------------
    def _observe(self, exc: RetryableError | None, started: float) -> None:
        """Feed one request outcome to the dead-server probe."""
        stop = self.probe.record(exc.down if exc is not None else None, started,
                                 "" if exc is None else str(exc)[:120])
        if stop:
            self.stop.stop(stop)

    async def _label(self, batch: list[dict[str, Any]]) -> None:
        """Judge ``batch`` and record a row per response (none if the run stopped before it was
        answered: the next run labels those)."""
        items = [Item.from_row(r) for r in batch]
        estimate = sum(sum(self.judge.estimate_tokens(i)) for i in items)
        stats, limiter, stop = self.stats, self.limiter, self.stop
        start = time.monotonic()

        def before() -> None:
            stop.check()  # no request once the run is stopping, even after waiting for the limiter
            stats.requests += 1

        async def call() -> list[Verdict]:
            sent = time.monotonic()
            try:
                verdicts = await self.judge.judge(items)
            except RetryableError as exc:
                self._observe(exc, sent)
                usage = exc.usage
                if usage:  # a malformed answer still cost its tokens: count them as spent
                    stats.input_tokens += usage["input_tokens"]
                    stats.output_tokens += usage["output_tokens"]
                    stats.cached_tokens += usage["cached_tokens"]
                    stats.cost_usd += verdict_cost(Verdict(scores=[], **usage), self.price) or 0.0
                raise
            except FatalError as exc:
                self._observe(None, sent)
                if exc.abort:  # every later request would fail the same way
                    stop.stop(_error_text(exc))
                raise
            self._observe(None, sent)
            return verdicts

        async def attempt() -> list[Verdict]:
            stop.check()  # no request, and no retry, once the run is stopping
            # A retry-after pause is held to --max-backoff, like the retry's own wait.
            return list(await limiter.send(estimate, call, max_pause=self.config.retry.max_wait, before=before))

        def on_retry(exc: BaseException, sleep: float) -> None:
            stats.retries += 1

        try:
            verdicts, attempts = await call_with_retries(self._within_budget(attempt, items), self.config.retry, on_retry,
                                                         sleep=stop.sleep)
            if len(verdicts) != len(batch):
                raise RuntimeError(f"judge {self.judge.name} returned {len(verdicts)} verdicts for {len(batch)} items")
        except Stopped:
            return  # not answered: the next run labels these rows
        except BudgetReached:
            return  # not sent, not written: the rows stay to do for a rerun with a higher cap
        except (RetryableError, FatalError) as exc:
            attempts = getattr(exc, "attempts", 1)
            kind = "gave up after retries" if isinstance(exc, RetryableError) else "not retryable"
            for row in batch:
                self.record_error(row, f"{kind}: {_error_text(exc)}", attempts=attempts,
                                  latency=time.monotonic() - start)
            return
        except Exception as exc:  # noqa: BLE001 - a judge bug fails its rows, never the run
            self._internal_error(batch, exc)
            return
        latency = (time.monotonic() - start) / len(batch)
        for row, item, v in zip(batch, items, verdicts, strict=True):
            try:
                self.record(row, item, v, attempts=attempts, latency=latency)
            except Exception as exc:  # noqa: BLE001
                self._internal_error([row], exc)

    def _internal_error(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        self._warn_once("internal", f"judge {self.judge.name} raised {_error_text(exc)[:200]}; its rows are "
                                    "written as errors and the run goes on")
        for row in rows:
            self.record_error(row, f"internal error: {_error_text(exc)}")

    def record(self, row: dict[str, Any], item: Item, v: Verdict, *, attempts: int = 1,
               latency: float | None = None) -> None:
        """Account for one answer (tokens, cost), cache it when it is good, and queue its row.

        Every way of running the judge (the local worker pool, Ray) ends here, so the checks,
        the cache and the row format are the same whichever ran it. A cache store that fails
        (disk full) warns inside :class:`JudgeCache`; the row still counts."""
        stats = self.stats
        cost = verdict_cost(v, self.price)
        stats.input_tokens += v.input_tokens
        stats.output_tokens += v.output_tokens
        stats.cached_tokens += v.cached_tokens
        stats.cost_usd += cost or 0.0
        v.checked(item)
        if v.error is None and self.cache is not None:
            now = time.monotonic()
            if not self._unstored:
                self._unstored_since = now
            self._unstored.append((cache_key(self.fingerprint, item.prompt, item.steps,
                                             self.judge.cache_inputs(item)), v))
            if len(self._unstored) >= self.config.cache_batch or now - self._unstored_since >= self.config.cache_flush_s:
                self.store_answers()
        self._emit(build_row(row, self.judge, verdict=v, attempts=attempts, cost=cost, latency=latency,
                             fingerprint=self.fingerprint))

    def record_error(self, row: dict[str, Any], error: str, *, attempts: int = 1,
                     latency: float | None = None) -> None:
        """Queue a row that failed: it is written with status=error and retried by a rerun."""
        self._emit(build_row(row, self.judge, error=error, attempts=attempts, latency=latency,
                             fingerprint=self.fingerprint))

    def _within_budget(self, attempt: Callable[[], Awaitable[list[Verdict]]],
                       items: list[Item]) -> Callable[[], Awaitable[list[Verdict]]]:
        """``attempt`` holding its share of ``--max-cost`` while in flight (every retry too)."""
        budget = self.budget
        if budget is None:
            return attempt

        async def guarded() -> list[Verdict]:
            tokens = [self.judge.estimate_tokens(i) for i in items]
            hold = budget.reserve(sum(t[0] for t in tokens), sum(t[1] for t in tokens), self.stats.cost_usd)
            try:
                verdicts = await attempt()
            finally:
                budget.release(hold)
            budget.release(0.0, sum(verdict_cost(v, self.price) or 0.0 for v in verdicts))
            return verdicts

        return guarded

    async def _worker(self, batches: Iterator[list[dict[str, Any]]]) -> None:
        for batch in batches:
            if self.stop.stopping:
                return
            await self._label(batch)
            await asyncio.sleep(0)  # a CPU-bound judge never awaits: let progress and signals run

    async def label_rows(self, todo: list[dict[str, Any]]) -> None:
        """Label ``todo`` (rows neither done nor cached) with ``concurrency`` async workers.

        A subclass may run the judge elsewhere (:mod:`labeler.engine.ray_engine` does) and
        report each answer through :meth:`record` / :meth:`record_error`; it should start no new
        work once ``self.stop.stopping``."""
        size = max(1, self.judge.batch_size)
        batches = iter([todo[i:i + size] for i in range(0, len(todo), size)])
        self._workers = [asyncio.create_task(self._worker(batches))
                         for _ in range(max(1, min(self.config.concurrency, len(todo))))]
        try:
            await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            for w in self._workers:
                w.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)

    # the run ------------------------------------------------------------------------------
    def plan(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Repair the folder, then return the rows still to label (answering cached ones)."""
        self.run_dir.remove_temp_files()
        self.run_dir.check_judge(self.judge.name, self.fingerprint)
        self.run_dir.compact()
        done = self.run_dir.done_ids()
        todo = [r for r in rows if r["response_id"] not in done]
        self.stats.skipped = len(rows) - len(todo)
        self.stats.total = len(todo)
        if self.cache is None:
            return todo
        misses = []
        for row in todo:
            item = Item.from_row(row)
            hit = self.cache.get(cache_key(self.fingerprint, item.prompt, item.steps, self.judge.cache_inputs(item)))
            if hit is not None and hit.mismatch(item) is None:
                self.stats.cache_hits += 1
                self._emit(build_row(row, self.judge, verdict=hit, attempts=0,
                                     cost=verdict_cost(hit, self.price), latency=0.0, fingerprint=self.fingerprint))
            else:
                misses.append(row)
        return misses

    def _this_run(self, state: str) -> dict[str, Any]:
        return {"started_at": self._started_at, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "state": state, "shards_written": list(self.shards_written), **self.stats.as_dict(),
                # The limits in force at the end: --rpm/--tpm, tightened from rate-limit headers.
                "limits": {"rpm": self.limiter.rpm, "tpm": self.limiter.tpm,
                           "waited_s": round(self.limiter.waited_s, 3)},
                **({"stopped": self.stop.reason} if self.stop.reason else {})}

    def _checkpoint(self) -> None:
        """run.json with this run as ``running``: what it spent so far survives a kill -9 (the
        next run marks it ``killed``). The totals are not recounted until the run ends."""
        if self._header is None:
            return
        try:
            self.run_dir.record_run(self._header, self._this_run("running"), recount=False)
        except OSError:
            pass  # a full disk: the shard writes say so

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_s)
            self.store_answers()  # answers held by a stall (no new answer to trigger the store)
            self._checkpoint()

    def _in_flight(self) -> list[asyncio.Task[Any]]:
        """What a second signal cancels: the workers, or the whole run when a subclass has none."""
        busy = [t for t in self._workers if not t.done()]
        return busy or [t for t in (self._run_task,) if t is not None]

    async def run(self, rows: Sequence[dict[str, Any]], manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """Label ``rows`` into the run folder; returns the manifest it wrote.

        Raises :class:`~labeler.engine.stopping.Interrupted` after a signal and UserError after a
        fatal fault, both once everything received is written."""
        self._started_at = dt.datetime.now(dt.timezone.utc).isoformat()
        # Before anything is written: a refused run must not stamp its judge on the folder.
        self.run_dir.check_judge(self.judge.name, self.fingerprint)
        previous = self.run_dir.read_manifest()  # a corrupt run.json is refused before any work, not after
        self._header = run_header(self.judge, self.price, manifest)
        if self.config.max_cost is not None:
            self.budget = Budget(self.config.max_cost, self.price, folder_spend(previous),
                                 model=self.judge.price_model)
        state = "interrupted"
        self.stats = Stats(cost_known=self.price is not None)
        self.stop = Stop()
        self.probe = self._down_probe()
        self._run_task = asyncio.current_task()
        try:
            todo = self.plan(rows)
            self._checkpoint()
            async with Progress(self.stats, self.config.progress, self.config.log_interval):
                with SignalDrain(self.stop, self._in_flight):
                    ticker = asyncio.create_task(self._checkpoints())
                    try:
                        await self.label_rows(todo)
                    except asyncio.CancelledError:
                        if not self.stop.signame or self._run_task is None:
                            raise  # cancelled from outside: not ours to swallow
                        self._run_task.uncancel()  # our own second signal: write what we have
                    finally:
                        ticker.cancel()
                        await asyncio.gather(ticker, return_exceptions=True)
            state = "interrupted" if self.stop.signame else "aborted" if self.stop.fatal else \
                "budget" if self.budget is not None and self.budget.reason else "finished"
        finally:
            self.flush()
            if self.budget is not None and self.budget.reason:  # why this run stopped early
                self._header = {**(self._header or {}), "stop_reason": self.budget.reason,
                                "max_cost_usd": self.budget.cap}
            out = self._finish(state)
        if self.stop.signame:
            raise Interrupted(self.stop.signame)
        if self.stop.fatal:
            raise UserError(f"stopped: {self._stop_text()}")
        return out

    def _finish(self, state: str) -> dict[str, Any]:
        """Compact and write the final manifest; on a full disk say so, never raise a traceback."""
        assert self._header is not None
        try:
            self.run_dir.compact()
        except OSError as exc:
            self.stop.stop(f"cannot rewrite the shards of {self.run_dir.path} ({_error_text(exc)})")
        try:
            return self.run_dir.record_run(self._header, self._this_run(state))
        except OSError as exc:
            self.stop.stop(f"cannot write {self.run_dir.manifest_path} ({_error_text(exc)})")
            return {**self._header, "state": state, "runs": [self._this_run(state)]}

    def _stop_text(self) -> str:
        text = self.stop.reason or ""
        if self._write_error is not None and self._buffer:
            where = "are in the judge cache: free space, then rerun the same command (they cost nothing)" \
                if self.cache is not None else "are lost (--no-cache): free space, then rerun the same command"
            text += f"; the {len(self._buffer)} answers received since the last shard {where}"
        return text
