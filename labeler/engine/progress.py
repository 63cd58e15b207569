"""What a labeling run is doing, while it does it.

On a terminal: a rich live panel (rows/s, requests, retries, tokens, cost, ETA). Elsewhere (CI,
``nohup``, a pipe): one plain log line every ``interval`` seconds and one at the end, so a log
file stays readable. Only counters are shown: never a prompt, a header or a key.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any


@dataclass
class Stats:
    total: int = 0  # rows this run must produce
    skipped: int = 0  # already done in the run folder
    done: int = 0
    ok: int = 0
    error: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0  # spent by this run's requests (cache hits cost nothing)
    cost_known: bool = True  # False: the model has no price (--prices FILE), cost_usd means nothing
    started: float = field(default_factory=time.monotonic)
    #: Why this run's error rows failed: reason → rows (see :func:`error_reason`).
    reasons: Counter[str] = field(default_factory=Counter)

    def reasons_text(self, top: int = 3) -> str:
        """``5 × timeout: …, 2 × HTTP 400: …`` (the most common reasons first)."""
        common = self.reasons.most_common()
        text = ", ".join(f"{n} × {r}" for r, n in common[:top])
        rest = sum(n for _, n in common[top:])
        return text + (f", {rest} × other reasons" if rest else "")

    @property
    def elapsed(self) -> float:
        return max(1e-9, time.monotonic() - self.started)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed

    @property
    def eta(self) -> float | None:
        left = self.total - self.done
        return left / self.rate if self.rate > 0 and left > 0 else (0.0 if left <= 0 else None)

    def line(self) -> str:
        eta = "?" if self.eta is None else _dur(self.eta)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done}/{self.total} rows ({pct:.1f}%), {self.rate:.1f} rows/s, ok {self.ok}, "
            f"error {self.error}, cache hits {self.cache_hits}, requests {self.requests}, "
            f"retries {self.retries}, tokens in {_k(self.input_tokens)} (cached {_k(self.cached_tokens)}) "
            f"out {_k(self.output_tokens)}, cost {self.cost_text()}, ETA {eta}"
        )

    def cost_text(self) -> str:
        return f"${self.cost_usd:.4f}" if self.cost_known else "unknown (no price for this model: --prices FILE)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_total": self.total, "rows_skipped_done": self.skipped, "rows_done": self.done,
            "ok": self.ok, "error": self.error, "cache_hits": self.cache_hits,
            "requests": self.requests, "retries": self.retries, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "cached_tokens": self.cached_tokens,
            "cost_usd": round(self.cost_usd, 6) if self.cost_known else None, "elapsed_s": round(self.elapsed, 3),
            "rows_per_s": round(self.rate, 3), "errors_by_reason": dict(self.reasons.most_common(10)),
        }


_PREFIX = re.compile(r"^(?:(?:gave up after retries|not retryable|internal error): )?"
                     r"(?:(?:RetryableError|FatalError|JudgeError): )?")


def error_reason(error: str | None) -> str:
    """The reason of an error row, without the retry verdict and class name, cut to one line."""
    text = _PREFIX.sub("", (error or "unknown").strip()).splitlines()[0] if error else "unknown"
    return text if len(text) <= 100 else text[:99] + "…"


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def _dur(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """``async with Progress(stats, mode):`` shows ``stats`` until the block ends.

    mode: ``auto`` (rich on a TTY, log lines otherwise), ``rich``, ``log`` or ``none``.
    """

    def __init__(self, stats: Stats, mode: str = "auto", interval: float = 10.0,
                 stream: IO[str] | None = None, label: str = "label") -> None:
        self.stats, self.interval, self.label = stats, interval, label
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "rich" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.mode = mode
        self._live: Any = None
        self._task: asyncio.Task | None = None

    def _render(self) -> Any:
        from rich.table import Table

        s = self.stats
        table = Table.grid(padding=(0, 2))
        pct = 100.0 * s.done / s.total if s.total else 100.0
        eta = "?" if s.eta is None else _dur(s.eta)
        table.add_row("[bold]rows[/]", f"{s.done}/{s.total} ({pct:.1f}%)", "[bold]rows/s[/]", f"{s.rate:.1f}",
                      "[bold]ETA[/]", eta)
        table.add_row("[green]ok[/]", str(s.ok), "[red]error[/]", str(s.error), "cache hits", str(s.cache_hits))
        table.add_row("requests", str(s.requests), "retries", str(s.retries), "cost",
                      f"${s.cost_usd:.4f}" if s.cost_known else "unknown")
        table.add_row("tokens in", _k(s.input_tokens), "cached", _k(s.cached_tokens), "out", _k(s.output_tokens))
        return table

    async def _log_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            print(f"{self.label}: {self.stats.line()}", file=self.stream, flush=True)

    async def __aenter__(self) -> Progress:
        if self.mode == "rich":
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=Console(file=self.stream),
                              refresh_per_second=4, transient=False)
            self._live.start()
        elif self.mode == "log":
            self._task = asyncio.create_task(self._log_loop())
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.mode != "none":
            # Ctrl-C (CancelledError/KeyboardInterrupt) or a crash: the run did not finish.
            end = "finished" if exc_type is None else "stopped"
            print(f"{self.label}: {end}: {self.stats.line()}", file=self.stream, flush=True)
