"""The one interface every judge implements.

A judge takes a batch of responses and returns per-step scores in [0, 1] plus token usage.
It does no retrying, caching, rate limiting or cost accounting: the engine does those once for
all judges. A judge only *classifies* its failures: RetryableError (429, 5xx, timeouts,
connection resets, a malformed answer worth asking again) or FatalError (bad request, auth,
unknown model), and the engine acts on the class (both classes live in :mod:`labeler.errors`).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labeler.errors import FatalError, JudgeError, RetryableError
from schemas.ids import sha256_hex

# The failure classes live in labeler.errors (below judges and engine alike); judges raise them.
__all__ = ["FatalError", "Item", "Judge", "JudgeError", "RetryableError", "Verdict"]


@dataclass
class Item:
    """One response to judge (the fields of a `responses` row a judge may use)."""

    response_id: str
    prompt: str
    steps: list[str]
    gold_answer: str | None = None
    final_answer: str | None = None
    reference_scores: list[float | None] | None = None
    meta: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Item:
        """The item of a ``responses`` (or ``step_scores``) row: the one place a row becomes an
        item, for the online engine, batch mode and ``--dry-run`` alike."""
        return cls(
            response_id=row["response_id"], prompt=row["prompt"], steps=list(row["steps"]),
            gold_answer=row.get("gold_answer"), final_answer=row.get("final_answer"),
            reference_scores=row.get("reference_scores"), meta=row.get("meta"),
        )


@dataclass
class Verdict:
    """A judge's answer for one item.

    ``scores`` has one entry per step (None where the judge gave none). ``error`` set means the
    judge answered but could not score this item (e.g. it is longer than the model's context);
    the row is written with status=error and that message, and is not retried in this run.
    """

    scores: list[float | None]
    raw: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    # Provider rate-limit headers of the response, for the engine's limiter (lower-cased keys).
    headers: Mapping[str, str] | None = None

    def mismatch(self, item: Item) -> str | None:
        """Why these scores cannot be ``item``'s (one score per step is the contract), or None.

        The one place the score count is checked: a fresh answer that fails it becomes an error
        row (:meth:`checked`), a cached one a cache miss."""
        if len(self.scores) != len(item.steps):
            return f"judge gave {len(self.scores)} score(s) for {len(item.steps)} step(s)"
        return None

    def checked(self, item: Item) -> Verdict:
        """This verdict, with ``error`` set when its scores do not fit ``item`` (and no error was
        set before)."""
        if self.error is None:
            self.error = self.mismatch(item)
        return self


class Judge(abc.ABC):
    """Scores all steps of each response it is given."""

    #: Registry name including the model, e.g. ``openai:gpt-4o-mini``; stored in each row.
    name: str
    #: How many items one :meth:`judge` call takes (1 for API judges: one request each).
    batch_size: int = 1
    #: The model whose price applies (None for free judges).
    price_model: str | None = None
    #: Name of the provider batch transport (:mod:`labeler.batch.registry`) that can send this
    #: judge's requests at batch price; None: online only. A judge that sets it also provides
    #: ``request_body(item)`` / ``parse_body(item, body)``, its wire format.
    batch_provider: str | None = None

    @abc.abstractmethod
    def fingerprint_parts(self) -> dict[str, Any]:
        """Everything that changes this judge's output: model, template text, decoding params.

        Never include secrets (API keys) or transport details (base URL, timeouts).
        """

    def fingerprint(self) -> str:
        return sha256_hex({"judge": self.name, **self.fingerprint_parts()})[:16]

    @abc.abstractmethod
    async def judge(self, items: list[Item]) -> list[Verdict]:
        """Score ``items`` (at most :attr:`batch_size`); one Verdict per item, same order."""

    def cache_inputs(self, item: Item) -> dict[str, Any] | None:
        """Fields of ``item`` besides the prompt and steps that this judge's answer depends on;
        they join the cache key so that the same solution with another gold answer or other
        human labels is never answered from the cache. None: prompt and steps decide."""
        return None

    def use_cache(self, cache: Any) -> None:  # noqa: B027 - optional hook
        """The engine's judge cache, for judges that cache parts of an answer themselves (the
        samples of ``--samples N``); most judges ignore it."""

    def use_concurrency(self, requests: int) -> None:  # noqa: B027 - optional hook
        """How many batches the engine keeps in flight at once (``--concurrency``), before the
        first :meth:`judge` call; API judges size their connection pools to it."""

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        """Rough (input, output) tokens of judging ``item``, for ``--dry-run`` and the limiter."""
        text = item.prompt + "".join(item.steps)
        return len(text) // 4 + 1, 16 * len(item.steps)

    def batch_connection(self) -> dict[str, Any]:
        """Keyword arguments for this judge's batch transport (``api_key``, ``base_url``), so
        batch and online requests go to the same place as the same account. Never logged."""
        return {}

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most judges hold nothing
        """Release clients and models."""
