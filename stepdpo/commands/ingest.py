"""Turn GSM8K, PRM800K or any JSONL / JSON array / Parquet file into a `responses` Parquet file.

Every output row is one solution split into steps (the unit every later stage scores), with a
stable response id, the problem text, final and gold answers where known, and human step
labels (reference_scores) where the source has them. A bad record stops the run with an error
naming its file and line; --skip-invalid records and skips it instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stepdpo.options import add_dataclass_arguments, dataclass_from_args

EPILOG = """\
sources:
  gsm8k    GSM8K jsonl ({question, answer}); steps are the answer's lines before '#### N'
  prm800k  PRM800K phase1/phase2 label files; steps follow the labeled trajectory,
           ratings -1/0/+1 become reference scores 0/0.5/1
  jsonl    any JSONL, JSON array or Parquet file through a field mapping

examples:
  stepdpo ingest gsm8k data/gsm8k/test_sample.jsonl -o work/responses.parquet
  stepdpo ingest prm800k phase2_train.jsonl phase1_train.jsonl -o work/prm800k.parquet --skip-invalid
  stepdpo ingest jsonl items.json --prompt-field problem --steps-field steps \\
      --label-field label --label-kind first-error -o work/labeled.parquet

run `stepdpo ingest SOURCE --help` for a source's options.
"""

COMMON_EPILOG = """
common options, by example:
  -o work/out.parquet    where to write (atomically; a failed run leaves no partial file)
  --skip-invalid         skip bad records instead of stopping; their file:line and reason go to
                         OUT.skipped.jsonl (e.g. work/out.skipped.jsonl) and the summary counts them
  --limit 100            stop after 100 written rows (quick samples)
  several PATHs          are read in order into one output file
"""

GSM8K_EPILOG = """\
examples:
  stepdpo ingest gsm8k ../shared/data/gsm8k/test.jsonl -o work/gsm8k_test.parquet
  stepdpo ingest gsm8k train.jsonl -o work/gsm8k_train.parquet --limit 500
""" + COMMON_EPILOG

PRM800K_EPILOG = """\
examples:
  stepdpo ingest prm800k prm800k/data/phase2_train.jsonl -o work/prm800k_phase2.parquet
  stepdpo ingest prm800k phase1_train.jsonl phase2_train.jsonl -o work/prm.parquet --skip-invalid

meta keeps: labeler, timestamp, generation, phase, is_quality_control_question,
is_initial_screening_question, finish_reason, total_time, pre_generated_answer,
pre_generated_verifier_score, step_origin (completion:i | human | unchosen:i per step),
flagged_steps, and alternatives [{step, text, rating, score, flagged}] (rated completions at
step k that were not taken: they share the first k steps).
""" + COMMON_EPILOG

JSONL_EPILOG = """\
examples:
  # a JSON array of {id, problem, steps: [...], label} with the earliest wrong step's index
  stepdpo ingest jsonl items.json --prompt-field problem --steps-field steps --id-field id \\
      --label-field label --label-kind first-error -o work/labeled.parquet
  # one solution text per line, split into paragraphs, answers carried along
  stepdpo ingest jsonl gens.jsonl --prompt-field question.problem --response-field output \\
      --split blank-lines --answer-field pred --gold-field gold -o work/gens.parquet
  # a Parquet file with a 'Step 1: ...' solution column
  stepdpo ingest jsonl solutions.parquet --prompt-field prompt --response-field solution \\
      --split step-markers -o work/sol.parquet

Dotted field names reach into nested objects (question.problem). A .parquet file is read as
a table; any other file is a JSON array if it starts with '[', else JSON lines.
""" + COMMON_EPILOG


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path,
                   help="input file(s), e.g. data/gsm8k/test_sample.jsonl")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.parquet",
                   help="output responses file, e.g. -o work/responses.parquet")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip bad records, listing them in OUT.skipped.jsonl, instead of stopping")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="stop after N written rows, e.g. --limit 100")


def configure(parser: argparse.ArgumentParser) -> None:
    from labeler.sources.ingest.generic import FieldMapping

    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="source_kind", metavar="SOURCE", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    g = sub.add_parser("gsm8k", help="GSM8K jsonl", epilog=GSM8K_EPILOG, formatter_class=fmt,
                       description="GSM8K → responses: steps are the answer's lines before '#### N'\n"
                                   "(calculator notes <<expr=result>> kept); N with commas stripped\n"
                                   "is the final and gold answer. Reads the jsonl or the Parquet release.")
    _add_common(g)
    p = sub.add_parser("prm800k", help="PRM800K phase1/phase2 label files", epilog=PRM800K_EPILOG,
                       formatter_class=fmt,
                       description="PRM800K → responses with human step labels\n"
                                   "(reference_scores: rating -1→0, 0→0.5, +1→1, none→null).\n"
                                   "Phase 2's found-error step (chosen_completion null) is kept.")
    _add_common(p)
    j = sub.add_parser("jsonl", help="any JSONL / JSON array / Parquet file", epilog=JSONL_EPILOG,
                       formatter_class=fmt,
                       description="Any JSONL / JSON array / Parquet file → responses, through a\n"
                                   "field mapping. Give --prompt-field and exactly one of\n"
                                   "--steps-field or --response-field.")
    _add_common(j)
    add_dataclass_arguments(j, FieldMapping, title="field mapping")


def _row_builder(args: argparse.Namespace) -> Callable[[Any], dict[str, Any]]:
    if args.source_kind == "gsm8k":
        from labeler.sources.ingest import gsm8k

        return gsm8k.to_row
    if args.source_kind == "prm800k":
        from labeler.sources.ingest import prm800k

        return prm800k.to_row
    from labeler.sources.ingest.generic import FieldMapping, row_builder

    return row_builder(dataclass_from_args(FieldMapping, args))


def run(args: argparse.Namespace) -> int:
    from labeler.sources.ingest.common import ResponsesWriter, ingest_records
    from schemas.errors import UserError

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    to_row = _row_builder(args)
    with ResponsesWriter(args.output, skip_invalid=args.skip_invalid, limit=args.limit) as writer:
        ingest_records(args.paths, writer, to_row)
    print(writer.stats.summary(args.output))
    return 0
