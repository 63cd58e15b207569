"""Which checkpoint a resumed run starts from, and a metrics log that does not repeat steps.

transformers' Trainer writes a checkpoint folder piece by piece (weights, optimizer, scheduler,
RNG state) and `trainer_state.json` last, none of it atomically; a run killed while saving
leaves a `checkpoint-N` that looks newest but cannot be loaded (transformers'
`get_last_checkpoint` still picks it, and every rerun then fails). A checkpoint counts as
complete here only when its `trainer_state.json` parses and names its step and its weights are
there, so `--resume_from_checkpoint last` starts from the newest one that is.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
           "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when it is complete."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json (the save was interrupted)"
    except (OSError, ValueError):
        return "trainer_state.json is unreadable (the save was interrupted)"
    if not isinstance(data, dict) or "global_step" not in data:
        return "trainer_state.json has no global_step"
    if not any((folder / name).is_file() for name in WEIGHTS):
        return "no model weights"
    return None


@dataclass
class ResumePoint:
    """The newest complete checkpoint of an output folder and the newer ones that were skipped."""

    path: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> ResumePoint:
    """Newest `checkpoint-N` under ``output_dir`` that `checkpoint_problem` finds nothing wrong with."""
    root = Path(output_dir)
    found = []
    if root.is_dir():
        for child in root.iterdir():
            m = CHECKPOINT.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
    skipped: list[tuple[Path, str]] = []
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return ResumePoint(path, skipped)
        skipped.append((path, problem))
    return ResumePoint(None, skipped)


def checkpoint_step(folder: str | os.PathLike) -> int:
    """The global step a complete checkpoint was saved at."""
    data = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(data["global_step"])


def trim_metrics_log(path: str | os.PathLike, last_step: int | None) -> int:
    """Keep the records of ``path`` (JSON lines with a ``step``) up to ``last_step``; None empties
    it (a fresh run). A resumed run re-logs the steps after its checkpoint, so without this they
    would appear twice. Returns the number of records dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    if last_step is None:
        path.unlink()
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except ValueError:  # a line cut by the kill
            dropped += 1
            continue
        if step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)
    return dropped
