"""Build preference pairs from labeled runs (`step_scores` shards) into `pairs` shards.

strategies:
  first-error           Step-DPO: a wrong solution and a solution of the same problem that shares
                        its steps up to the first error; the shared steps become prefix_steps and
                        chosen/rejected hold the diverging step (--continuation step, default) or
                        everything from it on (--continuation rest, chosen must be all correct).
                        Rectify pairs (Step-DPO): give the labeled run of wrong solutions AND the
                        labeled continuations of their correct prefixes (`stepdpo generate
                        --continue-from RUN`, then `label --judge answer-match`): each wrong step
                        is paired with the same step of a continuation that reached the answer
  best-worst            per problem, the highest vs the lowest aggregated reward (whole solutions,
                        their shared leading steps moved to prefix_steps)
  prm800k-alternatives  PRM800K's rated alternatives at the same step: rating 1 vs rating -1
                        (reads meta of a reference-labeled run or of an ingested responses file)

Every strategy moves the leading steps both sides share into prefix_steps (the prompt side).
Rows are paired only within one problem (same problem_id and problem text). Rows with status
other than ok are skipped and counted; runs scored by different judge fingerprints are refused
unless --allow-mixed-judges.

Output: PAIRS_DIR/part-NNNNN.parquet and PAIRS_DIR/pairs.json (config, counts, the aggregation
and step threshold used, the shard list). The folder is written aside and swapped in whole at the
end: a killed run leaves the previous folder (or none), never a partial one, and readers
(`train`, `inspect`) refuse a folder without a complete pairs.json. An existing pairs folder is
replaced only with --overwrite. Other tools read the shards with a glob, e.g.
pandas.read_parquet(glob.glob("work/pairs/*.parquet")) or duckdb "FROM 'work/pairs/*.parquet'".

examples:
  stepdpo pairs work/run -o work/pairs --strategy first-error
  stepdpo pairs work/located work/cont-checked -o work/pairs --strategy first-error   # rectify pairs
  stepdpo pairs work/run_a work/run_b -o work/pairs --strategy best-worst --aggregate min --min-margin 0.3
  stepdpo pairs work/prm800k_ref -o work/pairs --strategy prm800k-alternatives
"""

from __future__ import annotations

import argparse
import sys

from stepdpo.options import (
    add_allow_incomplete,
    add_dataclass_arguments,
    dataclass_from_args,
    require_finished_inputs,
)


def configure(parser: argparse.ArgumentParser) -> None:
    from labeler.pairs.build import PairsConfig

    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="labeled run folders or step_scores Parquet files"
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="PAIRS_DIR", help="folder for the pair shards"
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the pairs folder already at -o (it is swapped whole at the end)")
    add_dataclass_arguments(parser, PairsConfig, "pairs")
    add_allow_incomplete(parser)


def run(args: argparse.Namespace) -> int:
    from labeler.pairs.build import PairsConfig, make_pairs

    cfg = dataclass_from_args(PairsConfig, args)
    require_finished_inputs(args.runs, args)
    if cfg.strategy != "first-error" and cfg.continuation != "step":
        print(f"pairs: --continuation {cfg.continuation} applies to --strategy first-error only; "
              f"{cfg.strategy} pairs hold whole solutions", file=sys.stderr)
    manifest = make_pairs(args.runs, args.output, cfg, overwrite=args.overwrite)
    counts = manifest["counts"]
    print(
        f"pairs: {counts.get('pairs', 0)} {cfg.strategy} pairs from {counts.get('input_rows', 0)} "
        f"rows of {counts.get('problems', 0)} problems -> {args.output} "
        f"({len(manifest['shards'])} shard(s))"
    )
    dropped = {k: v for k, v in counts.items() if k not in ("pairs", "input_rows", "problems") and v}
    if dropped:
        print("pairs: " + ", ".join(f"{k}={v}" for k, v in dropped.items()))
    if counts.get("problem_ids_on_several_texts"):
        print(f"pairs: {counts['problem_ids_on_several_texts']} problem id(s) name several different "
              "problem texts; rows were paired only with rows of the same text", file=sys.stderr)
    if not counts.get("pairs"):
        hint = {
            "first-error": "it needs a wrong and a right solution of one problem sharing the steps "
            "before the error (`stepdpo perturb` makes such variants of correct solutions)",
            "best-worst": "it needs two solutions of one problem whose rewards differ by --min-margin",
            "prm800k-alternatives": "it needs PRM800K rows with alternatives rated 1 and -1 at one step",
        }[cfg.strategy]
        print(f"pairs: no pairs were made: {hint}")
    return 0
