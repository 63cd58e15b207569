"""``anthropic:MODEL``: Claude through the Messages API with forced tool output.

The answer schema is the ``input_schema`` of one tool and ``tool_choice`` forces the model to
call it, so the reply is JSON of the right shape. ``cache_control`` marks the shared prefix: the
rubric (shared by every request) and the problem (shared by all solutions of a problem) are
cached by Anthropic and billed at the cache-read rate on the next request; the numbered steps
follow in a separate block. 529 ``overloaded_error`` is retryable, like 429 and other 5xx.
There are no logprobs on this API, so scores are the stated ones.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Mapping
from typing import Any

from labeler.judges.base import Item, Verdict
from labeler.judges.config import JudgeConfig
from labeler.judges.http_judge import HttpJudge, malformed_answer
from labeler.judges.prompting import (
    ANSWER_SCHEMA,
    TOOL_NAME,
    AnswerError,
    load_template,
    parse_answer,
)
from schemas.errors import UserError
from schemas.ids import sha256_hex

ANTHROPIC_VERSION_NOTE = "messages/tool_use"


class AnthropicJudge(HttpJudge):
    sdk = "anthropic"
    batch_provider = "anthropic"  # Message Batches: labeler/batch/anthropic_batch.py

    def __init__(self, model: str, config: JudgeConfig, *, api_key: str, base_url: str | None) -> None:
        if not model:
            raise UserError("judge 'anthropic' needs a model name, e.g. anthropic:claude-haiku-4-5")
        if config.logprobs:
            raise UserError("--logprobs is not available for anthropic judges (the API returns none)")
        super().__init__(config, api_key=api_key, base_url=base_url)
        self.name = f"anthropic:{model}"
        self.model = model
        self.price_model = model
        self.template = load_template(config.template)

    def fingerprint_parts(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "protocol": ANTHROPIC_VERSION_NOTE,
            "template": self.template.name,
            "template_sha": self.template.sha,
            "schema_sha": sha256_hex(ANSWER_SCHEMA)[:16],
            "temperature": self.config.temperature,
            "max_output_tokens": self.config.max_output_tokens,
        }

    def request_body(self, item: Item) -> dict[str, Any]:
        """The exact JSON body POSTed to ``/v1/messages`` for ``item``."""
        r = self.template.render(item.prompt, item.steps, item.gold_answer)
        ephemeral = {"type": "ephemeral"}
        return {
            "model": self.model,
            "max_tokens": self.config.max_output_tokens,
            "temperature": self.config.temperature,
            "system": [{"type": "text", "text": r.system, "cache_control": ephemeral}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": r.prefix, "cache_control": ephemeral},
                {"type": "text", "text": r.steps + r.suffix},
            ]}],
            "tools": [{"name": TOOL_NAME,
                       "description": "Record the verdict and score of every solution step, in order.",
                       "input_schema": ANSWER_SCHEMA}],
            "tool_choice": {"type": "tool", "name": TOOL_NAME},
        }

    def parse_body(self, item: Item, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Verdict:
        """A Verdict from a Messages response body; RetryableError for a bad answer."""
        usage = body.get("usage") or {}
        read = int(usage.get("cache_read_input_tokens") or 0)
        written = int(usage.get("cache_creation_input_tokens") or 0)
        tokens = {"input_tokens": int(usage.get("input_tokens") or 0) + read + written,
                  "output_tokens": int(usage.get("output_tokens") or 0), "cached_tokens": read}
        try:
            call = next((b for b in body.get("content") or []
                         if b.get("type") == "tool_use" and b.get("name") == TOOL_NAME), None)
            if call is None:
                if body.get("stop_reason") == "max_tokens":
                    # The same request would be cut off again: not retried (each try is billed).
                    return Verdict(scores=[None] * len(item.steps), headers=headers,
                                   error=f"answer cut off at {self.config.max_output_tokens} output "
                                         "tokens (raise --max-output-tokens, in a new -o folder)", **tokens)
                raise AnswerError(f"no {TOOL_NAME} tool call in the answer")
            scores, _ = parse_answer(call.get("input"), len(item.steps))
        except AnswerError as exc:
            raise malformed_answer(f"malformed answer: {exc}", headers, tokens) from None
        return Verdict(scores=scores, raw=json.dumps(call.get("input"), ensure_ascii=False), headers=headers, **tokens)

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        r = self.template.render(item.prompt, item.steps, item.gold_answer)
        return (len(r.system) + len(r.user)) // 4 + 400, 40 + 18 * len(item.steps)  # +tool definition

    def _make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self._base_url,
                                        max_retries=0, timeout=self.config.timeout)

    def _sdk_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        """Body fields the SDK has no keyword for (e.g. ``temperature`` in anthropic 2.x) travel in
        ``extra_body``, so the wire body equals :meth:`request_body` exactly."""
        known = _create_params()
        kwargs = {k: v for k, v in body.items() if k in known}
        extra = {k: v for k, v in body.items() if k not in known}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    async def _send(self, client: Any, body: dict[str, Any]) -> Any:
        return await client.messages.with_raw_response.create(**self._sdk_kwargs(body))


@functools.lru_cache(maxsize=1)
def _create_params() -> frozenset[str]:
    import anthropic

    return frozenset(inspect.signature(anthropic.resources.messages.AsyncMessages.create).parameters)


def make_anthropic(model: str, config: JudgeConfig) -> AnthropicJudge:
    key = os.environ.get("ANTHROPIC_API_KEY")
    if not key:
        raise UserError(f"judge anthropic:{model} needs an API key: set the ANTHROPIC_API_KEY environment variable")
    return AnthropicJudge(model, config, api_key=key, base_url=os.environ.get("ANTHROPIC_BASE_URL"))
