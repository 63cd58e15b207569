"""Real GSM8K solutions as a `responses` table, without depending on the ingest command.

Steps are the answer's lines up to the ``#### N`` line; N is both the final and gold answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from schemas.ids import response_id
from schemas.tables import RESPONSES, from_rows, write_table


def gsm8k_rows(paths: Iterable[Path], n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text("utf-8").splitlines():
            rec = json.loads(line)
            lines = [s for s in rec["answer"].split("\n") if s.strip()]
            final = lines[-1].removeprefix("####").strip() if lines[-1].startswith("####") else None
            steps = lines[:-1] if final is not None else lines
            rid = response_id(rec["question"], steps)
            if rid in seen:
                continue
            seen.add(rid)
            rows.append({"response_id": rid, "problem_id": f"gsm8k-{len(rows)}", "source": "gsm8k",
                         "prompt": rec["question"], "steps": steps, "final_answer": final,
                         "gold_answer": final, "reference_scores": None, "meta": "{}"})
            if len(rows) >= n:
                return rows
    return rows


def write_responses(rows: list[dict[str, Any]], path: Path) -> Path:
    return write_table(from_rows(rows, RESPONSES), path, RESPONSES)
