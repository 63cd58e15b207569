"""The one interface every generation backend implements.

A backend turns rendered prompts into text. Like a judge, it does no retrying, caching, rate
limiting or cost accounting (the generation engine does those once for every backend, with the
labeling engine's parts) and only *classifies* its failures as ``RetryableError`` or
``FatalError``. A backend that can batch (``hf:``) takes up to ``batch_size`` requests per call;
API backends take one.

``GenRequest.prefill`` is text the answer must continue: the template's ``Step 1: `` or, for a
continuation, the correct prefix of a labeled solution. Backends that can continue text (raw
completions, a local model, Anthropic's assistant prefill) send it as the start of the answer;
chat APIs that cannot (OpenAI) are shown it in the user turn and asked to go on from there.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from labeler.judges.base import FatalError, RetryableError  # noqa: F401 - re-exported for backends
from schemas.ids import sha256_hex


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters; every field changes the output, so all of them key the cache."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 1024
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenRequest:
    """One sample to draw. ``key`` identifies the (problem, prefix, sample index) task."""

    key: str
    #: The instruction: the whole prompt for raw-text templates, the user turn for chat ones.
    prompt: str
    system: str | None = None
    chat: bool = False
    #: Text the answer starts with (sent as the beginning of the answer where the API allows).
    prefill: str = ""
    sample_index: int = 0
    #: Per-request seed (from --seed and the task key), for APIs that take one.
    seed: int = 0
    #: True when ``prefill`` holds steps of a solution being continued (not just a step marker).
    continuation: bool = False

    def cache_view(self) -> dict[str, Any]:
        """What the answer depends on (not the key: the same prompt under two ids is one job)."""
        return {"prompt": self.prompt, "system": self.system, "chat": self.chat, "prefill": self.prefill,
                "sample_index": self.sample_index, "seed": self.seed}


@dataclass
class Generation:
    """A backend's answer: the generated text only (without ``prefill``) and its usage."""

    text: str
    finish_reason: str = "stop"  # stop | length | other provider reasons
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    headers: Mapping[str, str] | None = None
    #: True when ``prefill`` really was the start of the answer (False: the model was only shown it).
    prefilled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "finish_reason": self.finish_reason, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cached_tokens": self.cached_tokens,
                "prefilled": self.prefilled}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Generation:
        if not isinstance(data, Mapping) or not isinstance(data.get("text"), str):
            raise ValueError("not a generation (no 'text')")
        return cls(text=data["text"], finish_reason=str(data.get("finish_reason") or "stop"),
                   input_tokens=int(data.get("input_tokens") or 0), output_tokens=int(data.get("output_tokens") or 0),
                   cached_tokens=int(data.get("cached_tokens") or 0), prefilled=bool(data.get("prefilled", True)))


class Generator(abc.ABC):
    """Samples answers to rendered prompts."""

    #: Registry name including the model, e.g. ``openai-compatible:Qwen/Qwen2.5-7B-Instruct``.
    name: str
    #: Requests per :meth:`generate` call (a local model batches; API backends send one).
    batch_size: int = 1
    #: The model whose price applies (None for local models: free).
    price_model: str | None = None
    #: The provider batch API (a name in :mod:`labeler.batch.registry`) that can send this
    #: backend's request bodies unchanged (``generate --batch``); None where there is none.
    batch_provider: str | None = None

    @abc.abstractmethod
    def fingerprint_parts(self) -> dict[str, Any]:
        """Everything that changes the output besides the prompt and sampling parameters: the
        model (and its revision / weights hash where known), the protocol. Never secrets."""

    def fingerprint(self) -> str:
        return sha256_hex({"generator": self.name, **self.fingerprint_parts()})[:16]

    @abc.abstractmethod
    async def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[Generation]:
        """One Generation per request, same order (at most :attr:`batch_size` requests)."""

    def use_concurrency(self, requests: int) -> None:  # noqa: B027 - optional hook
        """How many calls the engine keeps in flight at most, before the first :meth:`generate`
        (API backends size their connection pools to it, as API judges do)."""

    def estimate_tokens(self, request: GenRequest, sampling: Sampling) -> tuple[int, int]:
        """Rough (input, output) tokens, for ``--dry-run`` and the limiter: output is the cap."""
        text = (request.system or "") + request.prompt + request.prefill
        return len(text) // 4 + 8, sampling.max_new_tokens

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and models."""
