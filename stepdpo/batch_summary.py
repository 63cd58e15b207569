"""The closing lines of a ``--batch`` run, one layout for ``label`` and ``generate``.

Both commands collect provider batches on the same machinery (labeler/batch/collect.py) and
record the same per-run fields in ``run.json`` (batches submitted and attached, cache hits,
cost at batch price, what was retried online first, batches still running); this prints them
the same way, so a user reads one summary whichever command ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NO_PRICE = "cost unknown (no price for this model: --prices FILE)"


def batch_lines(command: str, held: str, this: Mapping[str, Any], folder: Any, *, skipped: int,
                drawn: str = "", online_cost: float | None = None, online: str = "") -> list[str]:
    """The summary, the online-retry line (``online``, when given) and, when batches are still
    running, the line saying how to collect them. ``held`` says what the folder holds;
    ``online_cost`` is the part of the run's cost paid at the online price (None: all at batch
    price)."""
    cost = this.get("cost_usd")
    spent = NO_PRICE if cost is None else f"${cost:.4f} at batch price" if not online_cost \
        else f"${cost:.4f} (${cost - online_cost:.4f} at batch price + ${online_cost:.4f} online)"
    lines = [f"{command}: {held}; this run: {len(this['batches_submitted'])} batch(es) submitted, "
             f"{len(this['batches_attached'])} attached, {drawn}{skipped} already done, {this['cache_hits']} from "
             f"cache, {spent}"]
    if online:
        lines.append(f"{command}: {online}")
    if this["batches_pending"]:
        lines.append(f"{command}: {len(this['batches_pending'])} batch(es) still running; rerun the same command to "
                     f"collect them (`stepdpo batches {folder}` shows them)")
    return lines


def online_text(requests: int, cost_usd: float | None) -> str:
    """``N request(s), $X at online price`` of what a ``--batch-retry online`` rerun sent."""
    spent = "cost unknown (no price for this model)" if cost_usd is None else f"${cost_usd:.4f} at online price"
    return f"{requests} request(s), {spent}"
