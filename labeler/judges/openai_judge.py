"""Judges over the OpenAI Chat Completions protocol: ``openai:MODEL`` and
``openai-compatible:MODEL@BASE_URL`` (vLLM, SGLang, llama.cpp, any server speaking it).

All steps of a response are judged in ONE request whose answer is forced into the answer
schema (:func:`~labeler.judges.prompting.answer_schema`, with a per-step ``analysis`` ahead of
the verdict unless the model is a reasoning model) by ``response_format={"type": "json_schema",
"strict": true}``; ``--template processbench`` asks for free text ending in ``\\boxed{k}``. The rubric and problem come first, the numbered steps last, so OpenAI's
automatic prompt caching bills the shared prefix at the cached rate. With ``--logprobs`` the
score of a step is calibrated from ``top_logprobs`` at its verdict token:
(P(correct) + ½·P(neutral)) / (P(correct) + P(neutral) + P(incorrect)), which ranks steps far
better than the model's stated number.

The SDK's own retries are off (``max_retries=0``): the engine retries, once, visibly.
``request_body`` / ``parse_body`` are the whole wire format, so the provider-batch mode sends and
reads exactly what the online path does.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from labeler.judges.base import Item, Verdict
from labeler.judges.config import JudgeConfig
from labeler.judges.http_judge import HttpJudge, cut_off_error, malformed_answer
from labeler.judges.prompting import VERDICT_SCORE, AnswerError
from labeler.judges.provider import scrub  # noqa: F401 - re-exported for callers
from labeler.registry_util import model_and_url
from schemas.errors import UserError


def calibrated_scores(text: str, tokens: list[dict[str, Any]], n_steps: int) -> list[float] | None:
    """Per-step scores from the top_logprobs at each verdict value, or None if they can't be read.

    Works on any tokenizer: it finds the character where each verdict value starts, the token
    covering it, and reads each alternative token from that offset on.
    """
    pieces = [t.get("token", "") for t in tokens]
    if "".join(pieces) != text:
        return None
    starts, pos = [], 0
    for piece in pieces:
        starts.append(pos)
        pos += len(piece)
    scores = []
    for m in re.finditer(r'"verdict"\s*:\s*"', text):
        at = m.end()
        k = next((i for i in range(len(pieces)) if starts[i] <= at < starts[i] + len(pieces[i])), None)
        if k is None:
            return None
        offset = at - starts[k]
        mass = dict.fromkeys(VERDICT_SCORE, 0.0)
        for alt in tokens[k].get("top_logprobs") or []:
            cand = alt.get("token", "")[offset:]
            if not cand:
                continue
            fits = [v for v in VERDICT_SCORE if v.startswith(cand) or cand.startswith(v)]
            if len(fits) == 1:
                mass[fits[0]] += math.exp(alt.get("logprob", -math.inf))
        total = sum(mass.values())
        if total <= 0:
            return None
        scores.append(sum(VERDICT_SCORE[v] * p for v, p in mass.items()) / total)
    return scores if len(scores) == n_steps else None


#: OpenAI reasoning models (o1, o3-mini, o4-mini, gpt-5…; not gpt-5-chat), which refuse temperature.
_REASONING = re.compile(r"^(?:o\d+(?:-|$)|gpt-5(?!-chat))")


class OpenAIJudge(HttpJudge):
    sdk = "openai"

    def __init__(self, model: str, config: JudgeConfig, *, name: str, api_key: str,
                 base_url: str | None, price_model: str | None, token_field: str = "max_completion_tokens",
                 batch_provider: str | None = None) -> None:
        if not model:
            raise UserError(f"judge '{name}' needs a model name, e.g. openai:gpt-4o-mini")
        if config.thinking_budget is not None:
            raise UserError("--thinking-budget is for anthropic judges (OpenAI reasoning models always reason)")
        super().__init__(config, api_key=api_key, base_url=base_url)
        self.name = name
        self.model = model
        self.price_model = price_model
        self.token_field = token_field
        self.batch_provider = batch_provider  # OpenAI's own API has a Batch API; other servers do not
        self.reasoning = token_field == "max_completion_tokens" and bool(_REASONING.match(model))
        self.setup_answer()

    def fingerprint_parts(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "protocol": "chat.completions/json_schema",
            **self.answer_parts(),
            "temperature": self.config.temperature,
            "logprobs": bool(self.config.logprobs),
        }

    def request_body(self, item: Item, sample: int | None = None) -> dict[str, Any]:
        """The exact JSON body POSTed to ``/v1/chat/completions`` for ``item``."""
        r = self.render(item)
        messages = [{"role": "system", "content": r.system}] if r.system else []
        body: dict[str, Any] = {"model": self.model, "messages": [*messages, {"role": "user", "content": r.user}]}
        if self.kind == "steps":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "step_verdicts", "strict": True, "schema": self.schema}}
        body["temperature"] = self.config.temperature
        body[self.token_field] = self.config.max_output_tokens
        if sample is not None:
            body["seed"] = sample  # N different, reproducible samples where the server honours it
        if self.reasoning and self.config.temperature == 0.0:
            # OpenAI's reasoning models answer 400 to any temperature but their own (1): the
            # default 0 is left out for them; an explicit --temperature is still sent.
            del body["temperature"]
        if self.config.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 5
        return body

    def parse_body(self, item: Item, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Verdict:
        """A Verdict from a Chat Completions response body; RetryableError for a bad answer."""
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        tokens = {"input_tokens": int(usage.get("prompt_tokens") or 0),
                  "output_tokens": int(usage.get("completion_tokens") or 0),
                  "cached_tokens": int(details.get("cached_tokens") or 0)}
        try:
            choice = (body.get("choices") or [])[0]
            message = choice.get("message") or {}
            if message.get("refusal"):
                raise AnswerError(f"the model refused: {message['refusal'][:200]}")
            text = message.get("content") or ""
            if choice.get("finish_reason") == "length":
                # Cut off: an error row, never cached; the same request would be cut off again.
                return Verdict(scores=[None] * len(item.steps), raw=text, headers=headers,
                               error=cut_off_error(self.config.max_output_tokens), **tokens)
            answer: Any = text
            if self.kind == "steps":
                try:
                    answer = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise AnswerError(f"answer is not JSON ({exc.msg} at char {exc.pos})") from exc
        except (AnswerError, IndexError, AttributeError) as exc:
            raise malformed_answer(f"malformed answer: {exc}", headers, tokens) from None
        verdict = self.read_answer(item, answer, text, tokens, headers)
        if self.config.logprobs:
            content = ((choice.get("logprobs") or {}).get("content")) or []
            calibrated = calibrated_scores(text, content, len(item.steps))
            if calibrated is None:
                raise malformed_answer("malformed answer: no usable top_logprobs at the verdicts", headers, tokens)
            verdict.scores = calibrated
        return verdict

    path = "/chat/completions"

    def _make_client(self, http_client: Any) -> Any:
        import openai

        return openai.AsyncOpenAI(api_key=self._api_key, base_url=self._base_url, http_client=http_client,
                                  max_retries=0, timeout=self.config.timeout)


def _key(env: str, judge: str, required: bool = True) -> str | None:
    key = os.environ.get(env)
    if not key and required:
        raise UserError(f"judge {judge} needs an API key: set the {env} environment variable")
    return key


def make_openai(model: str, config: JudgeConfig) -> OpenAIJudge:
    name = f"openai:{model}"
    key = _key("OPENAI_API_KEY", name)
    return OpenAIJudge(model, config, name=name, api_key=key or "", base_url=os.environ.get("OPENAI_BASE_URL"),
                       price_model=model, batch_provider="openai")


def make_openai_compatible(spec: str, config: JudgeConfig) -> OpenAIJudge:
    """``MODEL@BASE_URL``; a key is optional (local servers rarely check one)."""
    model, url = model_and_url(spec)  # the URL may carry user:password@
    if not url:
        raise UserError(f"judge 'openai-compatible:{spec}': expected openai-compatible:MODEL@BASE_URL, "
                        "e.g. openai-compatible:Qwen/Qwen2.5-7B-Instruct@http://localhost:8000/v1")
    key = _key("OPENAI_API_KEY", spec, required=False) or "unused"
    # The base URL is transport, not output: it stays out of the name and the fingerprint, so the
    # same model behind another host reuses the cache.
    return OpenAIJudge(model, config, name=f"openai-compatible:{model}", api_key=key, base_url=url,
                       price_model=model, token_field="max_tokens")
