"""Combine several judges' step_scores runs into one step_scores run.

Each INPUT is one judge's run. A response is combined when every input scored it; per step:
mean, min, weighted (--weights, one per input), vote (majority of value >= --threshold; a tie is
null) or consensus (kept, as the mean, only where every judge gave a value and all agree on the
label; null otherwise — the consensus filter of Qwen's "Lessons of developing PRMs").
--escalate JUDGE labels only the responses with a disputed step with a further judge (through
the usual engine: cached, retried, resumable, costed, into ESCALATION_RUN) and its scores settle
those steps. The output judge is combine:HOW, its fingerprint names the inputs' fingerprints;
run.json (written last) counts disputed/partial steps and the cost per accepted label.

examples:
  stepdpo combine work/run-calc work/run-prm -o work/run-both --how consensus
  stepdpo combine work/run-calc work/run-prm -o work/run-both --how consensus --escalate openai:gpt-4o
  stepdpo combine work/run-a work/run-b work/run-c -o work/run-w --how weighted --weights 2 1 1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from schemas.errors import UserError
from schemas.folders import staged_folder
from stepdpo.options import (
    add_allow_incomplete,
    add_dataclass_arguments,
    dataclass_from_args,
    require_finished_inputs,
)


def configure(parser: argparse.ArgumentParser) -> None:
    from labeler.combine import HOWS
    from labeler.judges.config import JudgeConfig

    parser.add_argument("inputs", nargs="+", metavar="RUN", help="step_scores runs, one judge each")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for the combined run")
    parser.add_argument("--how", default="mean", choices=HOWS, help="how the judges' step scores combine "
                        "(default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="a score >= threshold is 'correct' for vote and consensus (default: %(default)s)")
    parser.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                        help="--how weighted: one weight per input run, in order")
    parser.add_argument("--escalate", default=None, metavar="JUDGE",
                        help="label the responses with a disputed step (consensus, vote) with this judge; "
                             "its scores settle the disputed steps")
    parser.add_argument("--escalation-run", default=None, metavar="DIR",
                        help="run folder of the escalation judge (default: OUT-escalation); a rerun resumes it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing combined run in OUT")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="judge cache of the escalation judge (default: $STEPDPO_CACHE_DIR or "
                             "~/.cache/stepdpo/judge)")
    parser.add_argument("--concurrency", type=int, default=32, help="escalation requests in flight (default: 32)")
    parser.add_argument("--progress", default="auto", choices=["auto", "rich", "log", "none"],
                        help="progress display of the escalation run (default: auto)")
    add_dataclass_arguments(parser, JudgeConfig, "escalation judge (--escalate)")
    add_allow_incomplete(parser)


def _escalate(args: argparse.Namespace, rows: list[dict], out: Path) -> tuple[dict[str, dict], dict]:
    """Label ``rows`` with the escalation judge into its own run folder; its ok rows by id."""
    from labeler.engine.cache import JudgeCache
    from labeler.engine.pricing import load_prices
    from labeler.engine.rundir import RunDir
    from labeler.engine.runner import Engine, EngineConfig
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import create_judge

    judge_cfg = dataclass_from_args(JudgeConfig, args)
    judge = create_judge(args.escalate, judge_cfg)
    run_dir = RunDir(args.escalation_run or f"{out}-escalation")
    cache = JudgeCache(args.cache_dir)
    engine = Engine(judge, run_dir, EngineConfig(concurrency=args.concurrency, progress=args.progress),
                    cache, load_prices(None))
    info = {"input": f"disputed responses of combine -o {out}", "judge_config": dataclasses.asdict(judge_cfg)}

    async def go() -> dict:
        try:
            return await engine.run(rows, info)
        finally:
            await judge.aclose()

    try:
        with run_dir.locked():
            manifest = asyncio.run(go()) if rows else {"judge": judge.name}
    finally:
        cache.close()
    table = run_dir.read_rows(status="ok") if rows else None
    got = {r["response_id"]: r for r in (table.to_pylist() if table is not None else [])}
    wanted = {r["response_id"] for r in rows}
    return {k: v for k, v in got.items() if k in wanted}, {
        "judge": judge.name, "judge_fingerprint": judge.fingerprint(), "run": str(run_dir.path),
        "requests": engine.stats.requests if rows else 0, "totals": manifest.get("totals")}


def _check_output(run_dir: Any, overwrite: bool) -> None:
    """An existing OUT is replaced only with --overwrite, and only when it is a combined run:
    a judge's run or a generate folder there holds paid work that --overwrite must not delete."""
    from schemas.folders import refuse_other_result, shard_names

    own = ("run.json", *(shard_names(run_dir.path) if run_dir.path.is_dir() else ()))
    refuse_other_result(run_dir.path, "-o", own=own)  # pairs, a model, an eval result…
    manifest = run_dir.read_manifest() if run_dir.manifest_path.is_file() else None
    if manifest is not None and manifest.get("command") != "combine":
        what = f"judge {manifest['judge']}" if manifest.get("judge") else manifest.get("schema", "another command")
        raise UserError(f"-o {run_dir.path} holds a run of {what}, not a combined run; --overwrite replaces only "
                        "a combine output: choose another folder")
    if (run_dir.parts() or manifest is not None) and not overwrite:
        raise UserError(f"-o {run_dir.path} already holds a run; pass --overwrite to replace it")


def run(args: argparse.Namespace) -> int:
    from labeler.combine import (
        CombineOptions,
        check_options,
        combine,
        fingerprint,
        finish,
        read_input,
        settle,
    )
    from labeler.engine.rundir import RunDir

    started_at = dt.datetime.now(dt.timezone.utc).isoformat()
    opts = CombineOptions(how=args.how, threshold=args.threshold, weights=args.weights)
    check_options(opts, len(args.inputs))
    if args.escalate and opts.how not in ("consensus", "vote"):
        raise UserError("--escalate settles disputed steps: use it with --how consensus or vote")
    out = Path(args.output)
    if any(Path(p).resolve() == out.resolve() for p in args.inputs):
        raise UserError(f"-o {out} is one of the inputs; write the combined run to a new folder")
    seen: dict[Path, str] = {}
    for p in args.inputs:
        if Path(p).resolve() in seen:
            raise UserError(f"{p} is given twice (as {seen[Path(p).resolve()]}); each input is one judge's run")
        seen[Path(p).resolve()] = p
    _check_output(RunDir(out), args.overwrite)
    require_finished_inputs(args.inputs, args)
    inputs = [read_input(p) for p in args.inputs]
    combined = combine(inputs, opts)
    escalation = None
    if args.escalate:
        escalated, escalation = _escalate(args, combined.disputed_rows, out)
        settle(combined, escalated)
    fp = fingerprint(inputs, opts, escalation["judge_fingerprint"] if escalation else None)
    esc_cost = (escalation["totals"] or {}).get("cost_usd", 0.0) if escalation else 0.0
    summary = finish(combined, fp, inputs, esc_cost)
    header = {
        "command": "combine", "judge": f"combine:{opts.how}", "judge_fingerprint": fp,
        "how": opts.how, "threshold": opts.threshold, "weights": opts.weights,
        "inputs": [{"path": i.path, "judge": i.judge, "judge_fingerprint": i.fingerprint,
                    "ok_rows": len(i.rows)} for i in inputs],
        "escalation": escalation, "combine": summary,
    }
    # Written aside and swapped in whole: a kill leaves the old folder (or none), never a part.
    with staged_folder(out) as staging:
        run_dir = RunDir(staging)
        for start in range(0, len(combined.rows), 1000):
            run_dir.write_shard(combined.rows[start: start + 1000])
        run_dir.record_run(header, {"started_at": started_at, "state": "finished",
                                    "finished_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    c = summary
    cost = ("unknown (a judge had no price)" if c["spent_usd"] is None
            else f"${c['spent_usd']:.4f} spent, ${c['cost_per_accepted_label']:.6f} per accepted label"
            if c["cost_per_accepted_label"] is not None else f"${c['spent_usd']:.4f} spent, no label kept")
    print(f"combine --how {opts.how}: {c['responses']} responses -> {out}; {c['kept']} of {c['steps']} step "
          f"labels kept ({c['disputed']} disputed, {c['partial']} partial); {c['missing']} response(s) not "
          f"scored by every input; cost {cost}", file=sys.stderr)
    if escalation:
        print(f"combine: escalated {c['escalated_rows']} response(s) to {escalation['judge']} "
              f"({escalation['requests']} requests), {c['escalation_settled']} disputed step(s) settled, "
              f"{c['escalation_errors']} response(s) not labelled (rerun to retry them)", file=sys.stderr)
    return 0
