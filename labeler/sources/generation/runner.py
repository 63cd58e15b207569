"""The generation engine: every (problem, prefix, sample) drawn once, resumably, on the
labeling engine's parts.

Tasks become requests; ``concurrency`` asyncio workers take batches of ``generator.batch_size``
(1 for API backends), wait for the rate limiter (:mod:`labeler.engine.ratelimit`, tightened from
the provider's rate-limit headers), call the backend under the retry policy
(:mod:`labeler.engine.retry`), cache each answer the moment it arrives, turn it into a
``responses`` row and write rows in atomic shards. Tokens and cost (:mod:`labeler.engine.pricing`)
and the live progress line (:mod:`labeler.engine.progress`) are the labeler's. A sample that
fails after its retries is not written; the manifest counts it with its reason, and a rerun
tries it again. A fatal answer (401/403/404) stops the run with one line, after writing what
arrived; so does a server that looks down, at the start or mid-run (the labeler's dead-server
check, :class:`labeler.engine.stopping.DownProbe`): no new request and no retry, the requests in
flight finish and their samples are kept, and a rerun draws the rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from labeler.answers import extract_answer
from labeler.engine.pricing import Price, price_for
from labeler.engine.progress import Progress, Stats
from labeler.engine.ratelimit import RateLimiter
from labeler.engine.retry import RetryPolicy, call_with_retries
from labeler.engine.stopping import DownProbe, Stop, Stopped, ride_out_s
from labeler.sources.generation.base import (
    FatalError,
    Generation,
    Generator,
    GenRequest,
    RetryableError,
    Sampling,
)
from labeler.sources.generation.store import (
    GENERATE_SCHEMA,
    GenerationCache,
    GenerationDir,
    generation_key,
)
from labeler.sources.splitters import SplitError, Splitter
from schemas.errors import UserError
from schemas.ids import response_id, sha256_hex


@dataclass
class GenConfig:
    concurrency: int = 32
    rpm: float | None = None
    tpm: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shard_size: int = 200
    #: Stop when this many samples have failed (after retries) before any succeeded.
    dead_after: int = 16
    #: Stop when the first N requests all fail like a down server, or, mid-run, N requests fail
    #: that way with no answer in between for longer than a request's retries wait (0: never).
    stop_after_failures: int = 8
    progress: str = "auto"
    log_interval: float = 10.0


@dataclass
class Task:
    """One sample to draw and what its row carries."""

    generation_id: str
    request: GenRequest
    problem_id: str
    prompt: str  # the problem text (the row's prompt), not the rendered request
    gold_answer: str | None
    source_meta: dict[str, Any] = field(default_factory=dict)
    prefix_steps: list[str] = field(default_factory=list)
    #: Text of ``request.prefill`` after the prefix steps (the next step's marker).
    marker: str = ""
    continues: str | None = None
    reference_scores: list[float | None] | None = None
    #: Drop "Step i:" markers from new steps (a flawed rewrite of a solution written without them).
    strip_markers: bool = False


def task_id(problem_id: str, prompt: str, sample_index: int, prefix: Sequence[str] = (),
            continues: str | None = None, extra: dict[str, Any] | None = None) -> str:
    return sha256_hex({"problem_id": problem_id, "prompt": prompt, "prefix": list(prefix),
                       "continues": continues, "sample_index": sample_index, **(extra or {})})[:24]


def request_seed(seed: int, generation_id: str) -> int:
    return int(sha256_hex({"seed": seed, "id": generation_id})[:8], 16) & 0x7FFFFFFF


_MARKER = re.compile(r"^\s*Step\s+\d+\s*[:.]\s*", re.I)


def split_new(splitter: Splitter, text: str) -> list[str]:
    """Steps of newly generated text; a text no splitter rule fits is one step."""
    try:
        return splitter.split(text)
    except SplitError:
        return [text.strip()] if text.strip() else []


class GenerationEngine:
    """``await GenerationEngine(...).run(tasks, manifest_info)``."""

    def __init__(self, generator: Generator, out: GenerationDir, config: GenConfig, sampling: Sampling,
                 splitter: Splitter, cache: GenerationCache | None = None,
                 prices: dict[str, Price] | None = None, described: dict[str, Any] | None = None) -> None:
        self.generator = generator
        self.out = out
        self.config = config
        self.sampling = sampling
        self.splitter = splitter
        self.cache = cache
        self.price = Price(0.0, 0.0, 0.0) if generator.price_model is None else \
            price_for(generator.price_model, prices or {})
        self.described = described or {}
        self.stats = Stats(cost_known=self.price is not None)
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.failures: Counter[str] = Counter()
        self.empty = 0
        self._buffer: list[dict[str, Any]] = []
        self.stop = Stop()
        self.probe = self._down_probe()
        self.shards_written: list[str] = []

    def _down_probe(self) -> DownProbe:
        retry = self.config.retry
        return DownProbe(self.config.stop_after_failures, ride_out_s(retry.initial, retry.max_wait, retry.max_attempts),
                         kept=f"the samples drawn before it are kept in {self.out.path}")

    def _observe(self, exc: BaseException | None, started: float) -> None:
        """Feed one request outcome to the dead-server check."""
        kind = getattr(exc, "down", None) if isinstance(exc, RetryableError) else None
        stop = self.probe.record(kind, started, "" if exc is None else str(exc)[:120])
        if stop:
            self.stop.stop(stop)

    # rows ------------------------------------------------------------------------------------
    def row_of(self, task: Task, gen: Generation, extra_meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The ``responses`` row of one sample (None for an empty answer); ``extra_meta`` adds
        to its meta (batch mode records the provider batch id there)."""
        # The step marker the answer starts with ("Step 1: ", or "Step k: " after a prefix): part of
        # the answer when it was prefilled, and added when a chat model was only shown it and did
        # not repeat it.
        tail = task.marker if task.prefix_steps else task.request.prefill
        start = tail if gen.prefilled or (tail.strip() and not gen.text.lstrip().startswith(tail.strip())) else ""
        new_steps = split_new(self.splitter, start + gen.text)
        if task.strip_markers:
            new_steps = [s for s in (_MARKER.sub("", x, count=1).strip() for x in new_steps) if s]
        if not new_steps:
            return None
        steps = list(task.prefix_steps) + new_steps
        meta = {
            **task.source_meta,
            "generation_id": task.generation_id,
            "generator": self.generator.name,
            "generator_fingerprint": self.generator.fingerprint(),
            "template": self.described.get("template"),
            "sampling": self.sampling.as_dict(),
            "sample_index": task.request.sample_index,
            "finish_reason": gen.finish_reason,
            "input_tokens": gen.input_tokens,
            "output_tokens": gen.output_tokens,
        }
        if task.continues is not None:
            meta.update(continues=task.continues, prefix_len=len(task.prefix_steps))
        meta.update(extra_meta or {})
        return {
            "response_id": response_id(task.prompt, steps),
            "problem_id": task.problem_id,
            "source": "generate",
            "prompt": task.prompt,
            "steps": steps,
            "final_answer": extract_answer("\n".join(steps)),
            "gold_answer": task.gold_answer,
            "reference_scores": task.reference_scores if task.reference_scores is None
            else (task.reference_scores + [None] * len(steps))[:len(steps)],
            "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
        }

    def _emit(self, task: Task, gen: Generation) -> None:
        row = self.row_of(task, gen)
        self.stats.done += 1
        if row is None:
            self.empty += 1
            self.stats.error += 1
            return
        self.stats.ok += 1
        self._buffer.append(row)
        if len(self._buffer) >= self.config.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one shard (atomically)."""
        if self._buffer:
            rows, self._buffer = self._buffer, []
            path = self.out.write_shard(rows)
            if path is not None:
                self.shards_written.append(path.name)

    def _count(self, gen: Generation) -> float:
        cost = 0.0 if self.price is None else self.price.cost(gen.input_tokens, gen.cached_tokens, gen.output_tokens)
        s = self.stats
        s.input_tokens += gen.input_tokens
        s.output_tokens += gen.output_tokens
        s.cached_tokens += gen.cached_tokens
        s.cost_usd += cost
        return cost

    # one batch -------------------------------------------------------------------------------
    async def _draw(self, batch: list[Task]) -> None:
        requests = [t.request for t in batch]
        estimate = sum(sum(self.generator.estimate_tokens(r, self.sampling)) for r in requests)
        stats, limiter, stop = self.stats, self.limiter, self.stop

        def count() -> None:
            stop.check()  # no request once the run is stopping, even after waiting for the limiter
            stats.requests += 1

        async def call() -> list[Generation]:
            sent = time.monotonic()
            try:
                gens = await self.generator.generate(requests, self.sampling)
            except (RetryableError, FatalError) as exc:
                self._observe(exc, sent)
                raise
            self._observe(None, sent)
            return gens

        async def attempt() -> list[Generation]:
            stop.check()  # no request, and no retry, once the run is stopping
            return list(await limiter.send(estimate, call, max_pause=self.config.retry.max_wait, before=count))

        def on_retry(exc: BaseException, sleep: float) -> None:
            stats.retries += 1

        try:
            gens, _ = await call_with_retries(attempt, self.config.retry, on_retry, sleep=stop.sleep)
        except Stopped:
            return  # not drawn: the next run draws these samples
        except (RetryableError, FatalError) as exc:
            kind = "gave up after retries" if isinstance(exc, RetryableError) else "not retryable"
            self.failures[f"{kind}: {type(exc).__name__}: {exc}"[:300]] += len(batch)
            stats.done += len(batch)
            stats.error += len(batch)
            if getattr(exc, "abort", False):
                stop.stop(f"{type(exc).__name__}: {exc}")
            elif stats.ok == 0 and sum(self.failures.values()) >= self.config.dead_after:
                # Nothing has worked yet and every sample so far failed after its retries: the
                # backend is misconfigured; stop instead of retrying every sample.
                stop.stop(f"RuntimeError: the first {sum(self.failures.values())} samples all failed; last: "
                          f"{type(exc).__name__}: {exc}"[:400])
            return
        if len(gens) != len(batch):
            raise RuntimeError(f"{self.generator.name} returned {len(gens)} answers for {len(batch)} requests")
        for task, gen in zip(batch, gens, strict=True):
            self.record(task, gen)

    def record(self, task: Task, gen: Generation) -> None:
        """Count one answer's tokens and cost, cache it, and queue its row: every way of running
        the backend (the local worker pool, Ray) ends here."""
        self._count(gen)
        if self.cache is not None:
            self.cache.put(generation_key(self.generator, task.request, self.sampling), gen)
        self._emit(task, gen)

    def record_failure(self, tasks: Sequence[Task], reason: str) -> None:
        """Samples that could not be drawn: counted with their reason, retried by a rerun."""
        self.failures[reason[:300]] += len(tasks)
        self.stats.done += len(tasks)
        self.stats.error += len(tasks)

    async def _worker(self, batches: Iterator[list[Task]]) -> None:
        for batch in batches:
            if self.stop.stopping:
                return
            await self._draw(batch)

    async def draw_tasks(self, todo: list[Task]) -> None:
        """Draw ``todo`` (neither written nor cached) with ``concurrency`` async workers. A
        subclass may draw elsewhere (the Ray engine does) and report through :meth:`record`."""
        size = max(1, self.generator.batch_size)
        batches = iter([todo[i:i + size] for i in range(0, len(todo), size)])
        n_workers = max(1, min(self.config.concurrency, -(-len(todo) // size)))
        self.generator.use_concurrency(n_workers)
        workers = [asyncio.create_task(self._worker(batches)) for _ in range(n_workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    # the run ---------------------------------------------------------------------------------
    def plan(self, tasks: Sequence[Task]) -> list[Task]:
        """Repair the folder, skip samples already written, answer cached ones; the rest."""
        self.out.remove_temp_files()
        done = self.out.done_ids()
        todo = [t for t in tasks if t.generation_id not in done]
        self.stats.skipped = len(tasks) - len(todo)
        self.stats.total = len(todo)
        if self.cache is None:
            return todo
        misses = []
        for task in todo:
            hit = self.cache.get(generation_key(self.generator, task.request, self.sampling))
            if hit is None:
                misses.append(task)
            else:
                self.stats.cache_hits += 1
                self._emit(task, hit)
        return misses

    async def run(self, tasks: Sequence[Task], info: dict[str, Any]) -> dict[str, Any]:
        started_at = dt.datetime.now(dt.timezone.utc).isoformat()
        header = {"schema": GENERATE_SCHEMA, **info}
        # Stamp the folder before the first shard: a run killed mid-way leaves a folder whose
        # configuration the rerun can check (this run's entry is replaced at the end).
        self.out.record_run(header, {"started_at": started_at, "state": "running", "tasks": len(tasks)})
        state = "interrupted"
        self.stop = Stop()
        self.probe = self._down_probe()
        try:
            todo = self.plan(tasks)
            async with Progress(self.stats, self.config.progress, self.config.log_interval, label="generate"):
                await self.draw_tasks(todo)
            state = "aborted" if self.stop.stopping else "finished"
        finally:
            self.flush()
            done = self.out.done_ids()
            missing = sum(1 for t in tasks if t.generation_id not in done)
            this_run = {"started_at": started_at, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                        "state": state, "tasks": len(tasks), "missing": missing,
                        "shards_written": self.shards_written, **self.stats.as_dict(),
                        "failed": sum(self.failures.values()), "empty": self.empty,
                        "failures": dict(self.failures.most_common(10)),
                        "limits": {"rpm": self.limiter.rpm, "tpm": self.limiter.tpm},
                        **({"stopped": self.stop.reason} if self.stop.reason else {})}
            manifest = self.out.record_run(header, this_run)
        if self.stop.reason is not None:
            raise UserError(f"stopped: {self.stop.reason}")
        return manifest


def estimate(tasks: Sequence[Task], generator: Generator, sampling: Sampling,
             price: Price | None) -> dict[str, Any]:
    """``--dry-run``: tokens and an upper bound of the cost, without a request."""
    if generator.price_model is None:
        price = Price(0.0, 0.0, 0.0)
    inp = out = 0
    for t in tasks:
        i, o = generator.estimate_tokens(t.request, sampling)
        inp, out = inp + i, out + o
    cost = None if price is None else price.cost(inp, 0, out)
    return {"samples": len(tasks), "input_tokens": inp, "output_tokens_max": out,
            "cost_usd_max": None if cost is None else round(cost, 4), "generator": generator.name}


def run_engine(engine: GenerationEngine, tasks: Sequence[Task], info: dict[str, Any]) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        try:
            return await engine.run(tasks, info)
        finally:
            await engine.generator.aclose()

    return asyncio.run(go())

