"""Step labels → reward-model training examples (`stepdpo train-rm`'s data half).

Inputs are step_scores runs (the ``scores`` of ok rows) or responses files (their
``reference_scores``), streamed from Parquet one record batch at a time, so memory does not grow
with the input. A label becomes a target in [0, 1]: hard (``score >= threshold``) or soft (the
score); for a PRM, steps after the first error are ignored by default; for an ORM, the step
labels aggregate into the solution's. The held-out split is by problem (a hash of
``problem_id``), so no problem is in both halves. Examples are laid out as the judge reads them
(`schemas.prm_layout`): a separator after each step, its position the place the loss is read.

The model, its loss and saving are in :mod:`trainer.reward_model`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import torch

from schemas.aggregate import aggregate
from schemas.errors import UserError
from schemas.ids import sha256_hex
from schemas.prm_layout import render, score_positions
from schemas.tables import RESPONSES, STEP_SCORES, parquet_files, read_kind

if TYPE_CHECKING:
    from trainer.reward_model import RewardModelConfig

IGNORE = -100.0  # the target of a position without a loss


def _value(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def step_targets(labels: Sequence[float | None] | None, cfg: RewardModelConfig) -> list[float | None]:
    """Per-step training targets in [0, 1] (None: no loss at that step)."""
    out: list[float | None] = []
    failed = False
    for raw in labels or []:
        s = _value(raw)
        if s is None or (failed and cfg.after_first_error == "ignore"):
            out.append(None)
            continue
        out.append(min(max(s, 0.0), 1.0) if cfg.soft_labels else float(s >= cfg.threshold))
        failed = failed or s < cfg.threshold
    return out


def outcome_target(labels: Sequence[float | None] | None, cfg: RewardModelConfig) -> float | None:
    """The solution's target: the aggregated step labels, hard or soft."""
    r = aggregate([_value(x) for x in labels or []], cfg.aggregate)
    if r is None:
        return None
    return min(max(r, 0.0), 1.0) if cfg.soft_labels else float(r >= cfg.threshold)


def heldout(row: dict[str, Any], fraction: float) -> bool:
    """True for rows of the held-out problems (a stable hash of problem_id, else the prompt)."""
    if fraction <= 0:
        return False
    key = row.get("problem_id") or row["prompt"]
    return int(sha256_hex({"heldout": key})[:8], 16) / 16**8 < fraction


# -- input files --------------------------------------------------------------------------
@dataclass
class LabelSource:
    """The Parquet shards to train from and the column holding their step labels."""

    files: list[Path]
    label_column: str


COLUMNS = ["response_id", "problem_id", "prompt", "steps", "final_answer", "gold_answer"]


def _has_labels(path: Path) -> bool:
    """Whether a responses shard has a row with reference_scores (reads that column only)."""
    column = pq.read_table(path, columns=["reference_scores"]).column(0)
    return column.null_count < len(column)


def label_source(paths: Sequence[str]) -> LabelSource:
    """step_scores runs (labels: ``scores`` of ok rows) or responses files (``reference_scores``);
    all inputs must be of one kind."""
    kinds, files = set(), []
    for path in paths:
        kind = read_kind(path)
        if kind not in (STEP_SCORES.name, RESPONSES.name):
            raise UserError(f"{path}: a {kind} file; train-rm reads step_scores runs or responses "
                            "files with reference_scores")
        kinds.add(kind)
        found = parquet_files(path)
        if kind == RESPONSES.name and not any(_has_labels(f) for f in found):
            # e.g. a `generate` folder: say so before a model loads, not "no training step can run"
            raise UserError(f"{path}: responses with no reference_scores (no step labels); label it first "
                            f"(`stepdpo label {path} --judge ... -o RUN`) and train on RUN")
        files += found
    if len(kinds) > 1:
        raise UserError("mixed inputs: give only step_scores runs or only responses files")
    column = "scores" if kinds == {STEP_SCORES.name} else "reference_scores"
    return LabelSource(files, column)


def iter_rows(source: LabelSource, batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    """Rows with labels, one record batch at a time (memory does not grow with the input)."""
    for f in source.files:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        cols = [c for c in COLUMNS if c in names] + [source.label_column]
        if "status" in names:
            cols.append("status")
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            for row in batch.to_pylist():
                if row.get("status", "ok") != "ok" or row.get(source.label_column) is None:
                    continue
                row["labels"] = row.pop(source.label_column)
                yield row


# -- encoding -----------------------------------------------------------------------------
def encode_process(tokenizer: Any, prompt: str, steps: list[str], sep: str, max_length: int
                   ) -> tuple[list[int], list[int | None]]:
    """Token ids (cut at ``max_length``) and each step's separator position (None past it)."""
    layout = render("qwen", tokenizer, prompt, list(steps), sep)
    enc = tokenizer(layout.text, add_special_tokens=layout.add_special_tokens)
    ids = list(enc["input_ids"])[:max_length]
    positions = [p if p is not None and p < len(ids) else None
                 for p in score_positions(enc, layout.ends)]
    return ids, positions


def encode_outcome(tokenizer: Any, prompt: str, steps: list[str]) -> list[int]:
    """Token ids of problem + solution (the qwen chat layout, steps closed by newlines)."""
    layout = render("qwen", tokenizer, prompt, list(steps), "\n")
    return list(tokenizer(layout.text, add_special_tokens=layout.add_special_tokens)["input_ids"])


def make_example(row: dict[str, Any], tokenizer: Any, cfg: RewardModelConfig) -> dict[str, Any] | None:
    """A training example, or None when nothing in the row can be learned from."""
    if cfg.kind == "outcome":
        target = outcome_target(row["labels"], cfg)
        ids = encode_outcome(tokenizer, row["prompt"], row["steps"])
        if target is None or len(ids) > cfg.max_length:
            return None
        return {"input_ids": ids, "targets": target}
    ids, positions = encode_process(tokenizer, row["prompt"], row["steps"], cfg.step_separator,
                                    cfg.max_length)
    targets = step_targets(row["labels"], cfg)
    pairs = [(p, q) for p, q in zip(positions, targets, strict=False) if p is not None and q is not None]
    if not pairs:
        return None
    return {"input_ids": ids, "positions": [p for p, _ in pairs], "targets": [q for _, q in pairs]}


SHUFFLE_BUFFER = 1_000  # examples held to mix the stream: a label run lists a problem's rows together


class RowStream(torch.utils.data.IterableDataset):
    """Training examples streamed from the label source (the held-out problems left out).

    The Trainer cannot sample a stream, so unless ``--train_sampling_strategy sequential`` the
    shard order is shuffled and rows are drawn at random from a ``buffer_size`` window, with a new
    order every epoch (the Trainer calls :meth:`set_epoch`) — as `stepdpo train` streams pairs.
    """

    def __init__(self, source: LabelSource, tokenizer: Any, cfg: RewardModelConfig,
                 buffer_size: int = SHUFFLE_BUFFER) -> None:
        self.source, self.tokenizer, self.cfg = source, tokenizer, cfg
        self.buffer_size = buffer_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _examples(self, source: LabelSource) -> Iterator[dict[str, Any]]:
        for row in iter_rows(source):
            if heldout(row, self.cfg.eval_fraction):
                continue
            example = make_example(row, self.tokenizer, self.cfg)
            if example is not None:
                yield example

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.cfg.train_sampling_strategy == "sequential" or self.buffer_size <= 1:
            yield from self._examples(self.source)
            return
        rng = random.Random(int(sha256_hex({"seed": self.cfg.seed, "epoch": self.epoch})[:8], 16))
        files = list(self.source.files)
        rng.shuffle(files)
        buffer: list[dict[str, Any]] = []
        for example in self._examples(LabelSource(files, self.source.label_column)):
            if len(buffer) < self.buffer_size:
                buffer.append(example)
                continue
            i = rng.randrange(len(buffer))
            yield buffer[i]
            buffer[i] = example
        rng.shuffle(buffer)
        yield from buffer


@dataclass
class RewardCollator:
    """Right-padded batches; process targets become a [B, L] map (IGNORE off the separators)."""

    pad_id: int
    kind: str = "process"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for b, f in enumerate(features):
            ids[b, : len(f["input_ids"])] = torch.tensor(f["input_ids"], dtype=torch.long)
            mask[b, : len(f["input_ids"])] = 1
        if self.kind == "outcome":
            targets = torch.tensor([float(f["targets"]) for f in features])
        else:
            targets = torch.full((len(features), width), IGNORE)
            for b, f in enumerate(features):
                targets[b, torch.tensor(f["positions"], dtype=torch.long)] = torch.tensor(f["targets"])
        return {"input_ids": ids, "attention_mask": mask, "targets": targets}


def heldout_rows(source: LabelSource, fraction: float, limit: int | None = None) -> list[dict[str, Any]]:
    """The held-out rows (materialised: the held-out share is meant to be small)."""
    rows = []
    for row in iter_rows(source):
        if heldout(row, fraction):
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows
