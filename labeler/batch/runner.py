"""``stepdpo label --batch``: a labeling job through provider batch APIs, end to end.

:func:`run_batch_label` is the whole job: the online engine's plan (repair the folder, skip
done rows, answer cached ones), then rows that failed inside an earlier batch retried online
(``--batch-retry online``) through the engine itself, then the rest through
:func:`labeler.batch.collect.submit_and_collect`, then ``run.json`` with batch pricing (half
the online rate). The label command (`stepdpo/commands/label.py`) calls :func:`run_batch_label`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from labeler.batch import state
from labeler.batch.base import Transport
from labeler.batch.collect import (
    BATCH_DISCOUNT,
    BatchOptions,
    BatchSummary,
    Sink,
    make_transport,
    say,
    submit_and_collect,
)
from labeler.batch.registry import provider_for, transport_class
from labeler.batch.state import BatchRecord
from labeler.judges.base import Judge

__all__ = ["BATCH_DISCOUNT", "BatchOptions", "BatchSummary", "Sink", "batch_costs", "batch_error_ids",
           "make_transport", "provider_for", "run_batch_label", "submit_and_collect"]


def batch_error_ids(run_dir: Any) -> set[str]:
    """Responses whose row in the folder is an error that happened inside a provider batch."""
    table = run_dir.read_rows(status="error")
    if table is None:
        return set()
    return {rid for rid, err in zip(table.column("response_id").to_pylist(),
                                    table.column("error").to_pylist(), strict=True)
            if (err or "").startswith("batch ")}


def batch_costs(estimate: Mapping[str, Any], discount: float = BATCH_DISCOUNT) -> dict[str, Any]:
    """``--dry-run`` side by side: the online estimate and the same job at batch price
    (``discount``: the provider transport's, as a fraction of the online price)."""
    online = estimate.get("cost_usd")
    return {"online_cost_usd": online,
            "batch_cost_usd": None if online is None else round(online * discount, 4),
            "batch_discount": discount}


def run_batch_label(
    judge: Judge,
    rows: Sequence[dict[str, Any]],
    run_dir: Any,
    *,
    cache: Any = None,
    prices: Mapping[str, Any] | None = None,
    options: BatchOptions | None = None,
    engine_config: Any = None,
    manifest: Mapping[str, Any] | None = None,
    transport: Transport | None = None,
    after_submit: Callable[[BatchRecord], None] | None = None,
    log: Callable[[str], None] = say,
) -> dict[str, Any]:
    """Label ``rows`` (responses dicts, as :func:`labeler.engine.runner.load_rows` gives) into the
    :class:`labeler.engine.rundir.RunDir` ``run_dir`` through the provider's batch API; returns the
    ``run.json`` it wrote.

    Same cache, same rows, same shards and same resume rule as the online engine: only the
    transport differs. Rows that failed inside an earlier batch are retried online (through the
    engine, with its retries and rate limits) when ``options.batch_retry == "online"``.
    """
    import asyncio
    import datetime as dt

    from labeler.batch.sink import RunSink
    from labeler.engine.runner import Engine, EngineConfig, price_of, run_header

    options = options or BatchOptions()
    provider = provider_for(judge)
    discount = transport.discount if transport is not None else transport_class(provider).discount
    config = engine_config or EngineConfig()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat()
    engine = Engine(judge, run_dir, config, cache, dict(prices or {}))
    price = price_of(judge, dict(prices or {}))
    todo = engine.plan(rows)  # repairs the folder, skips done rows, answers cached ones
    engine.flush()  # the cached answers' rows, before anything else can go wrong
    hits, skipped = engine.stats.cache_hits, engine.stats.skipped

    online: list[dict[str, Any]] = []
    if options.batch_retry == "online":
        failed = batch_error_ids(run_dir)
        covered = {rid for rec in state.in_flight(run_dir.path, judge.fingerprint(), run_dir.tag)
                   for rid in rec.manifest.values()}
        online = [r for r in todo if r["response_id"] in failed and r["response_id"] not in covered]
        ids = {r["response_id"] for r in online}
        todo = [r for r in todo if r["response_id"] not in ids]

    info = {
        **dict(manifest or {}),
        "mode": "batch",
        "batch_provider": provider,
        "batch_discount": discount,
        "batch_price_per_mtok": None if price is None else
        {k: v * discount for k, v in vars(price).items()},
        "batch_retry": options.batch_retry,
    }
    spent_online: dict[str, Any] = {}
    if online:
        log(f"retrying {len(online)} row(s) that failed inside a batch online (--batch-retry online)")
        retry_engine = Engine(judge, run_dir, config, cache, dict(prices or {}))

        async def go() -> None:
            try:
                await retry_engine.run(online, info)
            finally:
                await judge.aclose()

        try:
            asyncio.run(go())
        finally:  # at the ONLINE price: what it cost is said apart from the batch price
            s = retry_engine.stats
            spent_online = {"rows": len(online), "ok": s.ok, "error": s.error, "requests": s.requests,
                            "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
                            "cost_usd": round(s.cost_usd, 6) if price is not None else None}

    sink = RunSink(run_dir, judge, cache, price)
    summary = submit_and_collect(judge, todo, str(run_dir.path), sink, options, transport=transport,
                                 after_submit=after_submit, log=log, job=run_dir.tag)
    run_dir.compact()
    records = [r for r in state.load_all(run_dir.path)
               if r.fingerprint == judge.fingerprint() and r.job == run_dir.tag]
    run_state = "pending" if summary.pending else "finished"
    this_run = {
        "started_at": started_at, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "mode": "batch", "state": run_state, "rows_skipped_done": skipped, "cache_hits": hits,
        "retried_online": len(online), "online_retry": spent_online, "batches_submitted": summary.submitted,
        "batches_attached": summary.attached, "batches_pending": summary.pending,
        "ok": summary.rows.get("ok", 0), "error": summary.rows.get("error", 0),
        "input_tokens": summary.input_tokens, "output_tokens": summary.output_tokens,
        "cached_tokens": summary.cached_tokens, "cost_usd": round(summary.cost_usd, 6) if price is not None else None,
        "shards_written": engine.shards_written + sink.shards,
    }
    header = {
        **run_header(judge, price, info),
        "batches": [{"key": r.key, "batch_id": r.batch_id, "phase": r.phase, "status": r.status,
                     "requests": r.n_requests, "rows": r.rows, "cost_usd": round(r.cost_usd, 6)}
                    for r in records],
    }
    return run_dir.record_run(header, this_run)
