"""Synthetic but schema-exact inputs for the inspect tests, built column-wise (100k rows in ~1 s).

Reference labels follow PRM800K's shape: steps are correct (1, sometimes neutral 0.5) up to the
first error (0) on erroneous solutions; the judge's scores are the labels, their inverse, or the
labels plus noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from schemas import PAIRS, RESPONSES, STEP_SCORES, from_rows, validate, write_table


def _lists(lengths: np.ndarray, values: pa.Array, null_rows: np.ndarray | None = None) -> pa.Array:
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    mask = pa.array(null_rows) if null_rows is not None else None
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)


def _raw(rng: np.random.Generator, n: int, size: int) -> pa.Array:
    """Raw judge output of ``size`` characters per row that does not compress away (hex noise)."""
    blob = rng.bytes(n * size // 2 + 1).hex()
    return pa.array([blob[i * size:(i + 1) * size] for i in range(n)])


def synthetic_run(
    n: int,
    seed: int = 0,
    *,
    mode: str = "noisy",  # exact | inverted | noisy
    neutral: float = 0.1,
    error_rate: float = 0.0,
    judge: str = "fake:judge",
    raw_bytes: int = 16,
    id_prefix: str = "r",
) -> pa.Table:
    """A step_scores table with reference labels and judge scores, no Python loop per step."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, n)
    total = int(lengths.sum())
    row = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(total) - starts[row]
    erroneous = rng.random(n) < 0.5
    err_pos = np.where(erroneous, (rng.random(n) * lengths).astype(np.int64), 10**6)
    labels = np.where(pos < err_pos[row], 1.0, 0.0)
    after = pos > err_pos[row]
    labels[after] = rng.integers(0, 2, int(after.sum())).astype(np.float64)
    before = pos < err_pos[row]
    labels[before & (rng.random(total) < neutral)] = 0.5
    if mode == "exact":
        scores = labels.copy()
    elif mode == "inverted":
        scores = 1.0 - labels
    else:
        scores = np.clip(labels * 0.8 + 0.1 + rng.normal(0, 0.25, total), 0, 1).round(3)
    failed = rng.random(n) < error_rate
    texts = pa.array([f"Step {p + 1}: compute part {p} of problem {r}." for r, p in zip(row, pos, strict=True)])
    in_tok = 200 + 30 * lengths
    out_tok = 20 * lengths
    table = pa.table({
        "response_id": pa.array([f"{id_prefix}{i:07d}" for i in range(n)]),
        "problem_id": pa.array([f"p{i // 4:07d}" for i in range(n)]),
        "source": pa.array(["synthetic"] * n),
        "prompt": pa.array([f"Problem {i}: what is {i} + {i}?" for i in range(n)]),
        "steps": _lists(lengths, texts),
        "final_answer": pa.array([str(2 * i) for i in range(n)]),
        "gold_answer": pa.array([str(2 * i) for i in range(n)]),
        "reference_scores": _lists(lengths, pa.array(labels)),
        "meta": pa.array(["{}"] * n),
        "judge": pa.array([judge] * n),
        "judge_fingerprint": pa.array([f"fp-{judge}"] * n),
        "scores": _lists(lengths, pa.array(scores), null_rows=failed),
        "raw": _raw(rng, n, raw_bytes),
        "status": pa.array(np.where(failed, "error", "ok")),
        "error": pa.array([("HTTP 500 from judge" if f else None) for f in failed], pa.string()),
        "attempts": pa.array(np.ones(n, dtype=np.int32)),
        "input_tokens": pa.array(in_tok.astype(np.int64)),
        "output_tokens": pa.array(out_tok.astype(np.int64)),
        "cached_tokens": pa.array(np.full(n, 150, dtype=np.int64)),
        "cost_usd": pa.array((in_tok * 0.15 + out_tok * 0.6) / 1e6),
        "latency_s": pa.array(np.full(n, 0.5)),
        "created_at": pa.nulls(n, pa.timestamp("us", tz="UTC")),
    })
    return validate(table, STEP_SCORES)


def write_run(path: Path, n: int, **kw: Any) -> Path:
    return write_table(synthetic_run(n, **kw), path, STEP_SCORES)


def score_rows(items: list[tuple[str, list[float], list[float | None] | None]], judge: str = "fake:judge",
               status: str = "ok", cost: float = 0.001) -> list[dict[str, Any]]:
    """step_scores rows from (response_id, reference labels, judge scores)."""
    rows = []
    for rid, ref, scores in items:
        rows.append({
            "response_id": rid, "problem_id": rid, "source": "hand", "prompt": f"problem {rid}",
            "steps": [f"{rid} step {k + 1}" for k in range(len(ref))], "reference_scores": ref,
            "judge": judge, "judge_fingerprint": f"fp-{judge}", "scores": scores, "status": status,
            "input_tokens": 100, "output_tokens": 10, "cached_tokens": 0, "cost_usd": cost,
            "latency_s": 0.2,
        })
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]], kind: Any = STEP_SCORES) -> Path:
    return write_table(from_rows(rows, kind), path, kind)


__all__ = ["PAIRS", "RESPONSES", "STEP_SCORES", "score_rows", "synthetic_run", "write_rows", "write_run"]
