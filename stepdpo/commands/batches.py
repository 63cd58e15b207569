"""Show (or cancel) the provider batches of a run made with `stepdpo label --batch` or
`stepdpo generate --batch`.

For each batch recorded in RUN_DIR/batches/: its provider id, where it stands (our phase and
the provider's status), request counts, rows written, and cost so far at batch price (the
estimate, pro rata, while it runs). Statuses are refreshed from the provider unless --offline.
--cancel asks the provider to cancel every batch still running, one by one: a batch that
already ended is reported (the provider refuses to cancel it) and the others are still
cancelled; the command exits 1 if one could not be cancelled. Rerun the command that made the
folder (`stepdpo label` / `stepdpo generate`) afterwards to write their rows (canceled requests
are retried by the run after that). Only batches the provider created are listed.

examples:
  stepdpo batches work/run
  stepdpo batches work/run --cancel
  stepdpo batches work/run --offline --json
  stepdpo batches work/gen        # a `stepdpo generate --batch` folder
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from labeler.batch import state
from labeler.batch.registry import create_transport, transport_class
from labeler.batch.state import BatchRecord
from schemas.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="the -o folder of a `stepdpo label --batch` or `stepdpo generate --batch` run")
    parser.add_argument("--cancel", action="store_true", help="cancel every batch of the run that is still running")
    parser.add_argument("--offline", action="store_true",
                        help="show what the run folder recorded; do not ask the provider (no key needed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _transport(rec: BatchRecord, cache: dict[tuple[str, str | None], Any]) -> Any:
    """One connected transport per (provider, endpoint) the run's batches went to."""
    key = (rec.provider, rec.base_url)
    if key not in cache:
        cache[key] = create_transport(rec.provider, base_url=rec.base_url)
    return cache[key]


def cost_so_far(rec: BatchRecord) -> tuple[float | None, bool]:
    """(USD, is_estimate): the joined cost once ingested, else the estimate pro rata."""
    if rec.done:
        return rec.cost_usd, False
    if rec.estimated_cost_usd is None:
        return None, True
    total = rec.n_requests or 1
    answered = transport_class(rec.provider).succeeded(rec.counts)
    return rec.estimated_cost_usd * answered / total, True


def made_by(run_dir: Path) -> str:
    """The command whose rerun collects the folder's batches (from its run.json)."""
    try:
        schema = json.loads((run_dir / "run.json").read_text("utf-8")).get("schema", "")
    except (OSError, ValueError, AttributeError):
        schema = ""
    return "generate" if str(schema).startswith("stepdpo.generate/") else "label"


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    cmd = made_by(run_dir)
    everything = state.load_all(run_dir)
    # A record without a provider id is a submission that never got one: not a batch to show.
    records = [r for r in everything if r.batch_id is not None]
    unsure = [r for r in everything if r.batch_id is None and not r.done]
    if not records:
        raise UserError(f"{run_dir}: no provider batches recorded (was it made with --batch?)")
    transports: dict[tuple[str, str | None], Any] = {}
    cancelled: list[str] = []
    refused: list[str] = []  # ended before we asked: nothing to cancel
    failed: list[str] = []  # still running, and the cancel did not go through
    try:
        for rec in records:
            if rec.done or args.offline or rec.batch_id is None:
                continue
            t = _transport(rec, transports)
            if args.cancel:
                try:
                    poll = t.cancel(rec.batch_id)
                except Exception as exc:  # noqa: BLE001 - one batch's failure must not spare the others
                    failed.append(f"{rec.key}: {type(exc).__name__}: {exc}"[:300])
                    continue
                if poll.refused is None:
                    rec.cancel_requested = True
                    cancelled.append(rec.key)
                elif poll.final:
                    refused.append(f"{rec.key} had already ended ({poll.status})")
                else:
                    failed.append(f"{rec.key}: {poll.refused}")
            else:
                poll = t.poll(rec.batch_id)
            rec.status, rec.counts = poll.status, poll.counts
            if poll.final and rec.phase == "submitted":
                rec.phase = "ended"
            state.save(run_dir, rec)
    finally:
        for t in transports.values():
            t.close()
    if args.json:
        out = []
        for rec in records:
            d = asdict(rec)
            d.pop("manifest")
            d["n_requests"] = rec.n_requests
            d["cost_so_far_usd"], d["cost_is_estimate"] = cost_so_far(rec)
            out.append(d)
        cancel = {"cancelled": cancelled, "already_ended": refused, "failed": failed} if args.cancel else {}
        print(json.dumps({"run_dir": str(run_dir), "batches": out, **cancel}, indent=2, sort_keys=True))
        return 1 if failed else 0
    print(render(records))
    if unsure:
        print(f"{len(unsure)} submission(s) stopped before the provider gave an id; the next `stepdpo {cmd} "
              "--batch` run finds the batch if it was created, or submits its rows anew")
    running = [r for r in records if not r.done]
    if args.cancel:
        if cancelled:
            print(f"cancel requested for {len(cancelled)} batch(es); rerun `stepdpo {cmd}` on {run_dir} to collect "
                  "what they finished")
        for line in refused:
            print(f"not cancelled: {line}; rerun `stepdpo {cmd}` on {run_dir} to collect it")
        for line in failed:
            print(f"could not cancel {line}")
        if not (cancelled or refused or failed):
            print("nothing to cancel: every batch was already collected")
        return 1 if failed else 0
    if running:
        print(f"{len(running)} batch(es) not collected yet; rerun `stepdpo {cmd} ... --batch` on {run_dir} to collect")
    return 0


def render(records: list[BatchRecord]) -> str:
    """A plain table, one line per batch, and a total line."""
    head = ("batch", "provider id", "phase", "status", "requests", "done", "ok", "error", "cost so far", "age")
    lines = [head]
    total_cost, est = 0.0, False
    now = time.time()
    for rec in records:
        cost, is_est = cost_so_far(rec)
        if cost is not None:
            total_cost += cost
        est = est or (is_est and cost is not None)
        cost_s = "?" if cost is None else f"{'~' if is_est else ''}${cost:.4f}"
        age = now - rec.created_at
        age_s = f"{age / 3600:.1f}h" if age >= 3600 else f"{age / 60:.0f}m"
        lines.append((rec.key, rec.batch_id or "-", rec.phase, rec.status or "-", str(rec.n_requests),
                      str(transport_class(rec.provider).finished(rec.counts)), str(rec.rows.get("ok", 0)), str(rec.rows.get("error", 0)),
                      cost_s, age_s))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in lines)
    n_req = sum(r.n_requests for r in records)
    return text + f"\ntotal: {len(records)} batch(es), {n_req} requests, {'~' if est else ''}${total_cost:.4f} at batch price"
