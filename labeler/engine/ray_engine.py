"""`stepdpo label --engine ray`: local model judges scaled out over a Ray cluster with Ray Data.

API judges are bound by the provider's rate limit, which one process already reaches. Local
process reward models are bound by accelerators: with millions of responses and many GPUs the
work must spread over a cluster. Rather than a home-made scheduler, this uses the engine that
cluster users already run: Ray Data's ``map_batches`` with an actor pool, one judge (one model)
per actor, a GPU per actor when asked.

Only the *scoring* moves. Everything else stays in the ordinary engine on the driver
(:class:`labeler.engine.runner.Engine`): the run folder, resume (rows already in finished shards
are never sent), the judge cache (cached answers are never sent, new answers are cached), the
score-count checks, shards and ``run.json``. So a Ray run writes exactly the files, schema,
fingerprint and cache entries of a local run, and ``inspect``, ``pairs`` and reruns work
unchanged, with either engine.

Exactly once: the driver is the only writer. Ray restarts a killed actor and retries its batch
(Ray Data's actor pools default to ``max_restarts=-1, max_task_retries=-1``); a batch's rows
reach the driver once, from whichever attempt finished. A killed driver loses at most the rows
of its unwritten shard; the rerun skips every finished row and reads the cache for the rest.
Worker (re)starts are counted on a small named actor, so ``run.json`` reports restarts.

The workers score with the judge's own code (for ``prm:`` the same single-pass, length-sorted
batches as the local path): the driver sorts the rows by length and hands Ray one block per
batch, so each actor scores rows of similar length together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from labeler.engine.ray_options import RAY_HINT, RayOptions, check_options, import_ray  # noqa: F401 - re-exported
from labeler.engine.runner import Engine
from labeler.judges.base import Item, Judge, Verdict
from schemas.errors import UserError

# -- on the workers ------------------------------------------------------------------------------

def _verdict_to_json(v: Verdict) -> str:
    return json.dumps({"scores": v.scores, "raw": v.raw, "input_tokens": v.input_tokens,
                       "output_tokens": v.output_tokens, "cached_tokens": v.cached_tokens, "error": v.error})


def _verdict_from_json(text: str) -> Verdict:
    d = json.loads(text)
    return Verdict(scores=d["scores"], raw=d["raw"] or "", input_tokens=d["input_tokens"],
                   output_tokens=d["output_tokens"], cached_tokens=d["cached_tokens"], error=d["error"])


def _make_judge(spec: str, config: dict[str, Any]) -> Judge:
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import create_judge

    return create_judge(spec, JudgeConfig(**config))


class JudgeWorker:
    """A Ray Data callable class: built once per actor (loads the model), then scores batches."""

    def __init__(self, spec: str, config: dict[str, Any], counter: str | None) -> None:
        self.counter = report_start(counter)
        self.judge = _make_judge(spec, config)
        self.loop = asyncio.new_event_loop()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        ids = [str(x) for x in batch["response_id"]]
        report_batch(self.counter, ids[0] if ids else "")
        items = [Item(response_id=rid, prompt=str(p), steps=[str(s) for s in steps])
                 for rid, p, steps in zip(ids, batch["prompt"], batch["steps"], strict=True)]
        size = max(1, self.judge.batch_size)
        out: list[str] = []
        for i in range(0, len(items), size):
            chunk = items[i:i + size]
            start = time.monotonic()
            try:
                verdicts = self.loop.run_until_complete(self.judge.judge(chunk))
            except Exception as exc:  # a row-level failure, not a dead worker: record it
                verdicts = [Verdict(scores=[], error=f"{type(exc).__name__}: {exc}") for _ in chunk]
            latency = (time.monotonic() - start) / len(chunk)
            out += [json.dumps({"verdict": _verdict_to_json(v), "latency": latency}) for v in verdicts]
        return {"response_id": ids, "answer": out}


class Counter:
    """Counts, cluster-wide, actor starts (a restarted actor runs ``__init__`` again) and batches
    started more than once (a batch whose worker died is retried: it starts a second time)."""

    def __init__(self) -> None:
        self.starts = 0
        self.seen: set[str] = set()
        self.retried = 0

    def add(self) -> int:
        self.starts += 1
        return self.starts

    def batch(self, key: str) -> None:
        if key in self.seen:
            self.retried += 1
        self.seen.add(key)

    def value(self) -> dict[str, int]:
        return {"starts": self.starts, "retried_batches": self.retried}


def report_start(counter: str | None) -> Any:
    """Register an actor start on the run's counter (first thing in a worker's ``__init__``, before
    the model loads, so a restart is counted even if the run ends while the model is loading)."""
    if not counter:
        return None
    import ray

    handle = ray.get_actor(counter)
    ray.get(handle.add.remote())
    return handle


def report_batch(handle: Any, key: str) -> None:
    if handle is not None:
        import ray

        ray.get(handle.batch.remote(key))


def identity_of(backend: Any) -> dict[str, Any]:
    """What the driver needs of a backend (judge or generator) built on a worker: name,
    fingerprint parts, batch size, price model. :class:`RemoteBackend` stands in with them."""
    return {"name": backend.name, "parts": backend.fingerprint_parts(), "batch_size": backend.batch_size,
            "price_model": backend.price_model}


def _probe(spec: str, config: dict[str, Any]) -> dict[str, Any]:
    """Build the judge once where the workers run, to learn its name and fingerprint without
    loading the model on the driver (which may have no GPU, or not the memory)."""
    judge = _make_judge(spec, config)
    try:
        return {**identity_of(judge), "plain_cache_key": type(judge).cache_inputs is Judge.cache_inputs}
    finally:
        asyncio.run(judge.aclose())


# -- on the driver -------------------------------------------------------------------------------

class RemoteBackend:
    """The driver's stand-in for a backend the Ray workers hold (mixed in before Judge or
    Generator): the name, fingerprint, batch size and price model :func:`identity_of` read on a
    worker, so cache keys, the folder's identity and prices are the workers' own; no model."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.name = info["name"]
        self.parts = info["parts"]
        self.batch_size = info["batch_size"]
        self.price_model = info["price_model"]

    def fingerprint_parts(self) -> dict[str, Any]:
        return self.parts


class RemoteJudge(RemoteBackend, Judge):
    """The judge the workers hold, on the driver. It never judges; the workers do."""

    async def judge(self, items: list[Item]) -> list[Verdict]:  # pragma: no cover - never called
        raise RuntimeError("RemoteJudge is scored by Ray workers, not on the driver")


def connect(options: RayOptions) -> Any:
    """Join (or start) the Ray cluster; quiet Ray Data's own progress bars (ours is shown)."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = options.ray_address or "a local Ray"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot start or join {where}: {first}") from exc
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray


def pool_answers(options: RayOptions, blocks: list[Any], worker: type, ctor_args: tuple[Any, ...], key: str,
                 counts: dict[str, int], should_stop: Any = lambda: False) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run ``blocks`` (one Ray task each) through an actor pool of ``worker`` (built with
    ``ctor_args`` + the run's counter name) and yield ``(key, answer)`` per row once per key, as
    batches arrive; a retried batch's second copy is dropped. Stops early when ``should_stop()``
    after a batch. On exit, ``counts`` holds the actor starts and the batches that ran twice.

    Both Ray engines (judging, generation) go through here, so the pool, the counter and the
    exactly-once rule are one piece of code."""
    ray = connect(options)
    name = f"stepdpo-starts-{uuid.uuid4().hex[:12]}"
    counter = ray.remote(Counter).options(name=name, num_cpus=0).remote()
    seen: set[str] = set()
    try:
        ds = ray.data.from_arrow(blocks).map_batches(
            worker, batch_size=max(b.num_rows for b in blocks), batch_format="numpy",
            fn_constructor_args=(*ctor_args, name), compute=ray.data.ActorPoolStrategy(size=options.num_workers),
            num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker or None)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            counts["tasks"] = counts.get("tasks", 0) + 1
            for k, answer in zip(batch[key], batch["answer"], strict=True):
                if str(k) not in seen:
                    seen.add(str(k))
                    yield str(k), json.loads(str(answer))
            if should_stop():
                break
        counts.update(ray.get(counter.value.remote()))
    finally:
        ray.kill(counter)


def remote_call(fn: Any, options: RayOptions, *args: Any) -> Any:
    """Run ``fn(*args)`` once on a worker with a worker's resources (to learn what the workers
    will hold, without loading a model on the driver); a UserError there is one here."""
    ray = connect(options)
    task = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker)(fn)
    try:
        return ray.get(task.remote(*args))
    except Exception as exc:  # the worker's UserError arrives wrapped in a RayTaskError
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from exc
        raise


def remote_judge(spec: str, config: Any, options: RayOptions) -> RemoteJudge:
    """The judge's identity, learned on a worker; refuses judges Ray cannot help."""
    prefix = spec.partition(":")[0]
    if prefix in ("openai", "anthropic", "openai-compatible"):
        raise UserError(f"--engine ray is for local model judges (prm:…); '{prefix}' is bound by the "
                        "provider's rate limit, which one process reaches: use the default engine")
    info = remote_call(_probe, options, spec, dataclasses.asdict(config))
    if not info["plain_cache_key"]:
        raise UserError(f"--engine ray supports judges whose answer depends only on the problem and the "
                        f"steps (prm:); '{prefix}' also reads other fields: use the default engine")
    return RemoteJudge(info)


class RayEngine(Engine):
    """:class:`Engine` whose rows to label are scored by a Ray Data actor pool."""

    def __init__(self, judge: RemoteJudge, run_dir: Any, config: Any, cache: Any, prices: Any, *,
                 spec: str, judge_config: Any, options: RayOptions) -> None:
        super().__init__(judge, run_dir, config, cache, prices)
        self.spec = spec
        self.judge_config = dataclasses.asdict(judge_config)
        self.options = options
        self.worker_starts = 0
        self.worker_restarts = 0

    async def label_rows(self, todo: list[dict[str, Any]]) -> None:
        if todo:
            await asyncio.to_thread(self._score_on_ray, todo)

    def _score_on_ray(self, todo: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        opts = self.options
        # Length-sorted, one block per task: each actor scores rows of similar length together.
        order = sorted(range(len(todo)), key=lambda i: len(todo[i]["prompt"]) + sum(map(len, todo[i]["steps"])))
        blocks = []
        for start in range(0, len(order), opts.ray_batch_size):
            chunk = [todo[i] for i in order[start:start + opts.ray_batch_size]]
            blocks.append(pa.table({"response_id": [r["response_id"] for r in chunk],
                                    "prompt": [r["prompt"] for r in chunk],
                                    "steps": [list(r["steps"]) for r in chunk]}))
        by_id = {r["response_id"]: r for r in todo}
        counts: dict[str, int] = {}
        for rid, got in pool_answers(opts, blocks, JudgeWorker, (self.spec, self.judge_config), "response_id",
                                     counts, lambda: self.stop.stopping):
            row = by_id.pop(rid)
            self.record(row, Item.from_row(row), _verdict_from_json(got["verdict"]), latency=got["latency"])
        self.stats.requests += counts.get("tasks", 0)  # one Ray task per block of rows
        # Starts beyond the pool's own were restarts of killed workers; their batches ran again.
        self.worker_starts = counts.get("starts", 0)
        self.worker_restarts = max(0, self.worker_starts - opts.num_workers)
        self.stats.retries += max(self.worker_restarts, counts.get("retried_batches", 0))
        if self.stop.stopping:  # rows not answered stay unwritten: the rerun labels them
            return
        for row in by_id.values():  # never expected; a row Ray lost is an error row, retried next run
            self.record_error(row, "the Ray job returned no answer for this row")
