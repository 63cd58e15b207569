"""Generator names → factories, imported only when a generator of that name is built, so
``stepdpo generate --help`` and API-only runs never import torch (and ``hf:`` never the SDKs).

Adding a backend: one module with a ``make_*(model, options)`` factory, plus one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labeler.registry_util import describe, resolve

if TYPE_CHECKING:
    from labeler.sources.generation.base import Generator

# prefix -> ("module:function", what it is, extra to install)
GENERATORS: dict[str, tuple[str, str, str | None]] = {
    "hf": ("labeler.sources.generation.hf:make_hf",
           "local transformers model, batched generate: hf:PATH_OR_HUB_ID", "local"),
    "openai-compatible": ("labeler.sources.generation.api:make_openai_compatible",
                          "any OpenAI-protocol server (vLLM, SGLang, llama.cpp): openai-compatible:MODEL@BASE_URL",
                          "api"),
    "openai": ("labeler.sources.generation.api:make_openai", "OpenAI chat models: openai:MODEL", "api"),
    "anthropic": ("labeler.sources.generation.api:make_anthropic", "Claude: anthropic:MODEL", "api"),
}


@dataclass
class GeneratorOptions:
    """Options of the backends, in one place so ``stepdpo generate --help`` lists them together."""

    timeout: float = field(default=600.0, metadata={"help": "API backends: seconds one request may take "
                                                           "in total before it is retried"})
    http_transport: str = field(
        default="auto",
        metadata={"help": "API backends: requests' HTTP transport under the SDK client: aiohttp (the SDKs' "
                          "aiohttp transport, about a quarter less client CPU per request; in "
                          "stepwise-dpo[api]), httpx (the SDKs' default: use it to debug with httpx's "
                          "logging, or if a proxy or TLS setting misbehaves under aiohttp), auto "
                          "(aiohttp when installed). Both honour HTTPS_PROXY/HTTP_PROXY/NO_PROXY",
                  "choices": ["auto", "aiohttp", "httpx"]},
    )
    batch_size: int = field(default=16, metadata={"help": "hf only: prompts per generate call"})
    device: str | None = field(default=None, metadata={"help": "hf only: cuda, cpu… (default: cuda if present)"})
    dtype: str | None = field(default=None, metadata={"help": "hf only: bfloat16, float16, float32 (default: "
                                                              "bf16 on cuda, fp32 on cpu)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "hf only: run the model repo's own code "
                                                                     "(only for repos you trust)"})


def generator_help() -> str:
    return describe(GENERATORS)


def create_generator(spec: str, options: GeneratorOptions | None = None) -> Generator:
    """Build the backend named by ``spec`` (e.g. ``hf:Qwen/Qwen2.5-0.5B-Instruct``)."""
    options = options or GeneratorOptions()
    factory, model = resolve(GENERATORS, spec, "generator")
    if spec.partition(":")[0] == "hf":
        return factory(model, options)
    return factory(model, options.timeout, options.http_transport)
