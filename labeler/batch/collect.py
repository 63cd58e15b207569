"""Submit, persist, poll, join: the batch transport loop (:func:`submit_and_collect`).

Only the transport differs from the online engine: the same judge builds each request body
(``judge.request_body(item)``) and reads each answer (``judge.parse_body(item, body)``), and
rows, cache entries and shards go through a :class:`Sink` (:mod:`labeler.batch.sink`) made of
the engine's own pieces. So a batch run and an online run of the same job give the same rows.

Flow of :func:`submit_and_collect`:
1. attach to every batch of this judge fingerprint that an earlier run left short of
   ``ingested`` (see :mod:`labeler.batch.state`); a record killed before its id was written is
   matched to the provider's batch list; rows in those batches are not submitted again;
2. cut the remaining requests to the provider's limits and submit each batch, writing intent,
   file id and batch id to the run folder as each becomes known;
3. poll every ``poll_interval`` seconds until all batches are final (or ``--no-batch-wait``);
4. join each finished batch's results by ``custom_id``; errored / expired / canceled requests
   and unusable answers become rows with ``status=error`` (error text starting ``batch ``, so
   the next run knows to retry them, in a new batch or online, ``--batch-retry``); one shard
   per batch. A crash between writing a shard and marking its record ingested makes the rerun
   join that batch again: its ok rows are skipped as done, its error rows are superseded by
   the run folder's compaction.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from labeler.batch import state
from labeler.batch.base import Limits, Result, SubmitError, Transport, chunk
from labeler.batch.options import BatchOptions
from labeler.batch.registry import create_transport, provider_for, transport_class
from labeler.batch.state import BatchRecord
from labeler.judges.base import Item, Judge, Verdict
from schemas.errors import UserError

#: What both providers bill a batch request today, as a fraction of the online price (each
#: transport carries its own ``discount``; this is the default of :class:`Transport`).
BATCH_DISCOUNT = Transport.discount


class Sink(Protocol):
    """How rows reach the run folder; built by the label command from the engine's pieces."""

    def row(self, response: Mapping[str, Any], verdict: Verdict | None, error: str | None,
            cost_usd: float | None, latency_s: float) -> dict[str, Any]:
        """A ``step_scores`` row for ``response`` (same fields as the online engine writes)."""

    def write(self, rows: list[dict[str, Any]], name: str) -> None:
        """Write ``rows`` as one more shard, atomically (``name`` is a hint for logs)."""

    def cache_put(self, response: Mapping[str, Any], verdict: Verdict) -> None:
        """Remember a paid answer (never called for errors)."""

    #: False when the model has no price: costs are unknown (None), never a made-up 0.
    priced: bool

    def cost(self, verdict: Verdict) -> float | None:
        """Online price of a verdict's tokens in USD, None if unknown (the runner applies the
        batch discount)."""


@dataclass
class BatchSummary:
    submitted: list[str] = field(default_factory=list)  # record keys submitted by this run
    attached: list[str] = field(default_factory=list)  # records of earlier runs picked up
    pending: list[str] = field(default_factory=list)  # records still running at return
    rows: dict[str, int] = field(default_factory=dict)  # rows written by status
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


def make_transport(judge: Judge, options: BatchOptions | None = None) -> Transport:
    """The batch transport of ``judge``'s provider, with the judge's own key and endpoint (so
    batch and online requests go to the same place), cut to ``options``' limits."""
    options = options or BatchOptions()
    cls = transport_class(provider_for(judge))
    top = cls.default_limits
    limits = Limits(
        min(options.batch_max_requests or top.max_requests, top.max_requests),
        min(int((options.batch_max_mb or 1e9) * 1024 * 1024), top.max_bytes),
    )
    connection = {k: v for k, v in judge.batch_connection().items() if v}
    return create_transport(cls.provider, limits=limits, **connection)


def say(msg: str) -> None:
    """The default log of batch mode: one line on stderr."""
    print(f"stepdpo batch: {msg}", file=sys.stderr, flush=True)


def submit_and_collect(
    judge: Judge,
    rows: Sequence[Mapping[str, Any]],
    run_dir: str,
    sink: Sink,
    options: BatchOptions | None = None,
    *,
    transport: Transport | None = None,
    after_submit: Callable[[BatchRecord], None] | None = None,
    log: Callable[[str], None] = say,
    job: str = "",
) -> BatchSummary:
    """Judge ``rows`` (responses not yet done and not cached) through the provider's batch API.

    ``job`` is the run folder's job tag (:attr:`labeler.engine.rundir.RunDir.tag`), so machines that
    share a folder with ``--num-shards`` attach only to their own batches.

    ``after_submit`` is called once per batch right after its id is persisted (tests abort
    there to prove that a rerun attaches instead of resubmitting).
    """
    options = options or BatchOptions()
    own = transport is None
    transport = transport or make_transport(judge, options)
    fingerprint = judge.fingerprint()
    summary = BatchSummary()
    todo: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        todo.setdefault(r["response_id"], r)  # two copies of one solution are one piece of work
    try:
        # 1. attach to what earlier runs left in flight
        records = state.in_flight(run_dir, fingerprint, job)
        claimed = {r.batch_id for r in state.load_all(run_dir) if r.batch_id}
        live: list[BatchRecord] = []
        for rec in records:
            if rec.batch_id is None:
                found = transport.find_orphan(rec, claimed)
                if found is None:
                    # Never reached the provider: forget it; its rows go into a new batch.
                    rec.phase, rec.status = "ingested", "never-submitted"
                    state.save(run_dir, rec)
                    log(f"{rec.key}: was never submitted; its {rec.n_requests} request(s) go into a new batch")
                    continue
                rec.batch_id, rec.phase = found, "submitted"
                claimed.add(found)
                state.save(run_dir, rec)
            live.append(rec)
            summary.attached.append(rec.key)
            log(f"attached to {rec.provider} batch {rec.batch_id} ({rec.n_requests} requests, "
                f"last status {rec.status})")
        covered = {rid for rec in live for rid in rec.manifest.values()}

        # 2. submit the rest, cut to the provider's limits
        fresh = [rid for rid in todo if rid not in covered]
        encoded = [(rid, transport.encode(rid, judge.request_body(Item.from_row(todo[rid])))) for rid in fresh]
        for part in chunk(encoded, transport.limits):
            rec = BatchRecord(
                key=state.new_key(transport.provider, fingerprint, [c for c, _ in part], job),
                provider=transport.provider, judge=judge.name, fingerprint=fingerprint, job=job,
                manifest={cid: cid for cid, _ in part}, request_bytes=sum(len(x) + 1 for _, x in part),
                base_url=transport.base_url,
                estimated_cost_usd=_estimate(judge, sink, [todo[c] for c, _ in part], transport.discount),
            )
            state.save(run_dir, rec)  # intent first: a crash from here on is recoverable
            try:
                transport.submit(rec, [x for _, x in part], lambda r: state.save(run_dir, r))
            except SubmitError as exc:
                _submit_failed(run_dir, rec, exc, summary)
            rec.submitted_at = time.time()
            state.save(run_dir, rec)
            claimed.add(rec.batch_id or "")
            live.append(rec)
            summary.submitted.append(rec.key)
            log(f"submitted {rec.provider} batch {rec.batch_id}: {rec.n_requests} requests, "
                f"{rec.request_bytes / 1e6:.1f} MB")
            if after_submit is not None:
                after_submit(rec)

        # 3. poll until every batch is final; 4. join and write each as it ends
        started = time.monotonic()
        while live:
            for rec in list(live):
                if rec.phase != "ended":
                    poll = transport.poll(rec.batch_id or "")
                    rec.status, rec.counts, rec.message = poll.status, poll.counts, poll.message
                    if poll.final:
                        rec.phase = "ended"
                    state.save(run_dir, rec)
                if rec.phase == "ended":
                    _ingest(rec, judge, transport, todo, sink, run_dir, summary, log)
                    live.remove(rec)
            if not live:
                break
            waited = time.monotonic() - started
            if not options.batch_wait or (options.batch_max_wait is not None and waited >= options.batch_max_wait):
                summary.pending = [r.key for r in live]
                log(f"{len(live)} batch(es) still running; rerun the same command to collect them")
                break
            time.sleep(options.poll_interval)
    finally:
        if own:
            transport.close()
    return summary


def _submit_failed(run_dir: str, rec: BatchRecord, exc: SubmitError, summary: BatchSummary) -> None:
    """One line for a batch that could not be submitted; its record is kept only if the
    provider may have created the batch anyway (the next run then finds it or resubmits)."""
    if not exc.maybe_created:
        state.forget(run_dir, rec)
    hint = ("this server has no provider batch API: run without --batch" if exc.no_batch_api
            else "the next run looks for it and attaches or resubmits; rerun the same command"
            if exc.maybe_created else "nothing was submitted; fix the cause and rerun the same command")
    done = f" ({len(summary.submitted)} earlier batch(es) of this run were submitted and are kept)" \
        if summary.submitted else ""
    raise UserError(f"{exc}; {hint}{done}")


def _estimate(judge: Judge, sink: Sink, responses: list[Mapping[str, Any]], discount: float) -> float | None:
    """Batch-price cost of ``responses`` from the judge's own token estimate."""
    total_in = total_out = 0
    for r in responses:
        i, o = judge.estimate_tokens(Item.from_row(r))
        total_in, total_out = total_in + i, total_out + o
    online = sink.cost(Verdict([], input_tokens=total_in, output_tokens=total_out))
    return None if online is None else online * discount


def _ingest(
    rec: BatchRecord,
    judge: Judge,
    transport: Transport,
    todo: Mapping[str, Mapping[str, Any]],
    sink: Sink,
    run_dir: str,
    summary: BatchSummary,
    log: Callable[[str], None],
) -> None:
    """Join a final batch's results to its manifest and write one shard for it."""
    latency = max(0.0, time.time() - (rec.submitted_at or rec.created_at))
    seen: dict[str, Result] = {}
    for res in transport.results(rec.batch_id or ""):
        if res.custom_id in rec.manifest:
            seen.setdefault(res.custom_id, res)
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    tokens = [0, 0, 0]
    cost_total = 0.0
    for cid, rid in rec.manifest.items():
        response = todo.get(rid)
        if response is None:
            continue  # done meanwhile (an earlier join of this batch, or another shard) or not in this job
        res = seen.get(cid) or Result(cid, error=f"batch {rec.status}: {rec.message or 'no result returned'}",
                                      kind="errored")
        verdict, error, cost = None, res.error, None
        if res.body is not None:
            item = Item.from_row(response)
            try:
                verdict = judge.parse_body(item, res.body)  # type: ignore[attr-defined]
            except Exception as exc:  # an unusable answer is this row's error, not the batch's
                error = f"batch answer unusable: {exc}"
            if verdict is not None:
                verdict.checked(item)
                online = sink.cost(verdict)
                cost = None if online is None else online * transport.discount
                tokens[0] += verdict.input_tokens
                tokens[1] += verdict.output_tokens
                tokens[2] += verdict.cached_tokens
                error = verdict.error
        row = sink.row(response, verdict, error, cost, latency)
        rows.append(row)
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        cost_total += cost or 0.0
        if verdict is not None and row["status"] == "ok":
            sink.cache_put(response, verdict)
    if rows:
        sink.write(rows, f"part-batch-{rec.key}.parquet")
    rec.rows = counts
    rec.input_tokens, rec.output_tokens, rec.cached_tokens = tokens
    rec.cost_usd = cost_total
    rec.phase = "ingested"
    state.save(run_dir, rec)
    for k, v in counts.items():
        summary.rows[k] = summary.rows.get(k, 0) + v
    summary.cost_usd += cost_total
    summary.input_tokens += tokens[0]
    summary.output_tokens += tokens[1]
    summary.cached_tokens += tokens[2]
    priced = sink.priced  # no price for the model: the cost is unknown
    log(f"{rec.provider} batch {rec.batch_id} {rec.status}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        + (f", ${cost_total:.4f} at batch price" if priced else ", cost unknown (no price for this model)"))
