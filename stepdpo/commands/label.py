"""Score every step of every response with a judge, into step_scores shards.

Reads a responses file (or folder of them) and writes RUN_DIR/part-NNNNN.parquet plus
RUN_DIR/run.json (config, judge fingerprint, counts, tokens, cost, timings). Rerunning the same
command resumes: rows already done are skipped, cached answers cost no request, and rows that
ended in status=error are tried again and replace their old row.

API keys come from OPENAI_API_KEY / ANTHROPIC_API_KEY (base URLs from OPENAI_BASE_URL /
ANTHROPIC_BASE_URL) and are never written anywhere.

exit codes: 0 every response labeled (or --batch batches left running: run.json says pending);
1 the run finished but responses failed after their retries (one line names the exact rerun
that retries only them; run.json keeps it as `rerun`, credentials in a URL removed); 2 a user
error, or no response labeled ok; 3 stopped by --max-cost; 130 stopped by a signal.

examples:
  stepdpo label work/responses.parquet --judge openai:gpt-4o-mini -o work/run --dry-run
  stepdpo label work/responses.parquet --judge openai:gpt-4o-mini -o work/run --rpm 5000
  stepdpo label work/responses.parquet --judge anthropic:claude-haiku-4-5 -o work/run-claude
  stepdpo label work/responses.parquet --judge openai:gpt-4o-mini -o work/run --batch   # half price, ≤ 24h
  stepdpo label work/responses.parquet --judge openai-compatible:Qwen/Qwen2.5-72B-Instruct@http://gpu:8000/v1 -o work/run-qwen
  stepdpo label big.parquet --judge openai:gpt-4o -o run --num-shards 4 --shard-index 0   # machine 0 of 4
  stepdpo label big.parquet --judge openai:gpt-4o -o run --num-shards 2 --shard-index 1 --rpm 15000 &  # + index 0: 2 processes
  stepdpo label work/responses.parquet --judge openai:gpt-4o -o work/run --max-cost 5      # stop at $5 (exit 3)
  stepdpo label work/responses.parquet --judge openai:gpt-4o --template processbench -o work/run-pb
  stepdpo label work/responses.parquet --judge openai:gpt-4o-mini --samples 5 --temperature 0.7 -o work/run-vote
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass, field

from schemas.errors import UserError
from stepdpo.options import (
    add_allow_incomplete,
    add_dataclass_arguments,
    dataclass_from_args,
    require_finished_inputs,
    stop_after_failures_help,
)
from stepdpo.startup import resume_gc


@dataclass
class LabelConfig:
    concurrency: int = field(default=32, metadata={"help": "requests (judge calls) in flight at once"})
    rpm: float | None = field(
        default=None, metadata={"help": "client-side requests/min limit (default: none until the provider's "
                                        "rate-limit headers say)"})
    tpm: float | None = field(
        default=None, metadata={"help": "client-side tokens/min limit (default: none until the provider's "
                                        "rate-limit headers say)"})
    max_attempts: int = field(
        default=6, metadata={"help": "tries per response before it is written with status=error (a rerun "
                                     "tries it again)"})
    backoff: float = field(
        default=1.0, metadata={"help": "first retry wait in seconds; doubles per attempt, plus jitter; a "
                                       "server's retry-after wins"})
    max_backoff: float = field(default=60.0, metadata={"help": "longest single retry wait in seconds"})
    shard_size: int = field(
        default=1000, metadata={"help": "rows per output shard (a killed run loses at most one unwritten "
                                        "shard, which the cache refills for free)"})
    cache: bool = field(
        default=True, metadata={"help": "reuse and store judge answers in the on-disk cache (--no-cache: "
                                        "neither read nor write it)"})
    cache_dir: str | None = field(
        default=None, metadata={"help": "judge cache folder (default: $STEPDPO_CACHE_DIR or "
                                        "~/.cache/stepdpo/judge)", "metavar": "DIR"})
    num_shards: int = field(default=1, metadata={"help": "split the job across this many machines or processes "
                                                         "(by hash of response_id; they may share -o: give each "
                                                         "its share of --rpm/--tpm)"})
    shard_index: int = field(default=0, metadata={"help": "which of --num-shards this machine labels (0-based)"})
    limit: int | None = field(default=None, metadata={"help": "label only the first N responses (after "
                                                                 "sharding)", "metavar": "N"})
    max_cost: float | None = field(
        default=None, metadata={"help": "stop before this run folder's spend in USD (earlier runs + this one + "
                                        "requests in flight) would pass this cap; rows done are kept, run.json "
                                        "says why it stopped, exit code 3; rerun with a higher cap to continue",
                                "metavar": "USD"})
    dry_run: bool = field(default=False, metadata={"help": "print the token and cost estimate of the rows not "
                                                           "already done or cached, send nothing, write nothing"})
    prices: str | None = field(
        default=None, metadata={"help": "JSON/YAML file of model → {input, cached_input, output} USD per 1M "
                                        "tokens, overriding the built-in price table", "metavar": "FILE"})
    stop_after_failures: int = field(
        default=8, metadata={"help": stop_after_failures_help("what was answered"), "metavar": "N"})
    progress: str = field(default="auto", metadata={"help": "progress display: auto (live on a terminal, log "
                                                            "lines otherwise), rich, log, none",
                                                    "choices": ["auto", "rich", "log", "none"]})
    log_interval: float = field(default=10.0, metadata={"help": "seconds between progress log lines"})


def configure(parser: argparse.ArgumentParser) -> None:
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import judge_help

    parser.add_argument("input", metavar="INPUT", help="responses Parquet file or folder (stepdpo ingest)")
    parser.add_argument("--judge", required=True, metavar="NAME", help=f"judge to score with; {judge_help()}")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder for shards and run.json")
    add_allow_incomplete(parser)
    add_dataclass_arguments(parser, LabelConfig, "labeling")
    add_dataclass_arguments(parser, JudgeConfig, "judge")
    from labeler.batch.options import BatchOptions  # provider batch mode: labeler/batch/

    parser.add_argument("--batch", action="store_true",
                        help="send the requests through the provider's batch API (openai:, anthropic: judges): "
                             "half price, results within 24h; batch ids are kept in RUN_DIR/batches/ and a "
                             "rerun attaches to them (`stepdpo batches RUN_DIR` shows them)")
    add_dataclass_arguments(parser, BatchOptions, "provider batch mode (--batch)")
    from labeler.engine.ray_options import RayOptions  # no Ray, no engine: --help stays light

    parser.add_argument("--engine", default="local", choices=["local", "ray"],
                        help="where the judge runs: local (this process) or ray (an actor pool on a Ray "
                             "cluster, one model per worker; for local model judges such as prm:; needs "
                             "the `ray` extra). Output, cache and resume are the same either way "
                             "(default: local)")
    add_dataclass_arguments(parser, RayOptions, "Ray (--engine ray)")


def _check(cfg: LabelConfig) -> None:
    if cfg.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    if cfg.max_attempts < 1:
        raise UserError("--max-attempts must be at least 1")
    if cfg.shard_size < 1:
        raise UserError("--shard-size must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError("--limit must be at least 1")
    if cfg.num_shards < 1:
        raise UserError("--num-shards must be at least 1")
    if not 0 <= cfg.shard_index < cfg.num_shards:
        raise UserError(f"--shard-index must be in 0..{cfg.num_shards - 1} for --num-shards {cfg.num_shards}")
    for name in ("rpm", "tpm"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive")
    if cfg.stop_after_failures < 0:
        raise UserError("--stop-after-failures must be 0 (off) or more")
    if cfg.backoff < 0 or cfg.max_backoff < 0:
        raise UserError("--backoff and --max-backoff must not be negative")
    if not cfg.log_interval > 0:
        raise UserError("--log-interval must be positive")


def _check_judge(cfg) -> None:
    """Judge options that no provider accepts: refused here, not as 400 on every request."""
    import math

    if not (math.isfinite(cfg.timeout) and cfg.timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, not {cfg.timeout:g}")
    if not (math.isfinite(cfg.temperature) and 0 <= cfg.temperature <= 2):
        raise UserError(f"--temperature must be in [0, 2] (OpenAI's range; Anthropic's is [0, 1]), "
                        f"not {cfg.temperature:g}")
    if cfg.max_output_tokens < 1:
        raise UserError(f"--max-output-tokens must be at least 1, not {cfg.max_output_tokens}")


def _dry_run_todo(rows: list[dict], judge, cfg: LabelConfig, output: str) -> tuple[list[dict], dict[str, int]]:
    """The rows a real run would pay for: not already done in RUN_DIR, not in the judge cache.

    Reads only; a missing run folder or cache folder is created by nothing."""
    from pathlib import Path

    from labeler.engine.cache import JudgeCache, cache_key, default_cache_dir
    from labeler.engine.rundir import RunDir
    from labeler.judges.base import Item

    run_dir = RunDir(output, cfg.shard_index, cfg.num_shards)
    done: set[str] = set()
    if run_dir.path.is_dir():
        run_dir.check_judge(judge.name, judge.fingerprint())  # what the real run would refuse
        done = run_dir.done_ids()
    todo = [r for r in rows if r["response_id"] not in done]
    skipped = {"already_done": len(rows) - len(todo), "cached": 0}
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    if cfg.cache and cache_dir.is_dir():
        cache = JudgeCache(cache_dir)
        try:
            fp, misses = judge.fingerprint(), []
            for row in todo:
                item = Item.from_row(row)
                hit = cache.get(cache_key(fp, item.prompt, item.steps, judge.cache_inputs(item)))
                if hit is not None and hit.mismatch(item) is None:
                    skipped["cached"] += 1
                else:
                    misses.append(row)
            todo = misses
        finally:
            cache.close()
    return todo, skipped


def run(args: argparse.Namespace) -> int:
    from labeler.engine.cache import JudgeCache
    from labeler.engine.pricing import load_prices, price_for
    from labeler.engine.retry import RetryPolicy
    from labeler.engine.rundir import RunDir
    from labeler.engine.runner import EngineConfig, estimate, load_rows
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import create_judge

    cfg = dataclass_from_args(LabelConfig, args)
    _check(cfg)
    judge_cfg = dataclass_from_args(JudgeConfig, args)
    _check_judge(judge_cfg)
    prices = load_prices(cfg.prices)
    if args.engine == "ray":
        if args.batch:
            raise UserError("--batch and --engine ray do not combine: provider batches run at the provider")
        from labeler.engine.ray_engine import RayOptions, check_options, remote_judge

        ray_options = dataclass_from_args(RayOptions, args)
        check_options(ray_options)
        judge = remote_judge(args.judge, judge_cfg, ray_options)  # the model loads on a worker, not here
    else:
        judge = create_judge(args.judge, judge_cfg)  # a missing key fails here, before any work
    resume_gc()  # start-up over: the engine, Arrow and the judge's SDK are imported (stepdpo.startup)
    require_finished_inputs(args.input, args)
    counts: dict[str, int] = {}
    rows = load_rows(args.input, cfg.limit, cfg.num_shards, cfg.shard_index, counts)
    if counts.get("duplicates"):
        print(f"label: note: {counts['duplicates']} row(s) of {args.input} repeat an earlier row's solution (same "
              "problem and steps, so the same response_id); each solution is labeled once", file=sys.stderr)
    if cfg.dry_run:
        rows, skipped = _dry_run_todo(rows, judge, cfg, args.output)
        est = estimate(rows, judge, price_for(judge.price_model, prices))
        est.update(skipped)
        if judge.batch_provider is not None:  # online vs --batch price
            from labeler.batch.registry import transport_class
            from labeler.batch.runner import batch_costs

            est.update(batch_costs(est, transport_class(judge.batch_provider).discount))
        print(json.dumps(est, indent=2))
        cost = "unknown (no price for this model; pass --prices FILE)" if est["cost_usd"] is None \
            else f"${est['cost_usd']:.4f}"
        free = f" ({skipped['already_done']} already done, {skipped['cached']} in the cache: free)" \
            if skipped["already_done"] or skipped["cached"] else ""
        print(f"dry run: {est['rows']} responses{free}, {est['steps']} steps, {est['requests']} requests, "
              f"~{est['input_tokens']} input + ~{est['output_tokens']} output tokens, cost ≤ {cost}",
              file=sys.stderr)
        if cfg.max_cost is not None and est["cost_usd"] is not None and est["cost_usd"] > cfg.max_cost:
            print(f"dry run: the estimate passes --max-cost ${cfg.max_cost:.4f}: the run would stop before the "
                  "end (already spent in the folder counts too)", file=sys.stderr)
        if est.get("batch_cost_usd") is not None:
            print(f"dry run: online ≤ ${est['online_cost_usd']:.4f}, with --batch ≤ ${est['batch_cost_usd']:.4f} "
                  "(half price)", file=sys.stderr)
        return 0

    run_dir = RunDir(args.output, cfg.shard_index, cfg.num_shards)
    engine_cfg = EngineConfig(
        concurrency=cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm,
        retry=RetryPolicy(max_attempts=cfg.max_attempts, initial=cfg.backoff, max_wait=cfg.max_backoff),
        shard_size=cfg.shard_size, progress=cfg.progress, log_interval=cfg.log_interval,
        stop_after_failures=cfg.stop_after_failures, max_cost=cfg.max_cost,
    )
    if args.batch and cfg.max_cost is not None:
        raise UserError("--max-cost is for online runs; with --batch, --dry-run shows the cost before you submit")
    if args.batch and judge_cfg.samples > 1:
        raise UserError("--samples is not available with --batch (each sample would be a separate batch "
                        "request joined later); run --samples online")
    cache = JudgeCache(cfg.cache_dir) if cfg.cache else None
    judge.use_cache(cache)
    from stepdpo.rerun import rerun_command

    info = {"input": str(args.input), "engine": args.engine, "config": dataclasses.asdict(cfg),
            "rerun": rerun_command("stepdpo label", configure, args),  # credentials in a URL removed
            **({"ray": vars(ray_options)} if args.engine == "ray" else {}),
            "judge_config": dataclasses.asdict(judge_cfg)}
    with run_dir.locked():
        return _label(args, judge, rows, run_dir, cache, prices, engine_cfg, info)


def _label(args, judge, rows, run_dir, cache, prices, engine_cfg, info) -> int:
    from labeler.engine.runner import Engine
    from labeler.engine.stopping import Interrupted
    from labeler.judges.config import JudgeConfig

    if args.batch:  # provider batch mode: labeler/batch/runner.py

        return _label_batch(args, judge, rows, run_dir, cache, prices, engine_cfg, info)
    if args.engine == "ray":
        from labeler.engine.ray_engine import RayEngine, RayOptions

        engine = RayEngine(judge, run_dir, engine_cfg, cache, prices, spec=args.judge,
                           judge_config=dataclass_from_args(JudgeConfig, args),
                           options=dataclass_from_args(RayOptions, args))
    else:
        engine = Engine(judge, run_dir, engine_cfg, cache, prices)

    async def go() -> dict:
        try:
            return await engine.run(rows, info)
        finally:
            await judge.aclose()

    try:
        manifest = asyncio.run(go())
    except Interrupted:
        s = engine.stats
        print(f"label: stopped by a signal; this run wrote {s.done} rows (ok {s.ok}, error {s.error}) after "
              f"{s.requests} requests, cost {s.cost_text()}", file=sys.stderr)
        raise KeyboardInterrupt from None  # the dispatcher's exit 130 and resume hint
    finally:
        if cache is not None:
            cache.close()
    totals = manifest["totals"]
    s = engine.stats
    shared = _shared_folder_note(run_dir, args)
    print(f"label: {totals['rows']} rows {'of this job ' if shared else ''}in {args.output} (ok {totals['ok']}, "
          f"error {totals['error']}); this run: {s.done} labeled, {s.skipped} already done, {s.cache_hits} from "
          f"cache, {s.requests} requests, cost {s.cost_text()}", file=sys.stderr)
    if shared:
        print(shared, file=sys.stderr)
    if args.engine == "ray":
        print(f"label: Ray: {engine.options.num_workers} worker(s), {engine.worker_restarts} restarted after a "
              f"failure, {s.retries} batch(es) retried", file=sys.stderr)
    if s.error:
        print(f"label: {s.error} response(s) of this run ended in error: {s.reasons_text()}", file=sys.stderr)
    if s.done and not s.ok:
        raise UserError(f"no response was labeled ok: all {s.done} of this run failed ({s.reasons_text()}); "
                        f"{run_dir.manifest_path} has the counts")
    if manifest["state"] == "budget":
        left = s.total - s.done
        print(f"label: stopped: {manifest['stop_reason']}; {left} response(s) not labeled yet: rerun with a "
              "higher --max-cost to continue", file=sys.stderr)
        return 3
    return _holes("label", totals, info["rerun"], f"errors_by_reason in {run_dir.manifest_path}")


def _holes(command: str, totals: dict, rerun: str, where: str, how: str = "after their retries") -> int:
    """Exit code of a finished run: 1, with the one line naming the rerun, when rows of this job
    ended in error after their retries (a script must tell a complete job from one with holes)."""
    if not totals["error"]:
        return 0
    from stepdpo.rerun import holes_line

    print(holes_line(command, totals["error"], totals["rows"], "responses", where, rerun, how), file=sys.stderr)
    return 1


def _shared_folder_note(run_dir, args: argparse.Namespace) -> str:
    """When other jobs share the folder (--num-shards processes or machines, or a plain run after
    them), this job's totals are not the folder's: one line with the folder's own count, so a
    plain rerun after a split job does not report '0 rows in RUN_DIR' for a full folder."""
    own = set(run_dir.parts())
    if not any(p not in own for p in run_dir.folder_parts()):
        return ""
    statuses = run_dir.statuses()
    ok = sum(1 for v in statuses.values() if v == "ok")
    job = f"--num-shards {args.num_shards} --shard-index {args.shard_index}" if args.num_shards > 1 \
        else "no --num-shards"
    return (f"label: {args.output} holds {len(statuses)} responses from every job that shares it (ok {ok}, "
            f"error {len(statuses) - ok}); the line above counts this job's ({job})")


def _label_batch(args: argparse.Namespace, judge, rows: list[dict], run_dir, cache,
                 prices: dict, engine_config, info: dict) -> int:
    """``stepdpo label ... --batch`` after the label command has parsed and loaded everything."""
    from labeler.batch.collect import BatchOptions
    from labeler.batch.runner import run_batch_label

    options = dataclass_from_args(BatchOptions, args)
    if options.poll_interval <= 0:
        from schemas.errors import UserError

        raise UserError("--poll-interval must be positive")
    from labeler.engine.stopping import Interrupted

    try:
        manifest = run_batch_label(judge, rows, run_dir, cache=cache, prices=prices, options=options,
                                   engine_config=engine_config, manifest=info)
    except Interrupted:  # a signal during the online retry: what it received is written
        raise KeyboardInterrupt from None
    finally:
        if cache is not None:
            cache.close()
    from stepdpo.batch_summary import batch_lines, online_text

    totals, this = manifest["totals"], manifest["runs"][-1]
    o = this.get("online_retry")
    online = f"retried online first: {o['rows']} row(s) (ok {o['ok']}, error {o['error']}), " \
        f"{online_text(o['requests'], o['cost_usd'])}" if o else ""
    # this run's cost_usd is the batches' alone here: the online retry's is on its own line
    for line in batch_lines("label --batch", f"{totals['rows']} rows in {run_dir.path} (ok {totals['ok']}, error "
                            f"{totals['error']})", this, run_dir.path, skipped=this["rows_skipped_done"],
                            online=online):
        print(line, file=sys.stderr)
    if this["batches_pending"]:
        return 0  # not a hole: asked for (--no-batch-wait, --batch-max-wait); run.json says pending
    how = "online" if options.batch_retry == "online" else "in a new batch"
    return _holes("label --batch", totals, info["rerun"], f"the `error` column of those rows in {run_dir.path}; "
                  f"the rerun retries them {how}", "in their batch")
