"""`mc:BACKEND`: Monte-Carlo step labels, as Math-Shepherd makes them (Wang et al. 2024).

For step k of a response (every step but the last), N rollouts continue the solution from its
first k+1 steps with a `generate` backend (``mc:hf:PATH``, ``mc:openai-compatible:M@URL``,
``mc:openai:M``, ``mc:anthropic:M``); the step's score is the fraction of rollouts whose final
answer is the gold one (`labeler.answers`, the checker every part shares), or with ``--hard``
1.0 when any rollout reaches it. The last step's score is whether the response's own answer is
right: nothing is left to roll out. A response with no gold answer is an error row.

Rollout prompts are `stepdpo generate`'s (``--rollout-template``, default ``step-dpo``): the
problem, then the kept steps written as the start of the answer with the next step's marker.
Each rollout has its own seed, derived from the response, the step and the rollout index, so
a rerun asks the same questions. The engine caches a response's whole verdict (all its rollouts)
under this judge's fingerprint and counts the rollouts' tokens and cost like any request; while
a response is being scored, its answered rollouts are kept, so when one rollout fails and the
engine retries the response only the failed ones are sent again.

Qwen's "Lessons of developing PRMs" (arXiv 2501.07301) finds MC labels alone generalise worse
than judge labels; `stepdpo combine --how consensus` keeps the steps where they agree.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from labeler.answers import answer_of_steps, check_answer, extract_answer, math_verify_version
from labeler.judges.base import Item, Judge, Verdict
from labeler.sources.generation.base import GenRequest, Sampling
from labeler.sources.generation.prompts import answer_start, load_template, render_user
from labeler.sources.generation.registry import GeneratorOptions, create_generator
from schemas.errors import UserError
from schemas.ids import sha256_hex

MC_VERSION = 1


class MCJudge(Judge):
    """Rollouts through a generation backend; one judge call scores one response."""

    batch_size = 1

    def __init__(self, spec: str, config: Any) -> None:
        if not spec:
            raise UserError("mc needs a generate backend: --judge mc:hf:PATH or mc:openai-compatible:MODEL@URL")
        if config.rollouts < 1:
            raise UserError("--rollouts must be at least 1")
        if config.rollout_temperature < 0 or config.rollout_max_tokens < 1:
            raise UserError("--rollout-temperature must be >= 0 and --rollout-max-tokens >= 1")
        self.generator = create_generator(spec, GeneratorOptions(timeout=config.timeout, device=config.device,
                                                                 dtype=config.dtype,
                                                                 http_transport=config.http_transport))
        self.name = f"mc:{self.generator.name}"
        self.price_model = self.generator.price_model
        self.n = int(config.rollouts)
        self.hard = bool(config.hard)
        self.template = load_template(config.rollout_template)
        self.sampling = Sampling(temperature=config.rollout_temperature, top_p=config.rollout_top_p,
                                 max_new_tokens=config.rollout_max_tokens, seed=config.rollout_seed)
        self.concurrency = max(1, int(config.rollout_concurrency))
        # Rollouts answered in this process, by request: when one rollout of a response fails and
        # the engine retries the response, the others are not paid for again.
        self._done: dict[str, Any] = {}

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"version": MC_VERSION, "generator": self.generator.fingerprint(), "rollouts": self.n,
                "hard": self.hard, "template": self.template.as_dict(), "sampling": self.sampling.as_dict(),
                "checker": math_verify_version()}

    def cache_inputs(self, item: Item) -> dict[str, Any] | None:
        return {"gold_answer": item.gold_answer, "final_answer": item.final_answer}

    def rollout_seed(self, item: Item, step: int, index: int) -> int:
        """The seed of rollout ``index`` from the first ``step + 1`` steps of ``item``."""
        key = sha256_hex({"prompt": item.prompt, "steps": list(item.steps[: step + 1]), "rollout": index,
                          "seed": self.sampling.seed})
        return int(key[:8], 16) & 0x7FFFFFFF

    def requests(self, item: Item) -> list[tuple[int, GenRequest]]:
        """(step, request) of every rollout of ``item``: N per step but the last."""
        out = []
        user = render_user(self.template, item.prompt)
        for k in range(len(item.steps) - 1):
            prefill = answer_start(self.template, item.steps[: k + 1])
            for i in range(self.n):
                out.append((k, GenRequest(key=f"{item.response_id}:{k}:{i}", prompt=user,
                                          system=self.template.system, chat=self.template.chat, prefill=prefill,
                                          sample_index=i, seed=self.rollout_seed(item, k, i), continuation=True)))
        return out

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        reqs = self.requests(item)
        inp = sum(self.generator.estimate_tokens(r, self.sampling)[0] for _, r in reqs)
        return inp, len(reqs) * self.sampling.max_new_tokens

    def _memo_key(self, request: GenRequest) -> str:
        return sha256_hex(request.cache_view())

    async def _generate(self, slots: asyncio.Semaphore, batch: list[GenRequest]) -> list[Any]:
        keys = [self._memo_key(r) for r in batch]
        todo = [r for r, k in zip(batch, keys, strict=True) if k not in self._done]
        if todo:
            async with slots:
                got = await self.generator.generate(todo, self.sampling)
            for r, g in zip(todo, got, strict=True):
                self._done[self._memo_key(r)] = g
        return [self._done[k] for k in keys]

    async def judge(self, items: list[Item]) -> list[Verdict]:
        return [await self._one(item) for item in items]

    async def _one(self, item: Item) -> Verdict:
        if not item.gold_answer or not str(item.gold_answer).strip():
            return Verdict(scores=[None] * len(item.steps), error="no gold answer: mc: needs one to check rollouts")
        if not item.steps:
            return Verdict(scores=[], error="no steps")
        reqs = self.requests(item)
        size = max(1, self.generator.batch_size)
        chunks = [reqs[s: s + size] for s in range(0, len(reqs), size)]
        slots = asyncio.Semaphore(self.concurrency)  # per call: the engine runs calls in parallel too
        # Every rollout finishes (and is kept) before a failure is raised for the engine to retry.
        answers = await asyncio.gather(*(self._generate(slots, [r for _, r in c]) for c in chunks),
                                       return_exceptions=True)
        failed = next((a for a in answers if isinstance(a, BaseException)), None)
        if failed is not None:
            raise failed
        hits = [0] * len(item.steps)
        usage = [0, 0, 0]
        for chunk, gens in zip(chunks, answers, strict=True):
            for (k, req), gen in zip(chunk, gens, strict=True):
                text = req.prefill + gen.text if gen.prefilled else gen.text
                hits[k] += check_answer(extract_answer(text), item.gold_answer).correct is True
                usage[0] += gen.input_tokens
                usage[1] += gen.output_tokens
                usage[2] += gen.cached_tokens
        for _, req in reqs:  # the verdict now holds them (and the engine caches it)
            self._done.pop(self._memo_key(req), None)
        own = check_answer(answer_of_steps(item.steps, item.final_answer), item.gold_answer).correct is True
        scores: list[float | None] = [(float(h > 0) if self.hard else h / self.n) for h in hits[:-1]]
        scores.append(1.0 if own else 0.0)
        raw = json.dumps({"rollouts": self.n, "hits": hits[:-1], "final_answer_correct": own, "hard": self.hard})
        return Verdict(scores=scores, raw=raw, input_tokens=usage[0], output_tokens=usage[1], cached_tokens=usage[2])

    async def aclose(self) -> None:
        await self.generator.aclose()


def make_mc(spec: str, config: Any) -> MCJudge:
    """Registry factory: ``mc:BACKEND`` with the rollout options of JudgeConfig."""
    return MCJudge(spec, config)
