"""`stepdpo inspect` on big step_scores files: columnar summary vs a per-row Python loop.

The columnar path reads only the summary's columns (judge raw output, prompts and step text are
most of a file's bytes) and computes everything with Arrow compute / numpy over flattened list
columns. The baseline is what a quick script does: read the whole file, ``to_pylist()``, and loop
over rows computing the same first-error / step-accuracy / ProcessBench numbers with
``schemas.first_error``. Both must agree on the ProcessBench numbers.

    .venv/bin/python bench/inspect_speed.py                 # 100k and 300k rows
    .venv/bin/python bench/inspect_speed.py --rows 1000000 --raw-bytes 1500

Writes bench/results/inspect_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402

from labeler.inspection.stats import COLUMNS  # noqa: E402
from schemas import first_error  # noqa: E402
from stepdpo.commands.inspect import build_report  # noqa: E402
from tests.inspect_fixtures import write_run  # noqa: E402


def column_bytes(path: Path) -> dict[str, int]:
    """Compressed bytes per top-level column, from the Parquet footer."""
    meta = pq.ParquetFile(path).metadata
    out: dict[str, int] = {}
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for c in range(group.num_columns):
            col = group.column(c)
            name = col.path_in_schema.split(".")[0]
            out[name] = out.get(name, 0) + col.total_compressed_size
    return out


def naive(path: Path, threshold: float) -> dict:
    rows = pq.read_table(path).to_pylist()
    hit_err = n_err = hit_ok = n_ok = agree = steps = 0
    for r in rows:
        if r["status"] != "ok" or r["scores"] is None or r["reference_scores"] is None:
            continue
        if len(r["scores"]) != len(r["reference_scores"]):
            continue
        for s, ref in zip(r["scores"], r["reference_scores"], strict=True):
            if s is not None and ref is not None:
                steps += 1
                agree += (s >= threshold) == (ref >= threshold)
        pred, want = first_error(r["scores"], threshold), first_error(r["reference_scores"], threshold)
        if want >= 0:
            n_err += 1
            hit_err += pred == want
        else:
            n_ok += 1
            hit_ok += pred == want
    return {"error_accuracy": hit_err / n_err, "correct_accuracy": hit_ok / n_ok,
            "step_accuracy": agree / steps}


def one(n: int, raw_bytes: int, folder: Path) -> dict:
    path = folder / f"run-{n}.parquet"
    t0 = time.perf_counter()
    write_run(path, n, seed=n, raw_bytes=raw_bytes, error_rate=0.01)
    gen_s = time.perf_counter() - t0
    sizes = column_bytes(path)
    needed = sum(v for k, v in sizes.items() if k in COLUMNS["step_scores"])

    t0 = time.perf_counter()
    rep, _ = build_report([str(path)], 0.5)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = naive(path, 0.5)
    slow_s = time.perf_counter() - t0
    agr = rep["agreement"]["fake:judge"]
    pb = agr["processbench"]
    same = (abs(pb["error_accuracy"] - slow["error_accuracy"]) < 1e-6
            and abs(pb["correct_accuracy"] - slow["correct_accuracy"]) < 1e-6
            and abs(agr["step_accuracy"] - slow["step_accuracy"]) < 1e-6)
    result = {
        "rows": n, "steps": rep["steps"]["total"], "file_mb": round(path.stat().st_size / 2**20, 1),
        "needed_column_mb": round(needed / 2**20, 1),
        "share_of_bytes_read": round(needed / sum(sizes.values()), 3),
        "columnar_s": round(fast_s, 3), "per_row_loop_s": round(slow_s, 3),
        "speedup": round(slow_s / fast_s, 1), "same_numbers": same, "generate_s": round(gen_s, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--raw-bytes", type=int, default=1000,
                    help="size of each row's raw judge output (real judges write ~0.5-2 KB)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "inspect_speed.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one(n, args.raw_bytes, Path(tmp)) for n in args.rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"bench": "inspect_speed", "machine": platform.platform(),
                               "python": platform.python_version(), "raw_bytes": args.raw_bytes,
                               "runs": runs}, indent=2))
    print(f"wrote {out}")
    return 0 if all(r["same_numbers"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
