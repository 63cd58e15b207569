"""API generation backends through the official SDKs: ``openai-compatible:MODEL@URL`` (vLLM,
SGLang, llama.cpp — raw completions for text templates, chat for ``--template chat``),
``openai:MODEL`` and ``anthropic:MODEL`` (chat).

They follow the API judges' conventions (:mod:`labeler.judges.http_judge`): keys from
``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` (base URLs from ``OPENAI_BASE_URL`` /
``ANTHROPIC_BASE_URL``), the SDK's retries off (``max_retries=0``: the engine retries, once,
visibly), one total deadline per request, and the same error classes, classified in one place
(:mod:`labeler.judges.provider`): 408/409/429 and 5xx retryable (with ``retry-after``),
401/403/404 stop the run, other 4xx fail the sample; keys are scrubbed from every message. Prices come from the judges' price table (``openai:`` and
``anthropic:`` models; a server's own model has no known price).

The hot path is the judges' (:mod:`labeler.judges.clients`): a request body is built once as
plain JSON (:meth:`ApiGenerator.body`, also what a provider batch line carries), encoded once and
POSTed through :meth:`labeler.judges.clients.ClientPool.post` with the whole HTTP response as the
result: the request carries the SDK's key, base URL and headers and fails with its error classes,
without the SDK's per-request build (:mod:`labeler.judges.direct`); the connection pools are
sized to the engine's concurrency.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from labeler.judges import provider
from labeler.judges.clients import ClientPool
from labeler.judges.transports import choose
from labeler.registry_util import model_and_url
from labeler.sources.generation.base import (
    Generation,
    Generator,
    GenRequest,
    RetryableError,
    Sampling,
)
from schemas.errors import UserError

CONTINUE_NOTE = ("\n\nThe solution so far is below. Continue it from exactly where it stops; write only "
                 "what comes next.\n\n")


class ApiGenerator(Generator):
    """One request per sample; a subclass builds the body, sends it and reads the answer."""

    batch_size = 1
    sdk: str

    def __init__(self, model: str, *, name: str, api_key: str, base_url: str | None,
                 price_model: str | None, timeout: float, transport: str = "auto") -> None:
        if not model:
            raise UserError(f"generator '{name}' needs a model name")
        try:
            importlib.import_module(self.sdk)
        except ImportError as exc:
            raise UserError(f"generator '{name}' needs the {self.sdk} package: "
                            "pip install 'stepwise-dpo[api]'") from exc
        choose(transport, importlib.import_module(self.sdk))  # a missing aiohttp: one line, up front
        self.transport = transport
        self.model = model
        self.name = name
        self.price_model = price_model
        self.timeout = timeout
        self._api_key = api_key
        self._base_url = base_url
        self._clients: ClientPool | None = None
        self._in_flight: int | None = None

    def use_concurrency(self, requests: int) -> None:
        self._in_flight = max(1, requests)

    def batch_connection(self) -> dict[str, Any]:
        """Key and base URL for the batch transport: batch and online requests go to the same
        place as the same account (as :meth:`labeler.judges.base.Judge.batch_connection`)."""
        return {"api_key": self._api_key, "base_url": self._base_url}

    def body(self, request: GenRequest, sampling: Sampling) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, request: GenRequest, body: Any, headers: dict[str, str]) -> Generation:
        raise NotImplementedError

    def make_client(self, http_client: Any) -> Any:
        """The SDK's async client on ``http_client`` (None: the SDK's default pool), with
        ``max_retries=0`` (the engine retries, once, visibly)."""
        raise NotImplementedError

    def path(self, body: dict[str, Any]) -> str:
        """The endpoint ``body`` is POSTed to, relative to the client's base URL."""
        raise NotImplementedError

    def _pool(self) -> ClientPool:
        if self._clients is None:  # the clients are built on the first send, inside the event loop
            self._clients = ClientPool(importlib.import_module(self.sdk), self.make_client, self._in_flight,
                                       self.timeout, self.transport)
        return self._clients

    async def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[Generation]:
        out = []
        for request in requests:
            body = self.body(request, sampling)
            # Compact UTF-8 JSON, as the SDKs encode it; one deadline for the whole request.
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            text, headers = await provider.call(self._pool(), self.path(body), data, timeout=self.timeout,
                                                secret=self._api_key)
            try:
                out.append(self.parse(request, json.loads(text), headers))
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                raise RetryableError(f"malformed answer: {type(exc).__name__}: {exc}"[:300], headers=headers) from None
        return out

    async def aclose(self) -> None:
        if self._clients is not None:
            clients, self._clients = self._clients, None
            await clients.aclose()


def _usage_openai(body: dict[str, Any]) -> dict[str, int]:
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0),
            "cached_tokens": int(details.get("cached_tokens") or 0)}


class OpenAIGenerator(ApiGenerator):
    """Chat Completions (``openai:``, and ``openai-compatible:`` with a chat template) or raw
    Completions (``openai-compatible:`` with a text template)."""

    sdk = "openai"

    def __init__(self, model: str, *, compatible: bool, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.compatible = compatible
        #: OpenAI's own API serves chat models only: raw-text templates are refused up front.
        self.chat_only = not compatible
        self.batch_provider = None if compatible else "openai"

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"model": self.model, "protocol": "openai-compatible" if self.compatible else "openai"}

    def body(self, request: GenRequest, sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "temperature": sampling.temperature, "top_p": sampling.top_p,
                                "seed": request.seed}
        if not request.chat:
            if not self.compatible:
                raise UserError("openai: serves chat models only; use --template chat "
                                "(or openai-compatible:MODEL@URL for raw completions)")
            body.update(prompt=request.prompt + request.prefill, max_tokens=sampling.max_new_tokens)
            return body
        messages = [{"role": "system", "content": request.system}] if request.system else []
        if self.compatible and request.prefill:
            # vLLM / SGLang continue a final assistant message when asked to.
            messages += [{"role": "user", "content": request.prompt},
                         {"role": "assistant", "content": request.prefill}]
            body.update(continue_final_message=True, add_generation_prompt=False)
        else:
            # No prefill here: a continuation's prefix is shown in the user turn; a fresh sample's
            # first marker is left to the model (the system prompt asks for 'Step k:' lines).
            shown = request.prompt + (CONTINUE_NOTE + request.prefill if request.continuation else "")
            messages.append({"role": "user", "content": shown})
        body.update(messages=messages)
        body["max_tokens" if self.compatible else "max_completion_tokens"] = sampling.max_new_tokens
        return body

    def parse(self, request: GenRequest, body: Any, headers: dict[str, str]) -> Generation:
        choice = body["choices"][0]
        if "text" in choice:
            text, prefilled = choice["text"], True
        else:
            message = choice.get("message") or {}
            if message.get("refusal"):
                raise RetryableError(f"the model refused: {str(message['refusal'])[:200]}", headers=headers)
            text = message.get("content") or ""
            prefilled = self.compatible and bool(request.prefill)
        if not isinstance(text, str):
            raise TypeError("answer text is not a string")
        return Generation(text=text, finish_reason=str(choice.get("finish_reason") or "stop"),
                          headers=headers, prefilled=prefilled or not request.prefill, **_usage_openai(body))

    def make_client(self, http_client: Any) -> Any:
        import openai

        return openai.AsyncOpenAI(api_key=self._api_key, base_url=self._base_url, max_retries=0,
                                  timeout=self.timeout, http_client=http_client)

    def path(self, body: dict[str, Any]) -> str:
        return "/completions" if "prompt" in body else "/chat/completions"


class AnthropicGenerator(ApiGenerator):
    """Messages API; the answer start goes in as an assistant prefill (Anthropic continues it)."""

    sdk = "anthropic"
    batch_provider = "anthropic"

    def fingerprint_parts(self) -> dict[str, Any]:
        # Newer Claude models refuse temperature and top_p together: only temperature is sent.
        # The Messages API takes no seed either.
        return {"model": self.model, "protocol": "anthropic-messages", "top_p": "not sent", "seed": "not sent"}

    def body(self, request: GenRequest, sampling: Sampling) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": request.prompt}]
        if request.prefill.strip():  # the API refuses a prefill ending in whitespace
            messages.append({"role": "assistant", "content": request.prefill.rstrip()})
        body: dict[str, Any] = {"model": self.model, "max_tokens": sampling.max_new_tokens,
                                "temperature": sampling.temperature, "messages": messages}
        if request.system:
            body["system"] = request.system
        return body

    def parse(self, request: GenRequest, body: Any, headers: dict[str, str]) -> Generation:
        usage = body.get("usage") or {}
        read = int(usage.get("cache_read_input_tokens") or 0)
        written = int(usage.get("cache_creation_input_tokens") or 0)
        text = "".join(b.get("text", "") for b in body.get("content") or [] if b.get("type") == "text")
        stripped = request.prefill.rstrip()
        full = stripped + text
        # The prefill's trailing whitespace was not sent; give back what follows the prefill as given.
        text = full[len(request.prefill):] if full.startswith(request.prefill) else text.lstrip()
        reason = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}.get(
            body.get("stop_reason"), str(body.get("stop_reason") or "stop"))
        return Generation(text=text, finish_reason=reason, headers=headers,
                          input_tokens=int(usage.get("input_tokens") or 0) + read + written,
                          output_tokens=int(usage.get("output_tokens") or 0), cached_tokens=read)

    def make_client(self, http_client: Any) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self._base_url, max_retries=0,
                                        timeout=self.timeout, http_client=http_client)

    def path(self, body: dict[str, Any]) -> str:
        return "/v1/messages"


def _key(env: str, who: str, required: bool) -> str | None:
    key = os.environ.get(env)
    if not key and required:
        raise UserError(f"generator {who} needs an API key: set the {env} environment variable")
    return key


def make_openai(model: str, timeout: float, transport: str = "auto") -> OpenAIGenerator:
    name = f"openai:{model}"
    return OpenAIGenerator(model, compatible=False, name=name, api_key=_key("OPENAI_API_KEY", name, True) or "",
                           base_url=os.environ.get("OPENAI_BASE_URL"), price_model=model, timeout=timeout,
                           transport=transport)


def make_openai_compatible(spec: str, timeout: float, transport: str = "auto") -> OpenAIGenerator:
    """``MODEL@BASE_URL``; a key is optional (local servers rarely check one)."""
    model, url = model_and_url(spec)  # the URL may carry user:password@
    if not url:
        raise UserError(f"generator 'openai-compatible:{spec}': expected openai-compatible:MODEL@BASE_URL, "
                        "e.g. openai-compatible:Qwen/Qwen2.5-7B-Instruct@http://localhost:8000/v1")
    # The URL is transport: not in the name or fingerprint, so another host of the model shares the cache.
    return OpenAIGenerator(model, compatible=True, name=f"openai-compatible:{model}",
                           api_key=_key("OPENAI_API_KEY", spec, False) or "unused", base_url=url,
                           price_model=model, timeout=timeout, transport=transport)


def make_anthropic(model: str, timeout: float, transport: str = "auto") -> AnthropicGenerator:
    name = f"anthropic:{model}"
    return AnthropicGenerator(model, name=name, api_key=_key("ANTHROPIC_API_KEY", name, True) or "",
                              base_url=os.environ.get("ANTHROPIC_BASE_URL"), price_model=model, timeout=timeout,
                              transport=transport)
