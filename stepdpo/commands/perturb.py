"""Make flawed variants of correct GSM8K-style solutions by corrupting one step's arithmetic.

For every correct solution (final answer equals the gold answer and every `<<expr=result>>`
calculator note checks out) each variant changes ONE note's result, and the visible number
printed right after it, to a plausible wrong value (off by a few, one digit changed, or a
factor of ten). The note's expression is left alone, so the step is a genuine arithmetic slip:
the free `gsm8k-calc` judge flags exactly that step, and `stepdpo pairs --strategy first-error`
gets a correct solution and a wrong one that share every step before it, with no API key.

With `--propagate` (the default) later steps carry the wrong number forward like a student
would: every later occurrence of the old value is replaced, later notes are recomputed from
their (now different) inputs, and so the final answer becomes wrong while every later step is
internally consistent. `--no-propagate` leaves the rest of the solution untouched.

Variants get new response_ids (hash of problem + steps), keep the problem id and gold answer,
record in `meta.perturbation` which step and note changed and how, and carry first-error
reference labels (1 before the corrupted step, 0 on it, null after). Seeded: the same input,
seed and options give the same output on any machine, in any row order.

example:
  stepdpo perturb work/responses.parquet -o work/perturbed.parquet --variants 2 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from labeler.sources.perturb import PerturbConfig, perturb_rows
from schemas.errors import UserError
from schemas.tables import RESPONSES, from_rows, read_table, write_table
from stepdpo.options import (
    add_allow_incomplete,
    add_dataclass_arguments,
    dataclass_from_args,
    require_finished_inputs,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="a `responses` Parquet file or folder (from `stepdpo ingest`)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="output `responses` Parquet file")
    add_dataclass_arguments(parser, PerturbConfig, "perturbation")
    add_allow_incomplete(parser)


def check_output(src: Path, out: Path) -> None:
    """Refuse an -o that would replace the input (or land among its shards), before any work:
    the input is the user's data, and a second run would perturb the first run's variants."""
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a .parquet file name for the output")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise UserError(f"-o {out}: is the input itself, which perturb would overwrite; write the "
                        f"variants to another file, e.g. -o {out.with_name(out.stem + '_perturbed.parquet')}")
    if src.is_dir() and out.resolve().parent == src.resolve() and out.suffix == ".parquet":
        raise UserError(f"-o {out}: is inside the input folder {src}, so it would be read as one of "
                        "its shards next time; write it elsewhere")


def run(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(PerturbConfig, args)
    out = Path(args.output)
    check_output(Path(args.input), out)
    require_finished_inputs(args.input, args)
    table = read_table(args.input, RESPONSES)
    rows, stats = perturb_rows(table.to_pylist(), cfg)
    write_table(from_rows(rows, RESPONSES), out, RESPONSES)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(stats["skipped"].items())) or "none"
    print(
        f"perturb: {stats['input_rows']} input rows, {stats['variants']} variants of "
        f"{stats['perturbed_rows']} solutions, {stats['output_rows']} rows written to {out}"
    )
    print(f"perturb: not perturbed: {skipped}")
    return 0
