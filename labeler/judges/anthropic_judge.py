"""``anthropic:MODEL``: Claude through the Messages API with forced tool output.

The answer schema is the ``input_schema`` of one tool and ``tool_choice`` forces the model to
call it, so the reply is JSON of the right shape. ``cache_control`` marks the shared prefix: the
rubric (shared by every request) and the problem (shared by all solutions of a problem) are
cached by Anthropic and billed at the cache-read rate on the next request; the numbered steps
follow in a separate block. 529 ``overloaded_error`` is retryable, like 429 and other 5xx.
There are no logprobs on this API, so scores are the stated ones.

With ``--thinking-budget`` Claude reasons in extended thinking first: the answer schema then has
no ``analysis`` field, ``tool_choice`` is ``auto`` (the API refuses a forced tool with thinking)
and temperature is left at the API's own (it refuses any other with thinking). With
``--template processbench`` there is no tool: the answer is text ending in ``\\boxed{k}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from labeler.judges.base import Item, Verdict
from labeler.judges.config import JudgeConfig
from labeler.judges.http_judge import HttpJudge, cut_off_error, malformed_answer
from labeler.judges.prompting import TOOL_NAME, AnswerError
from schemas.errors import UserError

ANTHROPIC_VERSION_NOTE = "messages/tool_use"


class AnthropicJudge(HttpJudge):
    sdk = "anthropic"
    batch_provider = "anthropic"  # Message Batches: labeler/batch/anthropic_batch.py
    prompt_overhead = 400  # the tool definition

    def __init__(self, model: str, config: JudgeConfig, *, api_key: str, base_url: str | None) -> None:
        if not model:
            raise UserError("judge 'anthropic' needs a model name, e.g. anthropic:claude-haiku-4-5")
        if config.logprobs:
            raise UserError("--logprobs is not available for anthropic judges (the API returns none)")
        if config.thinking_budget is not None and config.thinking_budget < 1024:
            raise UserError("--thinking-budget must be at least 1024 tokens (the API's minimum)")
        super().__init__(config, api_key=api_key, base_url=base_url)
        self.name = f"anthropic:{model}"
        self.model = model
        self.price_model = model
        self.reasoning = config.thinking_budget is not None
        self.setup_answer()

    def fingerprint_parts(self) -> dict[str, Any]:
        parts = {
            "model": self.model,
            "protocol": ANTHROPIC_VERSION_NOTE,
            **self.answer_parts(),
            "temperature": self.config.temperature,
        }
        if self.reasoning:
            parts["thinking_budget"] = self.config.thinking_budget
        return parts

    def request_body(self, item: Item, sample: int | None = None) -> dict[str, Any]:
        """The exact JSON body POSTed to ``/v1/messages`` for ``item`` (Anthropic has no seed:
        samples differ by temperature alone)."""
        r = self.render(item)
        ephemeral = {"type": "ephemeral"}
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.config.max_output_tokens}
        if self.reasoning:
            body["max_tokens"] += self.config.thinking_budget
            body["thinking"] = {"type": "enabled", "budget_tokens": self.config.thinking_budget}
        else:
            body["temperature"] = self.config.temperature
        if r.system:
            body["system"] = [{"type": "text", "text": r.system, "cache_control": ephemeral}]
        body["messages"] = [{"role": "user", "content": [
            {"type": "text", "text": r.prefix, "cache_control": ephemeral},
            {"type": "text", "text": r.steps + r.suffix},
        ]}]
        if self.kind == "steps":
            body["tools"] = [{"name": TOOL_NAME,
                              "description": "Record the verdict and score of every solution step, in order.",
                              "input_schema": self.schema}]
            body["tool_choice"] = {"type": "auto"} if self.reasoning else {"type": "tool", "name": TOOL_NAME}
        return body

    def parse_body(self, item: Item, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Verdict:
        """A Verdict from a Messages response body; RetryableError for a bad answer."""
        usage = body.get("usage") or {}
        read = int(usage.get("cache_read_input_tokens") or 0)
        written = int(usage.get("cache_creation_input_tokens") or 0)
        tokens = {"input_tokens": int(usage.get("input_tokens") or 0) + read + written,
                  "output_tokens": int(usage.get("output_tokens") or 0), "cached_tokens": read}
        blocks = body.get("content") or []
        if self.kind == "first-error-index":
            text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text")
            if body.get("stop_reason") == "max_tokens":
                return Verdict(scores=[None] * len(item.steps), raw=text, headers=headers,
                               error=cut_off_error(self.config.max_output_tokens), **tokens)
            return self.read_answer(item, text, text, tokens, headers)
        try:
            call = next((b for b in blocks if b.get("type") == "tool_use" and b.get("name") == TOOL_NAME), None)
            if call is None:
                if body.get("stop_reason") == "max_tokens":
                    # Cut off: an error row, never cached; the same request would be cut off again.
                    return Verdict(scores=[None] * len(item.steps), headers=headers,
                                   error=cut_off_error(self.config.max_output_tokens), **tokens)
                raise AnswerError(f"no {TOOL_NAME} tool call in the answer")
        except AnswerError as exc:
            raise malformed_answer(f"malformed answer: {exc}", headers, tokens) from None
        answer = call.get("input")
        return self.read_answer(item, answer, json.dumps(answer, ensure_ascii=False), tokens, headers)

    path = "/v1/messages"

    def _make_client(self, http_client: Any) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self._base_url, http_client=http_client,
                                        max_retries=0, timeout=self.config.timeout)


def make_anthropic(model: str, config: JudgeConfig) -> AnthropicJudge:
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise UserError(f"judge anthropic:{model} needs an API key: set the ANTHROPIC_API_KEY environment variable")
    return AnthropicJudge(model, config, api_key=key, base_url=os.environ.get("ANTHROPIC_BASE_URL"))
