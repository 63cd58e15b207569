"""How a judge call can fail: the two classes the engine acts on.

They live here, below both ``labeler.judges`` (which raises them) and ``labeler.engine`` (whose
retry and runner act on them), so neither package imports the other for them. A judge only
*classifies* a failure; :mod:`labeler.engine.retry` decides when to try again and
:mod:`labeler.engine.runner` what to write.
"""

from __future__ import annotations

from collections.abc import Mapping


class JudgeError(Exception):
    """Base of the two classes of judge failure.

    ``headers``: the provider's rate-limit headers of the failed response (lower-cased keys), so
    the engine's limiter learns from failures too.
    """

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers


class RetryableError(JudgeError):
    """Worth trying again later: rate limits, server errors, timeouts, malformed output.

    ``retry_after``: seconds the server asked us to wait. ``usage``: tokens a malformed answer
    still cost (``input_tokens``, ``output_tokens``, ``cached_tokens``), so the engine counts the
    spend of an attempt it throws away. ``down``: the failure looks like a down or unreachable
    server (``"timeout"``, ``"connection error"``, ``"HTTP 503"``…); the engine stops a run whose
    first requests all fail that way.
    """

    usage: dict[str, int] | None = None
    down: str | None = None

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        usage: dict[str, int] | None = None,
        down: str | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.retry_after = retry_after
        self.usage = usage
        self.down = down


class FatalError(JudgeError):
    """Trying again cannot help: bad request, authentication, unknown model.

    ``abort``: every later request would fail the same way (a bad key, an unknown model), so the
    engine stops the run instead of failing each row in turn.
    """

    abort: bool = False

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None, abort: bool = False) -> None:
        super().__init__(message, headers=headers)
        self.abort = abort
