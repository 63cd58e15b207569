"""`stepdpo generate --engine ray` (and `eval`): a local model sampled on a Ray cluster.

The counterpart of :mod:`labeler.engine.ray_engine` for generation: a Ray Data actor pool holds
one ``hf:`` model per worker (a GPU each when asked) and draws the samples; the driver keeps
everything else of :class:`~labeler.sources.generation.runner.GenerationEngine` (the run folder,
resume, the cache keyed by backend fingerprint + prompt + sampling + sample index, shards,
``run.json``), so a Ray run writes what a local run writes.

Each Ray task gets exactly one local batch (the same ``--batch-size`` requests in the same
order), and the ``hf:`` backend seeds a batch from its first request: the samples equal the
local path's, at any temperature. A killed worker is restarted by Ray and its batch retried
(samples once: the driver writes each generation id once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from labeler.engine.ray_engine import (
    RayOptions,
    RemoteBackend,
    identity_of,
    pool_answers,
    remote_call,
    report_batch,
    report_start,
)
from labeler.sources.generation.base import Generation, Generator, GenRequest, Sampling
from labeler.sources.generation.runner import GenerationEngine, Task
from schemas.errors import UserError


def _make_generator(spec: str, options: dict[str, Any]) -> Generator:
    from labeler.sources.generation.registry import GeneratorOptions, create_generator

    return create_generator(spec, GeneratorOptions(**options))


class GeneratorWorker:
    """A Ray Data callable class: one backend (one model) per actor."""

    def __init__(self, spec: str, options: dict[str, Any], sampling: dict[str, Any], counter: str | None) -> None:
        self.counter = report_start(counter)
        self.generator = _make_generator(spec, options)
        self.sampling = Sampling(**sampling)
        self.loop = asyncio.new_event_loop()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        requests = [GenRequest(**json.loads(str(r))) for r in batch["request"]]
        report_batch(self.counter, str(batch["generation_id"][0]) if len(requests) else "")
        try:
            gens = self.loop.run_until_complete(self.generator.generate(requests, self.sampling))
            answers = [json.dumps({"ok": g.to_json()}) for g in gens]
        except Exception as exc:  # this batch failed; the driver records it, a rerun retries it
            answers = [json.dumps({"error": f"{type(exc).__name__}: {exc}"})] * len(requests)
        return {"generation_id": [str(x) for x in batch["generation_id"]], "answer": answers}


def _probe(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    gen = _make_generator(spec, options)
    try:
        return identity_of(gen)
    finally:
        asyncio.run(gen.aclose())


class RemoteGenerator(RemoteBackend, Generator):
    """The workers' backend on the driver (same cache keys and folder identity). It never
    generates; the workers do."""

    async def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[Generation]:  # pragma: no cover
        raise RuntimeError("RemoteGenerator is run by Ray workers, not on the driver")


def remote_generator(spec: str, options: Any, ray_options: RayOptions) -> RemoteGenerator:
    prefix = spec.partition(":")[0]
    if prefix != "hf":
        raise UserError(f"--engine ray runs local models (hf:…); '{prefix}' is a server or an API, bound by its "
                        "own capacity or rate limit: use the default engine (and the server's own scaling)")
    return RemoteGenerator(remote_call(_probe, ray_options, spec, dataclasses.asdict(options)))


class RayGenerationEngine(GenerationEngine):
    """:class:`GenerationEngine` whose samples are drawn by a Ray Data actor pool."""

    def __init__(self, *args: Any, spec: str, generator_options: Any, ray_options: RayOptions,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec
        self.generator_options = dataclasses.asdict(generator_options)
        self.ray_options = ray_options
        self.worker_starts = 0

    async def draw_tasks(self, todo: list[Task]) -> None:
        if todo:
            await asyncio.to_thread(self._draw_on_ray, todo)

    def _draw_on_ray(self, todo: list[Task]) -> None:
        import pyarrow as pa

        size = max(1, self.generator.batch_size)
        blocks = [pa.table({"generation_id": [t.generation_id for t in chunk],
                            "request": [json.dumps(dataclasses.asdict(t.request)) for t in chunk]})
                  for chunk in (todo[i:i + size] for i in range(0, len(todo), size))]
        by_id = {t.generation_id: t for t in todo}
        counts: dict[str, int] = {}
        ctor = (self.spec, self.generator_options, self.sampling.as_dict())
        for gid, got in pool_answers(self.ray_options, blocks, GeneratorWorker, ctor, "generation_id", counts):
            task = by_id.pop(gid)
            if "error" in got:
                self.record_failure([task], f"worker: {got['error']}")
            else:
                self.record(task, Generation.from_json(got["ok"]))
        self.stats.requests += counts.get("tasks", 0)
        self.worker_starts = counts.get("starts", 0)
        self.stats.retries += counts.get("retried_batches", 0)
        if by_id:
            self.record_failure(list(by_id.values()), "the Ray job returned no answer")
