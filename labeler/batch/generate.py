"""``stepdpo generate --batch``: samples drawn through the provider batch APIs (half price).

The same loop as ``label --batch`` (:func:`labeler.batch.collect.submit_and_collect`: batch ids
persisted before and at submit, attach on rerun, poll, join by ``custom_id``) with a generation
job in the judge's place. Nothing about a sample differs from the online path:

- one batch line per task (problem, prefix, sample index): ``custom_id`` is the task's
  ``generation_id``, the body is exactly what the online backend POSTs
  (``generator.body(request, sampling)``: same prompt, sampling parameters and per-request seed);
- each answer is read by the backend's own ``parse``, cached under the online cache key and
  turned into a row by the online engine's ``row_of``, so batch and online rows of the same task
  are interchangeable (meta adds ``batch_id``);
- rows go into the generate folder as one atomic shard per batch; ``run.json`` is written by the
  folder's one manifest writer, with the batches and the batch price.

A request that failed inside a batch (errored, expired, canceled, an unusable answer) writes no
row: it is counted in ``run.json``'s failures and, not being done, is drawn again by the next
run: in a new batch, or online through the engine with ``--batch-retry online``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from labeler.batch import state
from labeler.batch.base import Transport
from labeler.batch.collect import BatchOptions, BatchSummary, say, submit_and_collect
from labeler.batch.registry import TRANSPORTS, transport_class
from labeler.batch.state import BatchRecord
from labeler.judges.base import Item, Verdict
from labeler.sources.generation.base import Generation, Generator, Sampling
from labeler.sources.generation.runner import GenerationEngine, Task
from labeler.sources.generation.store import GENERATE_SCHEMA, generation_key
from schemas.errors import UserError
from schemas.ids import sha256_hex


def refuse_spec(spec: str, engine: str = "local") -> None:
    """``--batch`` checked from the generator's name alone (before a model loads or a key is
    read): the provider batch APIs serve ``openai:`` and ``anthropic:`` generators."""
    if engine != "local":
        raise UserError("--batch and --engine ray do not combine: provider batches run at the provider")
    prefix = spec.partition(":")[0]
    if prefix not in TRANSPORTS:
        able = " and ".join(f"{p}:" for p in TRANSPORTS)
        raise UserError(f"--batch needs a generator with a provider batch API ({able}), not {spec}: "
                        "a local model or an OpenAI-compatible server has none; run without --batch")


def check_batch_options(options: BatchOptions) -> None:
    """One line for a batch option that cannot work, before anything is read or sent."""
    if options.poll_interval <= 0:
        raise UserError("--poll-interval must be positive")
    if options.batch_max_requests is not None and options.batch_max_requests < 1:
        raise UserError("--batch-max-requests must be at least 1")
    if options.batch_max_mb is not None and options.batch_max_mb <= 0:
        raise UserError("--batch-max-mb must be positive")
    if options.batch_max_wait is not None and options.batch_max_wait < 0:
        raise UserError("--batch-max-wait must be >= 0")


def batch_provider_of(generator: Generator, engine: str = "local") -> str:
    """The batch provider of ``generator``, or one line saying why ``--batch`` cannot run."""
    if engine != "local":
        raise UserError("--batch and --engine ray do not combine: provider batches run at the provider")
    provider = generator.batch_provider
    if provider is None:
        able = " and ".join(f"{p}:" for p in TRANSPORTS)
        raise UserError(f"--batch needs a generator with a provider batch API ({able}), not {generator.name}: "
                        "a local model or an OpenAI-compatible server has none; run without --batch")
    if provider not in TRANSPORTS:
        raise UserError(f"generator {generator.name} names batch provider '{provider}', which is not registered")
    return provider


class GenerationJob:
    """The generation side of :func:`submit_and_collect`: what the loop asks of a judge
    (name, fingerprint, request body, answer parser, token estimate, connection), for tasks.

    Rows handed to the loop are ``{"response_id": generation_id, "prompt", "steps": []}``; the
    answer comes back as a :class:`Verdict` with no scores whose ``raw`` holds the generation."""

    def __init__(self, generator: Generator, sampling: Sampling, tasks: Mapping[str, Task]) -> None:
        self.generator = generator
        self.sampling = sampling
        self.tasks = tasks
        self.name = generator.name
        self.batch_provider = generator.batch_provider
        self.price_model = generator.price_model

    def fingerprint(self) -> str:
        """Batches of another backend or sampling are never attached to."""
        return sha256_hex({"generator": self.generator.fingerprint(), "sampling": self.sampling.as_dict()})[:16]

    @staticmethod
    def row(task: Task) -> dict[str, Any]:
        return {"response_id": task.generation_id, "prompt": task.prompt, "steps": []}

    def request_body(self, item: Item) -> dict[str, Any]:
        return self.generator.body(self.tasks[item.response_id].request, self.sampling)  # type: ignore[attr-defined]

    def parse_body(self, item: Item, body: Mapping[str, Any]) -> Verdict:
        gen = self.generator.parse(self.tasks[item.response_id].request, dict(body), {})  # type: ignore[attr-defined]
        return Verdict([], raw=json.dumps(gen.to_json()), input_tokens=gen.input_tokens,
                       output_tokens=gen.output_tokens, cached_tokens=gen.cached_tokens)

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        return self.generator.estimate_tokens(self.tasks[item.response_id].request, self.sampling)

    def batch_connection(self) -> dict[str, Any]:
        return self.generator.batch_connection()  # type: ignore[attr-defined]


class GenerationSink:
    """Implements :class:`labeler.batch.collect.Sink` on a generate folder: rows by the online
    engine's ``row_of``, answers into the generation cache under the online key."""

    def __init__(self, engine: GenerationEngine, tasks: Mapping[str, Task]) -> None:
        self.engine = engine
        self.tasks = tasks
        self.priced = engine.price is not None
        self.failures: Counter[str] = Counter()
        self.empty = 0
        self.ok = 0
        self.shards: list[str] = []
        self._batch_of: dict[str, str | None] = {}

    def _batch_id(self, custom_id: str) -> str | None:
        if custom_id not in self._batch_of:  # a batch being joined: its record holds its id
            self._batch_of = {cid: rec.batch_id for rec in state.load_all(self.engine.out.path)
                              for cid in rec.manifest}
        return self._batch_of.get(custom_id)

    def row(self, response: Mapping[str, Any], verdict: Verdict | None, error: str | None,
            cost_usd: float | None, latency_s: float) -> dict[str, Any]:
        gid = response["response_id"]
        task = self.tasks[gid]
        if verdict is None or error is not None:
            reason = (error or "batch: no answer")[:300]
            self.failures[reason] += 1
            return {"status": "error", "error": reason}
        gen = Generation.from_json(json.loads(verdict.raw))
        engine = self.engine
        if engine.cache is not None:  # cached before its row is written, as online
            engine.cache.put(generation_key(engine.generator, task.request, engine.sampling), gen)
        row = engine.row_of(task, gen, {"batch_id": self._batch_id(gid)})
        if row is None:
            self.empty += 1
            return {"status": "empty"}
        self.ok += 1
        return {"status": "ok", "row": row}

    def write(self, rows: list[dict[str, Any]], name: str) -> None:
        path = self.engine.out.write_shard([r["row"] for r in rows if r["status"] == "ok"])
        if path is not None:
            self.shards.append(path.name)

    def cache_put(self, response: Mapping[str, Any], verdict: Verdict) -> None:
        """Done in :meth:`row` (every answer, empty ones too, as the online engine caches)."""

    def cost(self, verdict: Verdict) -> float | None:
        price = self.engine.price
        return None if price is None else price.cost(verdict.input_tokens, verdict.cached_tokens,
                                                     verdict.output_tokens)


def failed_in_batch(run_dir: Any, fingerprint: str, job: str = "") -> set[str]:
    """Tasks sent in a batch of this job that ended (ingested) — those still not done failed there."""
    return {gid for rec in state.load_all(run_dir) if rec.done and rec.batch_id and rec.fingerprint == fingerprint
            and rec.job == job for gid in rec.manifest.values()}


def run_batch_generate(
    engine: GenerationEngine,
    tasks: Sequence[Task],
    info: Mapping[str, Any],
    options: BatchOptions | None = None,
    *,
    transport: Transport | None = None,
    after_submit: Callable[[BatchRecord], None] | None = None,
    log: Callable[[str], None] = say,
) -> dict[str, Any]:
    """Draw ``tasks`` into ``engine.out`` through the provider batch API; returns ``run.json``.

    The engine's own plan first (repair the folder, skip samples already written, answer cached
    ones), then, with ``--batch-retry online``, samples that failed inside an earlier batch drawn
    online by the engine, then the rest submitted, collected and joined."""
    options = options or BatchOptions()
    provider = batch_provider_of(engine.generator)
    out = engine.out
    job_tag = getattr(out, "tag", "")
    discount = transport.discount if transport is not None else transport_class(provider).discount
    started_at = dt.datetime.now(dt.timezone.utc).isoformat()
    price = engine.price
    header = {"schema": GENERATE_SCHEMA, **info, "mode": "batch", "batch_provider": provider,
              "batch_discount": discount, "batch_retry": options.batch_retry,
              "batch_price_per_mtok": None if price is None else {k: v * discount for k, v in vars(price).items()}}
    out.record_run(header, {"started_at": started_at, "mode": "batch", "state": "running", "tasks": len(tasks)})
    todo = engine.plan(tasks)
    engine.flush()  # the cached samples' rows, before anything else can go wrong
    by_id = {t.generation_id: t for t in todo}
    job = GenerationJob(engine.generator, engine.sampling, by_id)
    fingerprint = job.fingerprint()

    online: list[Task] = []
    if options.batch_retry == "online":
        failed = failed_in_batch(out.path, fingerprint, job_tag)
        covered = {g for rec in state.in_flight(out.path, fingerprint, job_tag) for g in rec.manifest.values()}
        online = [t for t in todo if t.generation_id in failed and t.generation_id not in covered]
        ids = {t.generation_id for t in online}
        todo = [t for t in todo if t.generation_id not in ids]
    if online:
        log(f"drawing {len(online)} sample(s) that failed inside a batch online (--batch-retry online)")

        async def go() -> None:
            try:
                await engine.draw_tasks(online)
            finally:
                await engine.generator.aclose()

        try:
            asyncio.run(go())
        finally:
            engine.flush()
    s = engine.stats
    spent_online = {"samples": len(online), "ok": s.ok - s.cache_hits, "requests": s.requests,
                    "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
                    "cost_usd": None if price is None else round(s.cost_usd, 6)} if online else {}

    sink = GenerationSink(engine, by_id)
    summary, run_state = BatchSummary(), "interrupted"
    try:
        summary = submit_and_collect(job, [job.row(t) for t in todo], str(out.path), sink,  # type: ignore[arg-type]
                                     options, transport=transport, after_submit=after_submit, log=log, job=job_tag)
        run_state = "pending" if summary.pending else "finished"
    finally:  # a refused submission or a signal still leaves run.json saying what this run did
        records = [r for r in state.load_all(out.path) if r.fingerprint == fingerprint and r.job == job_tag]
        done = out.done_ids()
        failures = sink.failures + engine.failures
        this_run = {
            "started_at": started_at, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "mode": "batch", "state": run_state, "tasks": len(tasks),
            "missing": sum(1 for t in tasks if t.generation_id not in done), "skipped": s.skipped,
            "cache_hits": s.cache_hits, "retried_online": len(online), "online_retry": spent_online,
            "batches_submitted": summary.submitted, "batches_attached": summary.attached,
            "batches_pending": summary.pending, "ok": sink.ok, "empty": sink.empty + engine.empty,
            "failed": sum(failures.values()), "failures": dict(failures.most_common(10)),
            "requests": s.requests, "input_tokens": summary.input_tokens + (s.input_tokens if online else 0),
            "output_tokens": summary.output_tokens + (s.output_tokens if online else 0),
            "cached_tokens": summary.cached_tokens,
            "cost_usd": None if price is None else round(summary.cost_usd + (spent_online.get("cost_usd") or 0.0), 6),
            "shards_written": engine.shards_written + sink.shards,
        }
        header["batches"] = [{"key": r.key, "batch_id": r.batch_id, "phase": r.phase, "status": r.status,
                              "requests": r.n_requests, "rows": r.rows, "cost_usd": round(r.cost_usd, 6)}
                             for r in records]
        manifest = out.record_run(header, this_run)
    return manifest
