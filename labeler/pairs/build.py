"""Labeled runs → preference pairs (the trainer's input).

Three strategies, all per problem (rows grouped by `problem_id`, or by prompt text where the
id is missing):

``best-worst``
    The solution with the highest aggregated reward vs the one with the lowest. Both sides are
    whole solutions (``prefix_steps`` is empty).

``first-error`` (Step-DPO, Lai et al. 2024)
    A wrong solution B whose first error (first step scored below ``threshold``) is step e, and
    a solution G of the same problem whose first e steps are exactly B's and whose step e is
    scored correct. The shared steps go into ``prefix_steps`` (the prompt side). With
    ``continuation=step`` (the default, as in Step-DPO) chosen and rejected hold ONE step each:
    G's step e and B's step e, so the loss compares exactly the step where they diverge. With
    ``continuation=rest`` they hold everything from step e on, and G must be wholly correct.
    Rows where B's prefix does not match any G are counted (``no_partner``), never forced.

``prm800k-alternatives``
    PRM800K rates several alternative steps at the same prefix; each alternative rated 1 is
    paired with each rated -1 at that step, the response's steps before it being the prefix.
    The step the response took counts as one of the options (its rating is its reference
    score). Read from ``meta.alternatives`` of ingested rows (see :func:`alternatives_of`).

Rewards (``chosen_reward`` / ``rejected_reward``) aggregate the scores stored in the same row
(``chosen_scores`` / ``rejected_scores``), so a row is self-consistent: a trainer can recompute
them. A pair whose reward margin is below ``min_margin`` is dropped (all strategies). Rows with
status other than ok are skipped and counted. Rows from different judge fingerprints are never
mixed unless asked for, because two judges' scores are not on one scale.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from schemas.aggregate import AGGREGATIONS, DEFAULT_FLOOR, aggregate, first_error
from schemas.atomic import atomic_write_json
from schemas.errors import UserError
from schemas.ids import pair_id
from schemas.tables import (
    PAIRS,
    RESPONSES,
    STEP_SCORES,
    from_rows,
    read_kind,
    read_table,
    write_table,
)

STRATEGIES = ("best-worst", "first-error", "prm800k-alternatives")
CONTINUATIONS = ("step", "rest")
MANIFEST = "pairs.json"
# PRM800K's human ratings on the [0, 1] scale of step scores (as ingest maps them).
RATING_SCORE = {-1: 0.0, 0: 0.5, 1: 1.0}
SCORE_RATING = {v: k for k, v in RATING_SCORE.items()}


@dataclass
class PairsConfig:
    strategy: str = field(
        default="first-error",
        metadata={"help": "how pairs are chosen (see the description above)", "choices": STRATEGIES},
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
        default=0.5, metadata={"help": "a step scored below this is an error (first-error)"}
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


def _reward(scores: Sequence[float | None], cfg: PairsConfig) -> float | None:
    return aggregate(scores, cfg.aggregate, cfg.score_floor)


def _ok_score(s: float | None) -> bool:
    return s is not None and not math.isnan(s)


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


def _groups(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r.get("problem_id") or "prompt:" + r["prompt"]].append(r)
    # Deterministic output: problems and candidates in a fixed order whatever the shard order.
    return [
        sorted(by[k], key=lambda r: (r["response_id"], r.get("judge_fingerprint") or ""))
        for k in sorted(by)
    ]


def _fingerprint(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    fa, fb = a.get("judge_fingerprint"), b.get("judge_fingerprint")
    return fa if fa == fb else f"{fa}|{fb}"


def _pair(
    strategy: str,
    chosen: dict[str, Any],
    rejected: dict[str, Any],
    prefix: list[str],
    c_steps: list[str],
    r_steps: list[str],
    c_scores: list[float | None],
    r_scores: list[float | None],
    cfg: PairsConfig,
    fingerprint: str | None,
) -> dict[str, Any]:
    return {
        "pair_id": pair_id(chosen["prompt"], prefix, c_steps, r_steps),
        "problem_id": chosen.get("problem_id"),
        "prompt": chosen["prompt"],
        "prefix_steps": prefix,
        "chosen_steps": c_steps,
        "rejected_steps": r_steps,
        "chosen_scores": c_scores,
        "rejected_scores": r_scores,
        "chosen_reward": _reward(c_scores, cfg),
        "rejected_reward": _reward(r_scores, cfg),
        "strategy": strategy,
        "judge_fingerprint": fingerprint,
        "chosen_response_id": chosen["response_id"],
        "rejected_response_id": rejected["response_id"],
    }


# ---------------------------------------------------------------------------- strategies


def best_worst(group: list[dict[str, Any]], cfg: PairsConfig, stats: Counter) -> list[dict[str, Any]]:
    scored = []
    for r in group:
        reward = _reward(r["scores"] or [], cfg)
        if reward is None:
            stats["skipped_no_reward"] += 1
            continue
        scored.append((reward, r))
    if len(scored) < 2:
        return []
    # Ties broken by response_id so the choice never depends on input order.
    best = max(scored, key=lambda x: (x[0], x[1]["response_id"]))[1]
    worst = min(scored, key=lambda x: (x[0], x[1]["response_id"]))[1]
    if list(best["steps"]) == list(worst["steps"]):  # one solution scored by two judges
        return []
    return [
        _pair(
            "best-worst", best, worst, [], list(best["steps"]), list(worst["steps"]),
            list(best["scores"] or []), list(worst["scores"] or []), cfg, _fingerprint(best, worst),
        )
    ]


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):  # noqa: B905 - lengths differ on purpose
        if x != y:
            break
        n += 1
    return n


def first_error_pairs(
    group: list[dict[str, Any]], cfg: PairsConfig, stats: Counter
) -> list[dict[str, Any]]:
    """One pair per wrong solution that has a partner sharing its prefix up to the error."""
    info = []
    for r in group:
        scores = list(r["scores"] or [])
        if len(scores) != len(r["steps"]):
            stats["skipped_score_count_mismatch"] += 1
            continue
        info.append((r, scores, first_error(scores, cfg.threshold)))
    out = []
    for bad, b_scores, e in info:
        if e < 0:
            continue
        stats["wrong_solutions"] += 1
        candidates = []
        for good, g_scores, g_err in info:
            if good is bad or len(good["steps"]) <= e:
                continue
            if cfg.continuation == "rest" and g_err != -1:
                continue
            if not _ok_score(g_scores[e]) or g_scores[e] < cfg.threshold:
                continue
            if _common_prefix(good["steps"], bad["steps"]) != e:
                continue
            # Prefer a wholly correct partner, then the best rewarded one, then a fixed order.
            reward = _reward(g_scores, cfg)
            key = (g_err != -1, -(reward if reward is not None else -1.0), good["response_id"])
            candidates.append((key, good, g_scores))
        if not candidates:
            stats["no_partner"] += 1
            continue
        _, good, g_scores = min(candidates, key=lambda c: c[0])
        end = e + 1 if cfg.continuation == "step" else None
        out.append(
            _pair(
                "first-error", good, bad, list(bad["steps"][:e]),
                list(good["steps"][e:end]), list(bad["steps"][e:end]),
                g_scores[e:end], b_scores[e:end], cfg, _fingerprint(good, bad),
            )
        )
    return out


def alternatives_of(row: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Every rated option at each step: the step the response took plus its alternatives.

    `stepdpo ingest prm800k` stores the completions NOT taken at step k as
    ``meta["alternatives"] = [{"step": k, "text": ..., "rating": -1|0|1|null, "flagged": ...}]``
    (PRM800K's own field names); the taken step is ``steps[k]`` with its rating in
    ``reference_scores[k]`` (1.0 / 0.5 / 0.0). A per-step list of lists is accepted too.
    Flagged completions are left out: PRM800K's labelers marked them as questionable.
    """
    steps = list(row["steps"])
    per_step: list[list[dict[str, Any]]] = [[] for _ in steps]
    refs = list(row.get("reference_scores") or [])
    for k, step in enumerate(steps):
        rating = SCORE_RATING.get(refs[k]) if k < len(refs) else None
        if rating is not None:
            per_step[k].append({"text": step, "rating": rating})
    try:
        meta = json.loads(row.get("meta") or "{}")
    except json.JSONDecodeError:
        return per_step
    alts = meta.get("alternatives") if isinstance(meta, dict) else None
    if not isinstance(alts, list):
        return per_step
    for k, item in enumerate(alts):
        options = item if isinstance(item, list) else [item]
        for a in options:
            if not isinstance(a, dict) or a.get("flagged"):
                continue
            step = a.get("step", k if isinstance(item, list) else None)
            if isinstance(step, int) and 0 <= step < len(steps):
                per_step[step].append(a)
    return per_step


def prm800k_pairs(group: list[dict[str, Any]], cfg: PairsConfig, stats: Counter) -> list[dict[str, Any]]:
    """Rating 1 vs rating -1 among the options at the same step of the same response."""
    out = []
    for row in group:
        made = 0
        for i, options in enumerate(alternatives_of(row)):
            good = [a for a in options if a.get("rating") == 1 and isinstance(a.get("text"), str)]
            bad = [a for a in options if a.get("rating") == -1 and isinstance(a.get("text"), str)]
            for g in good:
                for b in bad:
                    if g["text"] == b["text"]:
                        continue
                    made += 1
                    out.append(
                        _pair(
                            "prm800k-alternatives", row, row, list(row["steps"][:i]),
                            [g["text"]], [b["text"]], [RATING_SCORE[1]], [RATING_SCORE[-1]],
                            cfg, row.get("judge_fingerprint"),
                        )
                    )
        if not made:
            stats["no_rated_alternatives"] += 1
    return out


_BUILDERS = {"best-worst": best_worst, "first-error": first_error_pairs, "prm800k-alternatives": prm800k_pairs}


def build_pairs(rows: Sequence[dict[str, Any]], cfg: PairsConfig, stats: Counter) -> list[dict[str, Any]]:
    """All pairs of ``rows`` under ``cfg``: margin-filtered and deduplicated by pair_id."""
    if cfg.strategy not in _BUILDERS:
        raise UserError(f"unknown strategy '{cfg.strategy}'; choose one of {', '.join(STRATEGIES)}")
    if cfg.continuation not in CONTINUATIONS:
        raise UserError(f"unknown continuation '{cfg.continuation}'; choose step or rest")
    if cfg.aggregate not in AGGREGATIONS:
        raise UserError(f"unknown aggregation '{cfg.aggregate}'; choose one of {', '.join(AGGREGATIONS)}")
    if not 0.0 <= cfg.threshold <= 1.0:  # as `stepdpo inspect --threshold`: scores are in [0, 1]
        raise UserError(f"--threshold must be in [0, 1], got {cfg.threshold}")
    groups = _groups(rows)
    stats["problems"] = len(groups)
    seen: set[str] = set()
    out = []
    for group in groups:
        for p in _BUILDERS[cfg.strategy](group, cfg, stats):
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


def _check_only_pairs(out_dir: Path) -> None:
    """Refuse an output folder holding anything but earlier pair shards (e.g. ``-o`` naming the
    labeled run itself): its shards would be overwritten or deleted as stale."""
    if not out_dir.is_dir():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.tables import kind_of_schema

    for f in sorted(out_dir.glob("*.parquet")):
        if f.name.startswith("."):
            continue
        try:
            tag = kind_of_schema(pq.read_schema(f))
        except (pa.ArrowInvalid, OSError):
            tag = None
        kind = (tag or "not a stepdpo file").partition("/")[0]
        if kind != PAIRS.name:
            raise UserError(f"-o {out_dir} holds {f.name} ({kind}), which writing pairs there would "
                            "overwrite or delete; choose another -o folder")


def write_pairs(pairs: Sequence[dict[str, Any]], out_dir: str | os.PathLike, shard_size: int) -> list[Path]:
    """Write ``part-NNNNN.parquet`` shards and remove stale shards of an earlier, larger run."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {shard_size}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; pairs are written as a folder of shards")
    _check_only_pairs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for n, start in enumerate(range(0, max(len(pairs), 1), shard_size)):
        chunk = list(pairs[start : start + shard_size])
        written.append(write_table(from_rows(chunk, PAIRS), out_dir / f"part-{n:05d}.parquet", PAIRS))
    for stale in out_dir.glob("part-*.parquet"):
        if stale not in written:
            stale.unlink()
    return written


def make_pairs(
    inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, cfg: PairsConfig
) -> dict[str, Any]:
    """Read runs, build pairs, write shards and the manifest; returns the manifest."""
    stats: Counter = Counter()
    rows, kind = load_rows(inputs, stats)
    if kind == RESPONSES.name and cfg.strategy != "prm800k-alternatives":
        raise UserError(
            f"{inputs[0]}: is a 'responses' file; '{cfg.strategy}' pairs need judge scores: run "
            "`stepdpo label` on it first (--judge reference passes human labels through)"
        )
    fps = check_judges(rows, cfg.allow_mixed_judges) if kind == STEP_SCORES.name else []
    pairs = build_pairs(rows, cfg, stats)
    shards = write_pairs(pairs, out_dir, cfg.shard_size)
    manifest = {
        "schema": PAIRS.tag,
        "inputs": [str(p) for p in inputs],
        "config": asdict(cfg),
        "judge_fingerprints": fps,
        "counts": dict(sorted(stats.items())),
        "shards": [p.name for p in shards],
    }
    atomic_write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest
