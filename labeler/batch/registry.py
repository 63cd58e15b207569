"""Batch transport names → classes, imported only when a batch of that provider is sent.

Like the judge registry (:mod:`labeler.judges.registry`): a judge names its transport in
``Judge.batch_provider``, and this table says which class speaks that provider's batch API.
Adding a batch provider touches its judge (``batch_provider``, ``request_body``/``parse_body``),
one transport file, one line here and the price table; nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from schemas.errors import UserError

if TYPE_CHECKING:
    from labeler.batch.base import Transport
    from labeler.judges.base import Judge

# provider -> ("module:Class", what it is)
TRANSPORTS: dict[str, tuple[str, str]] = {
    "openai": ("labeler.batch.openai_batch:OpenAIBatchTransport", "OpenAI Batch API (/v1/batches)"),
    "anthropic": ("labeler.batch.anthropic_batch:AnthropicBatchTransport", "Anthropic Message Batches"),
}


def transport_class(provider: str) -> type[Transport]:
    """The transport class of ``provider`` (its limits, final statuses and discount need no key)."""
    if provider not in TRANSPORTS:
        raise UserError(f"unknown batch provider '{provider}'; known: {', '.join(TRANSPORTS)}")
    module_name, _, cls = TRANSPORTS[provider][0].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"batch provider '{provider}' needs a package that is not installed: {exc.name} "
                        "(pip install 'stepwise-dpo[api]')") from exc
    return getattr(module, cls)


def create_transport(provider: str, **kwargs: Any) -> Transport:
    """A connected transport of ``provider`` (``api_key``, ``base_url``, ``limits``, ``timeout``)."""
    return transport_class(provider)(**kwargs)


def provider_for(judge: Judge) -> str:
    """The batch provider that can send ``judge``'s requests; a one-line error if none can."""
    provider = judge.batch_provider
    if provider is None:
        able = ", ".join(f"{p}:" for p in TRANSPORTS)
        raise UserError(f"--batch needs a judge with a provider batch API ({able} judges), not "
                        f"'{judge.name}'; label it online (without --batch)")
    if provider not in TRANSPORTS:
        raise UserError(f"judge '{judge.name}' names batch provider '{provider}', which is not registered")
    return provider
