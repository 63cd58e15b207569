"""Real GSM8K pair shards for the trainer tests, written through `schemas` (no labeler needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from schemas.ids import pair_id
from schemas.tables import PAIRS, from_rows, write_table

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "gsm8k" / "test_sample.jsonl"


def _corrupt(step: str) -> str:
    """Change the last number of a step (its result), like a slipped calculation."""
    nums = list(re.finditer(r"\d+", step))
    if not nums:
        return step + " 7"
    m = nums[-1]
    return step[: m.start()] + str(int(m.group()) + 3) + step[m.end():]


def gsm8k_pair_rows(n: int, strategy: str = "best-worst", offset: int = 0) -> list[dict]:
    """``n`` pairs from the bundled sample: chosen = gold steps, rejected = one step corrupted.

    best-worst: whole solutions; first-error: the shared correct prefix goes into
    ``prefix_steps`` and the completions are the single diverging step.
    """
    rows = []
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    i = offset
    while len(rows) < n:
        ex = json.loads(lines[i % len(lines)])
        i += 1
        steps = [s for s in ex["answer"].split("\n") if s.strip()]
        if len(steps) < 3:
            continue
        err = (i % (len(steps) - 1))  # never the "#### N" line alone
        bad = list(steps)
        bad[err] = _corrupt(steps[err])
        if strategy == "first-error":
            prefix, chosen, rejected = steps[:err], [steps[err]], [bad[err]]
            cs, rs = [1.0], [0.0]
        else:
            prefix, chosen, rejected = [], steps, bad
            cs = [1.0] * len(steps)
            rs = [1.0] * err + [0.0] + [None] * (len(steps) - err - 1)
        rows.append({
            "pair_id": pair_id(ex["question"], prefix, chosen, rejected),
            "problem_id": f"gsm8k-{i}",
            "prompt": ex["question"],
            "prefix_steps": prefix,
            "chosen_steps": chosen,
            "rejected_steps": rejected,
            "chosen_scores": cs,
            "rejected_scores": rs,
            "chosen_reward": 1.0,
            "rejected_reward": 0.0,
            "strategy": strategy,
            "judge_fingerprint": "test",
        })
    return rows


def write_pairs(folder: Path, rows: list[dict], per_shard: int = 0, aggregate: str = "product",
                threshold: float = 0.5) -> Path:
    """Shards plus the manifest `stepdpo pairs` writes last (the trainer refuses a folder without)."""
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = per_shard or max(len(rows), 1)
    names = []
    for k in range(0, max(len(rows), 1), per_shard):
        names.append(f"part-{k // per_shard:05d}.parquet")
        write_table(from_rows(rows[k:k + per_shard], PAIRS), folder / names[-1], PAIRS)
    manifest = {"schema": PAIRS.tag, "inputs": ["tests"], "shards": names,
                "config": {"strategy": rows[0]["strategy"] if rows else None, "aggregate": aggregate,
                           "threshold": threshold},
                "judge_fingerprints": sorted({r.get("judge_fingerprint") or "" for r in rows})}
    (folder / "pairs.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def preference_rows(rows: list[dict], sep: str = "\n") -> list[dict]:
    """Pairs rows as the streaming loader yields them (prompt/chosen/rejected + step columns)."""
    from trainer.data import to_example

    return [to_example(r, sep) for r in rows]
