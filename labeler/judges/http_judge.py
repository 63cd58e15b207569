"""What the OpenAI and Anthropic judges share: one request per response through an official
SDK, errors classified by HTTP status (:mod:`labeler.judges.provider`, shared with the API
generation backends), keys scrubbed from every message. A provider subclass only builds its
client and body and extracts the answer from a response body.

What the two share besides transport lives here too: the template and the answer it asks for
(a JSON verdict per step, with an ``analysis`` field first unless the model reasons on its own,
or ProcessBench's boxed earliest-error index), and ``--samples N`` self-consistency: N requests
per solution, each answer cached under its own sample index (so a retry or a larger N asks only
what is missing), combined by :mod:`labeler.judges.voting`.

``--timeout`` is one deadline for the whole request, body included. An answer of an
odd shape (a 200 whose JSON body is ``null`` or a list, fields of the wrong type) is a malformed
answer, retryable, never an exception that takes the run down.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import json
from collections.abc import Mapping
from typing import Any

from labeler.judges import provider
from labeler.judges.base import Item, Judge, JudgeError, RetryableError, Verdict
from labeler.judges.clients import ClientPool
from labeler.judges.config import JudgeConfig
from labeler.judges.processbench import check_index, extract_boxed, scores_from_index, to_index
from labeler.judges.prompting import (
    ANALYSIS_RULE,
    ANALYSIS_SCHEMA,
    ANSWER_SCHEMA,
    RENDER_VERSION,
    AnswerError,
    Rendered,
    load_template,
    parse_answer,
    reference_solution_of,
)
from labeler.judges.transports import choose
from labeler.judges.voting import VOTES, combine
from schemas.errors import UserError
from schemas.ids import sha256_hex


def malformed_answer(message: str, headers: Mapping[str, str] | None, tokens: dict[str, int]) -> RetryableError:
    """A bad answer is retried, but its tokens were billed: ``usage`` lets the engine count them."""
    return RetryableError(message, headers=headers, usage=tokens)


#: Start of the error of an answer cut off at --max-output-tokens (never cached, never voted).
CUT_OFF = "answer cut off at"


def cut_off_error(limit: int) -> str:
    return (f"{CUT_OFF} {limit} output tokens (rerun with a higher --max-output-tokens, same -o "
            "folder: only cut-off rows are asked again)")


class HttpJudge(Judge):
    """An API judge: ``request_body``/``parse_body`` are its whole wire format (the batch mode
    sends and reads exactly these); the online path POSTs ``request_bytes`` to ``path`` through
    :meth:`labeler.judges.clients.ClientPool.post` (the SDK's headers, key and error classes,
    without its per-request build)."""

    batch_size = 1
    #: The SDK's module name; its exception classes are classified by :mod:`labeler.judges.provider`.
    sdk: str

    #: Rough extra input tokens per request beyond the rendered text (tool definition etc.).
    prompt_overhead = 12
    #: A model that reasons before answering (OpenAI o-series / gpt-5, Claude with thinking).
    reasoning = False

    def __init__(self, config: JudgeConfig, *, api_key: str, base_url: str | None) -> None:
        self.config = config
        self._api_key = api_key
        self._base_url = base_url
        self._clients: ClientPool | None = None
        self._in_flight: int | None = None
        self._sample_cache: Any = None
        try:  # imported now, not at the first request: a missing SDK is a clear error up front
            importlib.import_module(self.sdk)
        except ImportError as exc:
            raise UserError(
                f"judge '{self.sdk}' needs the {self.sdk} package: pip install 'stepwise-dpo[api]'"
            ) from exc
        choose(config.http_transport, importlib.import_module(self.sdk))  # a missing aiohttp: up front
        self.template = load_template(config.template)

    def setup_answer(self) -> None:
        """Decide the answer format once the subclass knows whether its model reasons."""
        cfg = self.config
        self.kind = self.template.answer
        self.analysis = bool(cfg.analysis) and not self.reasoning and self.kind == "steps"
        self.schema = ANALYSIS_SCHEMA if self.analysis else ANSWER_SCHEMA
        if cfg.samples < 1:
            raise UserError("--samples must be at least 1")
        if cfg.vote not in VOTES:
            raise UserError(f"--vote must be one of {', '.join(VOTES)}")
        if cfg.samples > 1 and cfg.temperature <= 0 and not self.reasoning:
            raise UserError(f"--samples {cfg.samples} needs --temperature > 0 (at temperature 0 every "
                            "sample is the same answer); e.g. --temperature 0.7")
        if cfg.logprobs and self.kind != "steps":
            raise UserError(f"--logprobs needs a step template; --template {self.template.name} answers "
                            "with a boxed index")

    def answer_parts(self) -> dict[str, Any]:
        """Fingerprint parts of the prompt, answer format and voting (not --max-output-tokens:
        a cut-off answer is never cached, so the limit does not change what is cached)."""
        parts: dict[str, Any] = {"template": self.template.name, "template_sha": self.template.sha,
                                 "render": RENDER_VERSION, "answer": self.kind}
        if self.kind == "steps":
            parts["schema_sha"] = sha256_hex(self.schema)[:16]
            parts["analysis"] = self.analysis
            if self.analysis:
                parts["analysis_rule_sha"] = sha256_hex(ANALYSIS_RULE)[:16]
        if self.config.samples > 1:
            parts["samples"] = self.config.samples
            parts["vote"] = self.config.vote if self.kind == "steps" else "majority-boxed"
        return parts

    def render(self, item: Item) -> Rendered:
        r = self.template.render(item.prompt, item.steps, item.gold_answer, reference_solution_of(item.meta))
        if self.analysis:
            r = Rendered(f"{r.system}\n\n{ANALYSIS_RULE}" if r.system else ANALYSIS_RULE, r.prefix, r.steps, r.suffix)
        return r

    def batch_connection(self) -> dict[str, Any]:
        return {"api_key": self._api_key, "base_url": self._base_url}

    def cache_inputs(self, item: Item) -> dict[str, Any] | None:
        # A template that shows the gold answer or a reference solution asks a different
        # question per gold answer / reference.
        inputs: dict[str, Any] = {}
        if self.template.uses("gold_answer"):
            inputs["gold_answer"] = item.gold_answer
        if self.template.uses("reference_solution"):
            inputs["reference_solution"] = reference_solution_of(item.meta)
        return inputs or None

    def use_cache(self, cache: Any) -> None:
        """The judge cache, for the answers of single samples under ``--samples N``."""
        self._sample_cache = cache

    def use_concurrency(self, requests: int) -> None:
        """The engine keeps ``requests`` items in flight: the connection pools are sized to them
        (× ``--samples``, which are asked at once) instead of the SDK's 1,000-connection default."""
        self._in_flight = max(1, requests) * self.config.samples

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        r = self.render(item)
        n = len(item.steps)
        inp = (len(r.system) + len(r.user)) // 4 + self.prompt_overhead
        if self.kind == "first-error-index":
            out = 40 + 60 * n  # a critique paragraph by paragraph, then the boxed index
        else:
            out = 8 + 18 * n + (50 * n if self.analysis else 0)
        if self.reasoning:
            out += self.config.thinking_budget or 150 * n
        return inp * self.config.samples, out * self.config.samples

    # -- answers -----------------------------------------------------------------------------
    def read_answer(self, item: Item, answer: Any, raw: str, tokens: dict[str, int],
                    headers: Mapping[str, str] | None) -> Verdict:
        """The Verdict of a complete answer: ``answer`` is the decoded JSON (step templates) or
        the text (first-error-index). A malformed JSON answer is retried (RetryableError); an
        unparseable critique is an error row, as ProcessBench counts it a miss."""
        n = len(item.steps)
        if self.kind == "first-error-index":
            boxed = extract_boxed(raw)
            index = to_index(boxed)
            why = check_index(index, boxed, n)
            if why is not None:
                return Verdict(scores=[None] * n, raw=raw, error=why, headers=headers, **tokens)
            return Verdict(scores=scores_from_index(index, n), raw=raw, headers=headers, **tokens)
        try:
            scores, _ = parse_answer(answer, n)
        except AnswerError as exc:
            raise malformed_answer(f"malformed answer: {exc}", headers, tokens) from None
        return Verdict(scores=scores, raw=raw, headers=headers, **tokens)

    @abc.abstractmethod
    def request_body(self, item: Item, sample: int | None = None) -> dict[str, Any]:
        """The exact JSON body of the request judging ``item`` (``sample``: its index under
        ``--samples N``)."""

    @abc.abstractmethod
    def parse_body(self, item: Item, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Verdict:
        """The verdict in a response body; raises RetryableError on a malformed answer."""

    def request_bytes(self, item: Item, sample: int | None = None) -> bytes:
        """:meth:`request_body` as the bytes sent: compact UTF-8 JSON, like the SDKs' own encoder."""
        return json.dumps(self.request_body(item, sample), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode()

    @abc.abstractmethod
    def _make_client(self, http_client: Any) -> Any:
        """The SDK's async client on ``http_client`` (None: the SDK's default), with
        ``max_retries=0`` (the engine retries, once, visibly)."""

    #: The endpoint :meth:`request_body` is POSTed to, relative to the client's base URL.
    path: str

    def verdict_of(self, item: Item, body: Any, headers: Mapping[str, str] | None = None) -> Verdict:
        """:meth:`parse_body` with every odd shape turned into a malformed answer: a body that is
        JSON ``null``, a list or a string, or fields of the wrong type, are that row's retryable
        error, never an AttributeError that takes the run down."""
        if not isinstance(body, dict):
            kind = "null" if body is None else type(body).__name__
            raise malformed_answer(f"malformed answer: the response body is JSON {kind}, not an object",
                                   headers, {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0})
        try:
            return self.parse_body(item, body, headers)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
            raise malformed_answer(f"malformed answer: unexpected shape ({type(exc).__name__}: {exc})"[:300],
                                   headers, {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0}) from None

    async def _request(self, item: Item, sample: int | None = None) -> tuple[str, dict[str, str]]:
        """One request and its whole body, under ONE deadline of ``--timeout`` seconds; its
        failure classified (:func:`labeler.judges.provider.call`)."""
        return await provider.call(self._pool(), self.path, self.request_bytes(item, sample),
                                   timeout=self.config.timeout, secret=self._api_key)

    def _pool(self) -> ClientPool:
        if self._clients is None:
            self._clients = ClientPool(importlib.import_module(self.sdk), self._make_client, self._in_flight,
                                       self.config.timeout, self.config.http_transport)
        elif not self._clients.clients:  # not built yet, or closed: the next build takes the latest size
            self._clients.in_flight = self._in_flight
        return self._clients

    async def judge(self, items: list[Item]) -> list[Verdict]:
        out = []
        for item in items:
            if self.config.samples > 1:
                out.append(await self._vote(item))
            else:
                out.append(await self._ask(item))
        return out

    async def _ask(self, item: Item, sample: int | None = None) -> Verdict:
        text, headers = await self._request(item, sample)
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise RetryableError("malformed answer: response body is not JSON", headers=headers) from None
        return self.verdict_of(item, body, headers)

    def _sample_key(self, item: Item, sample: int) -> str:
        from labeler.engine.cache import cache_key

        parts = {k: v for k, v in self.fingerprint_parts().items() if k not in ("samples", "vote")}
        fingerprint = sha256_hex({"judge": self.name, "sample_of": parts})[:16]
        return cache_key(fingerprint, item.prompt, item.steps, {**(self.cache_inputs(item) or {}), "sample": sample})

    async def _sample(self, item: Item, sample: int) -> tuple[Verdict, bool]:
        """One sample's answer: from the cache, or asked now and cached if complete."""
        cache = self._sample_cache
        if cache is not None:
            hit = cache.get(self._sample_key(item, sample))
            if hit is not None and len(hit.scores) == len(item.steps):
                return hit, True
        verdict = await self._ask(item, sample)
        if cache is not None and verdict.error is None:
            cache.put(self._sample_key(item, sample), verdict)
        return verdict, False

    async def _vote(self, item: Item) -> Verdict:
        """``--samples N``: every sample asked at once; a failed one fails the item (the engine
        retries it, and the samples that did answer come back from the cache)."""
        n = self.config.samples
        results = await asyncio.gather(*(self._sample(item, i) for i in range(n)), return_exceptions=True)
        done = [r for r in results if not isinstance(r, BaseException)]
        spent = {k: sum(getattr(v, k) for v, cached in done if not cached)
                 for k in ("input_tokens", "output_tokens", "cached_tokens")}
        failed = [r for r in results if isinstance(r, BaseException)]
        headers = next((v.headers for v, cached in reversed(done) if not cached), None)
        if failed:
            exc = failed[0]
            if isinstance(exc, JudgeError):  # the answers that did arrive were billed
                usage = getattr(exc, "usage", None) or {}
                exc.usage = {k: spent[k] + usage.get(k, 0) for k in spent}  # type: ignore[attr-defined]
            raise exc
        verdicts = [v for v, _ in done]
        cut = next((v.error for v in verdicts if v.error and v.error.startswith(CUT_OFF)), None)
        if cut is not None:  # not voted, not cached: a higher limit asks only the cut-off samples
            return Verdict(scores=[None] * len(item.steps), error=cut, headers=headers, **spent)
        voted = combine(verdicts, [c for _, c in done], len(item.steps), self.kind, self.config.vote)
        voted.headers = headers
        return voted

    async def aclose(self) -> None:
        if self._clients is not None:
            await self._clients.aclose()
