"""Summarise any stepdpo file or run folder; compare a judge with human labels or another judge.

  stepdpo inspect work/run                       counts, status, tokens, cost, score by position,
                                                 first-error histogram, agreement with reference_scores
  stepdpo inspect work/run --show 5 --where disagree
  stepdpo inspect work/run_gpt work/run_claude   two judges on the same responses
  stepdpo inspect work/run --html report.html --plots plots/
  stepdpo inspect work/pairs --json | jq .margin

Agreement with reference labels is reported as step accuracy and ROC AUC at --threshold, and as
the ProcessBench metric: the earliest error (first step scored below the threshold, -1 if none)
must equal the reference's; accuracy on erroneous and on correct solutions and their harmonic
mean (F1).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from labeler.inspection import agreement, stats
from labeler.inspection.show import WHERE, WHERE_HELP
from schemas.errors import UserError
from stepdpo.options import add_dataclass_arguments, dataclass_from_args


@dataclass
class InspectConfig:
    json: bool = field(default=False, metadata={"help": "print the summary as JSON on stdout (for scripts)"})
    threshold: float = field(default=0.5, metadata={
        "help": "a step scored below this is an error (step accuracy, first error, ProcessBench)"})
    show: int = field(default=0, metadata={
        "help": "print N solutions with each step coloured by its score", "metavar": "N"})
    where: str = field(default="all", metadata={"help": WHERE_HELP, "choices": list(WHERE)})
    html: str | None = field(default=None, metadata={
        "help": "write a self-contained HTML report (plots embedded, no network) to FILE",
        "metavar": "FILE"})
    plots: str | None = field(default=None, metadata={
        "help": "write the plots as PNG files into DIR", "metavar": "DIR"})
    examples: int = field(default=200, metadata={
        "help": "how many examples (picked by --where) the HTML report lists", "metavar": "N"})
    max_chars: int = field(default=400, metadata={
        "help": "--show cuts a step (or problem) longer than this many characters and says how "
                "much it left out; 0 shows everything (--json and --html keep the full text)",
        "metavar": "N"})


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a responses / step_scores / pairs file or folder of shards; "
                             "give two step_scores inputs to compare their judges")
    add_dataclass_arguments(parser, InspectConfig)


def build_report(paths: list[str], threshold: float = 0.5, columns: dict[str, list[str]] | None = None
                 ) -> tuple[dict[str, Any], list[stats.Loaded]]:
    """The JSON-able report for one input, or a comparison of two; plus the loaded tables."""
    if len(paths) > 2:
        raise UserError(f"inspect takes one or two paths, got {len(paths)}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {threshold}")
    loaded = []
    for p in paths:
        kind = stats.read_kind(p)
        cols = (columns or stats.COLUMNS).get(kind, stats.COLUMNS.get(kind))
        loaded.append(stats.load(p, columns=cols))
    reports = []
    for one in loaded:
        rep = stats.summarize(one, threshold)
        if one.kind.name == "step_scores":
            agr = agreement.by_judge(one.table, threshold)
            if agr:
                rep["agreement"] = agr
        reports.append(rep)
    if len(loaded) == 1:
        return reports[0], loaded
    for one in loaded:
        if one.kind.name != "step_scores":
            raise UserError(f"{one.path}: comparing two inputs needs two step_scores files; "
                            f"this is a '{one.kind.name}' file")
    comp = agreement.compare(loaded[0].table, loaded[1].table, threshold)
    return {"kind": "comparison", "inputs": reports, "comparison": comp}, loaded


def pick_examples(loaded: list[stats.Loaded], where: str, threshold: float, n: int) -> list[dict]:
    """Examples picked by ``where``: chosen on the score columns already in memory, then the
    text columns (prompt, steps) read for those rows only."""
    from labeler.inspection import show

    if n <= 0:
        return []
    one = loaded[0]
    kind = one.kind.name
    if len(loaded) == 2:
        rows, other = show.select_compare(one.table, loaded[1].table, where, threshold, n)
    else:
        rows = show.select_rows(one.table, kind, where, threshold, n)
    text_cols = [c for c in show.SHOW_COLUMNS[kind] if c not in one.table.column_names]
    small = one.table.take(pa.array(rows, pa.int64()))
    texts = stats.take_rows(one, rows, text_cols)
    for c in text_cols:
        small = small.append_column(c, texts.column(c))
    exs = show.examples(small, kind, np.arange(len(rows)), threshold)
    return show.add_other(exs, loaded[1].table, other) if len(loaded) == 2 else exs


def check_outputs(cfg: InspectConfig) -> None:
    """Refuse --html / --plots targets that cannot be written, before any work is done."""
    if cfg.html is not None:
        html = Path(cfg.html)
        if html.is_dir():
            raise UserError(f"--html {html}: is a folder; give a file name, e.g. --html {html / 'report.html'}")
        parent = next((p for p in html.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UserError(f"--html {html}: {parent} is a file, not a folder")
    if cfg.plots is not None:
        plots = Path(cfg.plots)
        if plots.exists() and not plots.is_dir():
            raise UserError(f"--plots {plots}: is a file; give a folder for the PNG files, e.g. "
                            f"--plots {plots.with_suffix('')}-plots")
        parent = next((p for p in plots.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UserError(f"--plots {plots}: {parent} is a file, not a folder")
    if cfg.max_chars < 0:
        raise UserError(f"--max-chars must be 0 (no limit) or more, got {cfg.max_chars}")


def run(args: argparse.Namespace) -> int:
    from schemas.folders import unfinished_run

    cfg = dataclass_from_args(InspectConfig, args)
    check_outputs(cfg)
    for p in args.paths:  # inspect is how one looks at what a killed run left: it says so, and reads on
        if (found := unfinished_run(p)) is not None:
            print(f"inspect: note: {found.folder}: its last run did not finish (state: {found.state}); "
                  f"this report covers the {found.rows} row(s) written so far", file=sys.stderr)
    report, loaded = build_report(args.paths, cfg.threshold)
    shown = pick_examples(loaded, cfg.where, cfg.threshold, cfg.show)
    if cfg.json:
        out = dict(report)
        if cfg.show:
            out["examples"] = shown
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False, allow_nan=False)
        sys.stdout.write("\n")
    else:
        from rich.console import Console

        from labeler.inspection import terminal

        console = Console(highlight=False)
        terminal.print_report(console, report)
        if shown:
            from labeler.inspection.show import render

            render(console, shown, cfg.threshold, max_chars=cfg.max_chars)
        elif cfg.show:
            print(f"--show: no rows match --where {cfg.where}", file=sys.stderr)
    if cfg.html is not None or cfg.plots is not None:
        from labeler.inspection import plots

        images = plots.make_plots(report)
        if cfg.plots is not None:
            written = plots.write_plots(images, cfg.plots)
            print(f"wrote {len(written)} plot(s) to {cfg.plots}", file=sys.stderr)
        if cfg.html is not None:
            from labeler.inspection import html_report

            exs = pick_examples(loaded, cfg.where, cfg.threshold, cfg.examples)
            html_report.write_report(cfg.html, report, images, exs, cfg.threshold)
            print(f"wrote {cfg.html}", file=sys.stderr)
    return 0
