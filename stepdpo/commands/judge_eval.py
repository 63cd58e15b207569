"""Score judges on ProcessBench-format files and print the ProcessBench table.

Each FILE is one split (ProcessBench's gsm8k, math, olympiadbench, omnimath …): records with
problem, steps, final_answer_correct and label (the earliest wrong step, -1 if none), as JSONL,
a JSON array or Parquet; name a split with NAME=FILE (default: the file name). Every judge labels
every split through the ordinary engine into OUT/<judge>/<split>/ (cached, resumable: a rerun
asks again only the cases that ended in error), then the report gives per split the accuracy on erroneous and on
correct solutions and their F1 (exactly as ProcessBench's run_eval.py; a row the judge could
not answer is a miss), the unweighted mean over splits, Hard2Verify's step-level balanced F1,
and the cost per 1,000 steps. Markdown goes to stdout, JSON to OUT/judge_eval.json.

`--judge reference` passes the human labels through and must print F1 100 everywhere: a check
that the files were read right. Published anchors (ProcessBench, avg F1): GPT-4o 61.9 (GSM8K
79.2) with the critic template, o1-mini 87.9, Qwen2.5-Math-PRM-7B 73.5.

examples:
  stepdpo judge-eval gsm8k.jsonl math.jsonl olympiadbench.jsonl omnimath.jsonl --judge reference -o work/pb
  stepdpo judge-eval pb/*.jsonl --judge openai:gpt-4o --template processbench -o work/pb --max-output-tokens 8192
  stepdpo judge-eval pb/gsm8k.jsonl --judge openai:gpt-4o-mini --judge prm:Qwen/Qwen2.5-Math-PRM-7B -o work/pb
  stepdpo judge-eval pb/gsm8k.jsonl --judge openai:gpt-4o-mini --samples 8 --temperature 1 --template processbench -o work/pb
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import UserError
from stepdpo.options import add_dataclass_arguments, dataclass_from_args


@dataclass
class JudgeEvalConfig:
    threshold: float = field(default=0.5, metadata={"help": "a step scored below this is an error"})
    limit: int | None = field(default=None, metadata={"help": "only the first N cases of each split",
                                                         "metavar": "N"})
    concurrency: int = field(default=32, metadata={"help": "requests in flight at once"})
    rpm: float | None = field(default=None, metadata={"help": "client-side requests/min limit"})
    tpm: float | None = field(default=None, metadata={"help": "client-side tokens/min limit"})
    max_attempts: int = field(default=6, metadata={"help": "tries per case before it is an error row (a miss)"})
    cache: bool = field(default=True, metadata={"help": "reuse and store judge answers in the on-disk cache"})
    cache_dir: str | None = field(default=None, metadata={"help": "judge cache folder (default: "
                                                                  "$STEPDPO_CACHE_DIR or ~/.cache/stepdpo/judge)",
                                                          "metavar": "DIR"})
    prices: str | None = field(default=None, metadata={"help": "price file overriding the built-in table",
                                                       "metavar": "FILE"})
    progress: str = field(default="log", metadata={"help": "progress display", "choices": ["auto", "rich", "log",
                                                                                          "none"]})


def configure(parser: argparse.ArgumentParser) -> None:
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import judge_help

    parser.add_argument("files", nargs="+", metavar="[NAME=]FILE", help="one ProcessBench-format file per split")
    parser.add_argument("--judge", action="append", required=True, metavar="NAME",
                        help=f"judge to evaluate; repeat for a side-by-side table; {judge_help()}")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder for each judge's labeled splits and judge_eval.json")
    parser.add_argument("--markdown", metavar="FILE", help="also write the Markdown table to FILE")
    add_dataclass_arguments(parser, JudgeEvalConfig, "evaluation")
    add_dataclass_arguments(parser, JudgeConfig, "judge (applies to every --judge)")


def run(args: argparse.Namespace) -> int:
    from labeler.engine.cache import JudgeCache
    from labeler.engine.pricing import load_prices
    from labeler.inspection import judge_eval as je
    from labeler.judges.config import JudgeConfig
    from labeler.judges.registry import create_judge
    from schemas.atomic import atomic_write_json

    cfg = dataclass_from_args(JudgeEvalConfig, args)
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError("--limit must be at least 1")
    if cfg.concurrency < 1 or cfg.max_attempts < 1:
        raise UserError("--concurrency and --max-attempts must be at least 1")
    if len(set(args.judge)) != len(args.judge):
        raise UserError("a --judge is named twice")
    judge_cfg = dataclass_from_args(JudgeConfig, args)
    splits = [(name, je.load_split(path, name)[: cfg.limit]) for name, path in je.split_files(args.files)]
    prices = load_prices(cfg.prices)
    judges = [create_judge(spec, judge_cfg) for spec in args.judge]  # missing keys fail before any work
    out = Path(args.output)
    cache = JudgeCache(cfg.cache_dir) if cfg.cache else None
    report = {"splits": [n for n, _ in splits], "threshold": cfg.threshold, "judges": {},
              "files": {n: str(p) for n, p in je.split_files(args.files)},
              "judge_config": dataclasses.asdict(judge_cfg)}
    try:
        for spec, judge in zip(args.judge, judges, strict=True):
            judge.use_cache(cache)
            per_split = asyncio.run(_label_splits(judge, spec, splits, out, cfg, cache, prices))
            report["judges"][spec] = {"judge": judge.name, "fingerprint": judge.fingerprint(),
                                      "splits": per_split, "summary": je.summarize(per_split)}
    finally:
        if cache is not None:
            cache.close()
    atomic_write_json(out / "judge_eval.json", report)
    table = je.markdown(report)
    if args.markdown:
        Path(args.markdown).write_text(table, "utf-8")
    print(table, end="")
    print(f"judge-eval: JSON in {out / 'judge_eval.json'}", file=sys.stderr)
    return 0


async def _label_splits(judge, spec, splits, out, cfg, cache, prices) -> dict:
    from labeler.engine.retry import RetryPolicy
    from labeler.engine.rundir import RunDir
    from labeler.engine.runner import Engine, EngineConfig
    from labeler.inspection import judge_eval as je
    from schemas.tables import STEP_SCORES, read_table

    engine_cfg = EngineConfig(concurrency=cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm, progress=cfg.progress,
                              retry=RetryPolicy(max_attempts=cfg.max_attempts))
    per_split = {}
    try:
        for name, rows in splits:
            run_dir = RunDir(out / je.judge_slug(spec) / name)
            with run_dir.locked():
                await Engine(judge, run_dir, engine_cfg, cache, prices).run(rows, {"processbench_split": name})
            table = read_table(run_dir.path, STEP_SCORES)
            per_split[name] = je.split_metrics(rows, table, cfg.threshold)
            m = per_split[name]
            print(f"judge-eval: {spec} on {name}: F1 {je.pct(m['f1'])} ({m['cases']} cases, "
                  f"{m['parse_failures']} unanswered)", file=sys.stderr)
    finally:
        await judge.aclose()
    return per_split
