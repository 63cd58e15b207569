"""Labeled runs → a pairs folder (the trainer's input): load, group, build, write whole.

Rows are grouped per problem: the same ``problem_id`` AND the same problem text (an id reused
for two problems is split and counted, never paired across). Each group goes to the strategy
named in the config (:data:`labeler.pairs.strategies.STRATEGIES`); every pair then gets its
shared leading steps moved into ``prefix_steps``, is margin-filtered and deduplicated.

Rewards (``chosen_reward`` / ``rejected_reward``) aggregate the scores stored in the same row
(``chosen_scores`` / ``rejected_scores``) with the recorded ``aggregation``, so a row is
self-consistent: a trainer can recompute them. A pair whose reward margin is below
``min_margin`` is dropped (all strategies). Rows with status other than ok are skipped and
counted. Rows from different judge fingerprints are never mixed unless asked for, because two
judges' scores are not on one scale.

The folder is written whole: shards and ``pairs.json`` go to a hidden staging folder that is
renamed into place at the end (``schemas.folders``), so a killed run leaves the old folder (or
none), and a rerun never mixes its shards with an older run's. ``pairs.json`` records, besides
the config and counts: ``aggregation`` and ``score_floor`` (how the stored rewards were made),
``step_threshold`` (below it a step is an error), ``complete`` and ``shards``.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labeler.pairs.rectify import is_continuation
from labeler.pairs.strategies import STRATEGIES, share_prefix
from schemas.aggregate import AGGREGATIONS, DEFAULT_FLOOR, DEFAULT_STEP_THRESHOLD
from schemas.errors import UserError
from schemas.folders import staged_folder, write_manifest
from schemas.tables import (
    PAIRS,
    RESPONSES,
    STEP_SCORES,
    from_rows,
    read_kind,
    read_table,
    write_table,
)

CONTINUATIONS = ("step", "rest")
MANIFEST = "pairs.json"


@dataclass
class PairsConfig:
    strategy: str = field(
        default="first-error",
        metadata={"help": "how pairs are chosen (see the description above)",
                  "choices": tuple(STRATEGIES)},
    )
    aggregate: str = field(
        default="product",
        metadata={"help": "how step scores become one reward per side", "choices": AGGREGATIONS},
    )
    min_margin: float = field(
        default=0.1,
        metadata={
            "help": "drop pairs whose chosen_reward - rejected_reward is below this; a pair "
            "needs a positive margin in any case"
        },
    )
    threshold: float = field(
        default=DEFAULT_STEP_THRESHOLD,
        metadata={"help": "a step scored below this is an error (first-error); recorded in "
                  "pairs.json as step_threshold"},
    )
    continuation: str = field(
        default="step",
        metadata={
            "help": "first-error: chosen/rejected hold the single diverging step (Step-DPO) or "
            "the rest of each solution from that step on",
            "choices": CONTINUATIONS,
        },
    )
    score_floor: float = field(
        default=DEFAULT_FLOOR,
        metadata={"help": "clip for harmonic/geometric means so one zero stays finite"},
    )
    allow_mixed_judges: bool = field(
        default=False,
        metadata={"help": "allow inputs scored by different judge fingerprints (pairs may mix them)"},
    )
    shard_size: int = field(
        default=50_000, metadata={"help": "pairs per output shard", "metavar": "N"}
    )


# ---------------------------------------------------------------------------- loading


_RESPONSE_COLUMNS = ("response_id", "problem_id", "prompt", "steps", "reference_scores", "meta")
_SCORE_COLUMNS = _RESPONSE_COLUMNS + ("judge", "judge_fingerprint", "scores", "status")


def load_rows(paths: Iterable[str | os.PathLike], stats: Counter) -> tuple[list[dict[str, Any]], str]:
    """Read every input (step_scores runs; `responses` files too for prm800k-alternatives).

    Returns the usable rows and the kind read. Rows with status != ok are dropped and counted;
    one row per (response, judge fingerprint) is kept: the first ok one, as in a run folder.
    Only the columns pairs use are read (a judge's ``raw`` output can dwarf everything else).
    """
    kinds = {}
    tables = []
    for p in paths:
        kind = read_kind(p)
        if kind not in (STEP_SCORES.name, RESPONSES.name):
            raise UserError(f"{p}: this is a '{kind}' file; pairs are built from 'step_scores' runs")
        kinds[str(p)] = kind
        if kind == STEP_SCORES.name:
            tables.append(read_table(p, STEP_SCORES, _SCORE_COLUMNS))
        else:
            tables.append(read_table(p, RESPONSES, _RESPONSE_COLUMNS))
    if len(set(kinds.values())) > 1:
        raise UserError("inputs mix 'step_scores' runs and 'responses' files; give one kind")
    kind = next(iter(kinds.values()))
    rows: dict[tuple[str, str | None], dict[str, Any]] = {}
    for table in tables:
        for row in table.to_pylist():
            stats["input_rows"] += 1
            if kind == STEP_SCORES.name and row["status"] != "ok":
                stats["skipped_status"] += 1
                continue
            key = (row["response_id"], row.get("judge_fingerprint"))
            if key in rows:
                stats["duplicate_rows"] += 1
                continue
            rows[key] = row
    return list(rows.values()), kind


def check_judges(rows: Sequence[dict[str, Any]], allow_mixed: bool) -> list[str]:
    """The distinct judge fingerprints; refuse several unless ``allow_mixed``."""
    fps = sorted({r.get("judge_fingerprint") or "" for r in rows})
    if len(fps) > 1 and not allow_mixed:
        judges = sorted({f"{r.get('judge')} ({(r.get('judge_fingerprint') or '')[:12]})" for r in rows})
        raise UserError(
            f"inputs were scored by {len(fps)} different judges ({', '.join(judges)}); their scores "
            "are not comparable, so pairs are not mixed across them; label with one judge or pass "
            "--allow-mixed-judges"
        )
    return fps


def _groups(rows: Sequence[dict[str, Any]], stats: Counter) -> list[list[dict[str, Any]]]:
    """Rows per problem: same id and same text. An id reused for two problem texts (a merge of
    two datasets, a hand-edited file) is split by text and counted, so no pair joins them."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r.get("problem_id") or "", r["prompt"])].append(r)
    texts = Counter(pid for pid, _ in by if pid)
    reused = sum(1 for n in texts.values() if n > 1)
    if reused:
        stats["problem_ids_on_several_texts"] = reused
    # Deterministic output: problems and candidates in a fixed order whatever the shard order.
    return [
        sorted(by[k], key=lambda r: (r["response_id"], r.get("judge_fingerprint") or ""))
        for k in sorted(by)
    ]


def build_pairs(rows: Sequence[dict[str, Any]], cfg: PairsConfig, stats: Counter) -> list[dict[str, Any]]:
    """All pairs of ``rows`` under ``cfg``: leading shared steps moved into the prefix,
    margin-filtered and deduplicated by pair_id."""
    if cfg.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy '{cfg.strategy}'; choose one of {', '.join(STRATEGIES)}")
    if cfg.continuation not in CONTINUATIONS:
        raise UserError(f"unknown continuation '{cfg.continuation}'; choose step or rest")
    if cfg.aggregate not in AGGREGATIONS:
        raise UserError(f"unknown aggregation '{cfg.aggregate}'; choose one of {', '.join(AGGREGATIONS)}")
    if not 0.0 <= cfg.threshold <= 1.0:  # as `stepdpo inspect --threshold`: scores are in [0, 1]
        raise UserError(f"--threshold must be in [0, 1], got {cfg.threshold}")
    groups = _groups(rows, stats)
    stats["problems"] = len(groups)
    seen: set[str] = set()
    out = []
    for group in groups:
        for p in STRATEGIES[cfg.strategy](group, cfg, stats):
            shared = share_prefix(p, cfg)
            if shared is not p:
                stats["shared_steps_moved_to_prefix"] += len(shared["prefix_steps"]) - len(p["prefix_steps"])
                p = shared
            cr, rr = p["chosen_reward"], p["rejected_reward"]
            if cr is None or rr is None or cr - rr <= 0 or cr - rr < cfg.min_margin:
                stats["below_min_margin"] += 1
                continue
            if p["pair_id"] in seen:
                stats["duplicate_pairs"] += 1
                continue
            seen.add(p["pair_id"])
            out.append(p)
    stats["pairs"] = len(out)
    return out


def check_output(out_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an -o that is not ours to replace: a file, a folder holding anything but an
    earlier pairs folder (e.g. the labeled run itself), or an earlier pairs folder without
    ``overwrite``. Runs before any work, so a refusal costs nothing."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"-o {out_dir}: exists and is not a folder; pairs are written as a folder of shards")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.tables import kind_of_schema

    ours = 0
    for f in sorted(out_dir.iterdir()):
        if f.name.startswith("."):
            continue
        if f.name == MANIFEST:
            ours += 1
            continue
        if f.is_file() and f.suffix == ".parquet":
            try:
                tag = kind_of_schema(pq.read_schema(f))
            except (pa.ArrowInvalid, OSError):
                tag = None
            kind = (tag or "not a stepdpo file").partition("/")[0]
            if kind == PAIRS.name:
                ours += 1
                continue
            what = f"{f.name} ({kind})"
        else:
            what = f.name + ("/" if f.is_dir() else "")
        raise UserError(f"-o {out_dir} holds {what}, which writing pairs there would delete; "
                        "choose another -o folder")
    if ours and not overwrite:
        raise UserError(f"-o {out_dir} already holds pairs; pass --overwrite to replace them, or "
                        "choose another -o folder")


def write_shards(pairs: Sequence[dict[str, Any]], folder: Path, shard_size: int) -> list[Path]:
    """``part-NNNNN.parquet`` shards of ``shard_size`` pairs (one empty shard when none)."""
    written = []
    for n, start in enumerate(range(0, max(len(pairs), 1), shard_size)):
        chunk = list(pairs[start : start + shard_size])
        written.append(write_table(from_rows(chunk, PAIRS), folder / f"part-{n:05d}.parquet", PAIRS))
    return written


def make_pairs(
    inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, cfg: PairsConfig,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Read runs, build pairs, write the folder whole (shards, then the manifest, then the swap);
    returns the manifest. An existing pairs folder at ``out_dir`` is replaced only with
    ``overwrite``."""
    if cfg.shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {cfg.shard_size}")
    check_output(out_dir, overwrite)
    stats: Counter = Counter()
    rows, kind = load_rows(inputs, stats)
    if kind == RESPONSES.name and cfg.strategy != "prm800k-alternatives":
        raise UserError(
            f"{inputs[0]}: is a 'responses' file; '{cfg.strategy}' pairs need judge scores: run "
            "`stepdpo label` on it first (--judge reference passes human labels through)"
        )
    fps: list[str] = []
    if kind == STEP_SCORES.name:
        # Rectify pairs join two runs by design: wrong solutions (a step judge) and their
        # continuations (answer-match); for first-error each side must still be one judge.
        conts = [r for r in rows if is_continuation(r)] if cfg.strategy == "first-error" else []
        fps = check_judges([r for r in rows if not is_continuation(r)] if conts else rows, cfg.allow_mixed_judges)
        fps += check_judges(conts, cfg.allow_mixed_judges) if conts else []
    pairs = build_pairs(rows, cfg, stats)
    manifest = {
        "schema": PAIRS.tag,
        "inputs": [str(p) for p in inputs],
        "config": asdict(cfg),
        "strategy": cfg.strategy,
        "aggregation": cfg.aggregate,
        "score_floor": cfg.score_floor,
        "step_threshold": cfg.threshold,
        "judge_fingerprints": fps,
        "counts": dict(sorted(stats.items())),
    }
    with staged_folder(out_dir) as staging:
        write_shards(pairs, staging, cfg.shard_size)
        return write_manifest(staging, MANIFEST, manifest)
