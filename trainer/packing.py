"""Packed and prefix-shared DPO rows: fewer tokens per pair than TRL's padded [chosen; rejected].

TRL lays a batch of B pairs out as ``[2B, L]``: every pair's prompt (for first-error pairs, the
problem plus the whole correct prefix) is computed twice, and every row is padded to the
longest. Here the same kept tokens are laid out again:

- ``padding_free``: each of the 2B sequences is one segment; segments are packed into rows
  (first-fit decreasing; never wider than ``--max_length`` unless one unit alone is, see
  `row_capacity`), position ids restart at 0 per segment and attention stays inside a segment,
  so the rows hold almost no padding (only the tail of a row that no segment fits).
- ``prefix_shared``: a pair whose two sides keep the same prompt tokens becomes ONE unit
  ``[shared | p_last chosen… | p_last rejected…]``: ``shared`` = the prompt but its last token,
  each branch starts with a copy of the prompt's last token (the position whose logits predict
  the branch's first token, so every position scores at most one label), a branch attends
  ``shared`` and itself (never the other branch) and its position ids continue from the end
  of ``shared``. Under causal attention the logits of every completion token are then those of
  the two separate sequences; the prefix is computed once. A pair whose sides keep different
  prompt tokens (``keep_end`` truncation cut them differently) keeps both whole sequences as
  its two branches, with an empty shared part.

Everything is derived from the padded batch the collator already built, so the kept tokens
(truncation) are exactly the padded path's, and the per-token log-probs are scattered back to
the padded layout: the loss, the step sums and every metric run on the same code as unpacked.
A unit is never split across rows; one longer than ``capacity`` gets a row of its own.

The attention rule, for query q and key k in a row: same unit, k not after q, and k in the
shared part or in q's own branch. It is given to the model as a 4-D mask (SDPA/eager, on any
device), as a flex-attention ``BlockMask``, or, for block-diagonal ``padding_free`` rows in a
single row, by position ids alone (the FlashAttention varlen layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PACKING_MODES = ("auto", "none", "padding_free", "prefix_shared")
SHARED, CHOSEN, REJECTED = 0, 1, 2
NO_UNIT = -1
# Attention implementations that take an arbitrary mask (and so the prefix-shared layout).
MASKED_IMPLS = ("sdpa", "eager", "flex_attention")
PACKED_KEYS = ("packed_input_ids", "packed_position_ids", "packed_unit_ids", "packed_branch_ids",
               "packed_shift_labels", "packed_source_index")


def resolve_packing(mode: str, attn_implementation: str | None, router_aux_loss: bool = False) -> str:
    """The layout to use: ``auto`` becomes the fastest one the attention implementation supports.

    SDPA, eager and flex attention take any mask, so ``prefix_shared`` (which also packs);
    FlashAttention kernels only take block-diagonal varlen rows, so ``padding_free``; anything
    else trains padded (``none``). An explicit mode the implementation cannot run is refused.
    An MoE model's router load-balancing loss (``router_aux_loss``) is TRL's, computed over the
    padded rows with a 2-D mask, so such models train padded.
    """
    if mode not in PACKING_MODES:
        raise ValueError(f"packing must be one of {', '.join(PACKING_MODES)}, got {mode!r}")
    impl = attn_implementation or "eager"
    flash = "flash" in impl
    if router_aux_loss:
        if mode not in ("auto", "none"):
            raise ValueError(f"packing={mode} does not support the MoE router load-balancing loss "
                             "(router_aux_loss_coef): use packing=none")
        return "none"
    if mode == "auto":
        return "prefix_shared" if impl in MASKED_IMPLS else "padding_free" if flash else "none"
    if mode == "prefix_shared" and impl not in MASKED_IMPLS:
        raise ValueError(f"packing=prefix_shared needs an attention implementation that takes a mask "
                         f"({', '.join(MASKED_IMPLS)}); the model uses {impl!r}: use packing=padding_free or none")
    if mode == "padding_free" and impl not in MASKED_IMPLS and not flash:
        raise ValueError(f"packing=padding_free is not supported with attention implementation {impl!r}")
    return mode


@dataclass
class _Unit:
    """One pair (prefix-shared) or one sequence: its tokens and where each kept token went."""

    ids: list[int]
    positions: list[int]
    branches: list[int]
    labels: list[int]
    # (padded row, token index in that row) -> offset in the unit, for the predictor positions
    where: dict[tuple[int, int], int]


def _prompt_len(cmask: list[int]) -> int:
    return next((j for j, c in enumerate(cmask) if c), len(cmask))


def _segment(row: int, ids: list[int], cmask: list[int]) -> _Unit:
    n = len(ids)
    labels = [ids[j + 1] if cmask[j + 1] else -100 for j in range(n - 1)] + [-100]
    return _Unit(ids, list(range(n)), [SHARED] * n, labels, {(row, j): j for j in range(n)})


def _shared(rows: tuple[int, int], ids: tuple[list[int], list[int]], cms: tuple[list[int], list[int]],
            p: int) -> _Unit:
    """``[prompt[:p-1] | prompt[p-1] + chosen | prompt[p-1] + rejected]`` for a pair sharing ``p``
    prompt tokens; ``p = 0`` gives the two whole sequences as branches (nothing shared)."""
    s = max(p - 1, 0)
    out = _Unit(list(ids[0][:s]), list(range(s)), [SHARED] * s, [-100] * s, {})
    for row, seq, cm, branch in zip(rows, ids, cms, (CHOSEN, REJECTED), strict=True):
        for j in range(s):
            out.where[(row, j)] = j
        for j in range(s, len(seq)):
            out.where[(row, j)] = len(out.ids)
            out.ids.append(seq[j])
            out.positions.append(j)
            out.branches.append(branch)
            out.labels.append(seq[j + 1] if j + 1 < len(seq) and cm[j + 1] else -100)
    return out


def build_units(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                mode: str) -> list[_Unit]:
    """The units of a padded ``[2B, L]`` preference batch (chosen rows, then rejected rows)."""
    if mode not in ("padding_free", "prefix_shared"):
        raise ValueError(f"cannot pack with mode {mode!r}")
    n_rows = input_ids.size(0)
    if n_rows % 2:
        raise ValueError("a preference batch has an even number of rows (chosen rows, then rejected rows)")
    lengths = attention_mask.sum(dim=1).tolist()
    ids = [r[:n] for r, n in zip(input_ids.tolist(), lengths, strict=True)]
    cms = [r[:n] for r, n in zip(completion_mask.tolist(), lengths, strict=True)]
    half = n_rows // 2
    units: list[_Unit] = []
    for b in range(half):
        w, r = b, half + b
        p_w, p_l = _prompt_len(cms[w]), _prompt_len(cms[r])
        if mode == "prefix_shared":
            same = p_w == p_l and ids[w][:p_w] == ids[r][:p_l]
            units.append(_shared((w, r), (ids[w], ids[r]), (cms[w], cms[r]), p_w if same else 0))
        else:
            units.append(_segment(w, ids[w], cms[w]))
            units.append(_segment(r, ids[r], cms[r]))
    return units


def assign_rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Units → rows, first-fit decreasing: no row over ``capacity`` unless one unit alone is.

    ``capacity=None`` puts everything in a single row (the FlashAttention varlen layout).
    """
    if capacity is None:
        return [list(range(len(lengths)))] if lengths else []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
               mode: str, capacity: int | None, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """The packed layout of a padded preference batch, as tensors (the ``packed_*`` batch keys).

    Rows hold up to ``capacity`` tokens (at least the longest unit; ``0``: exactly that, ``None``:
    one row for everything).

    ``packed_source_index[i, t]`` is the flat index (into ``[R * W]``) of the packed position
    whose logits score padded token ``input_ids[i, t + 1]``, or -1 where that token is not a
    completion token; so ``packed.flatten()[index]`` is aligned with ``input_ids[:, 1:]``.
    """
    units = build_units(input_ids, attention_mask, completion_mask, mode)
    lengths = [len(u.ids) for u in units]
    # Rows are as wide as the longest unit anyway: filling the others up to it costs nothing.
    rows = assign_rows(lengths, None if capacity is None else max([capacity, *lengths]))
    width = max((sum(len(units[i].ids) for i in row) for row in rows), default=1)
    n_rows = max(len(rows), 1)
    ids = torch.full((n_rows, width), pad_token_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    unit = torch.full((n_rows, width), NO_UNIT, dtype=torch.long)
    branch = torch.zeros((n_rows, width), dtype=torch.long)
    labels = torch.full((n_rows, width), -100, dtype=torch.long)
    source = torch.full((input_ids.size(0), max(input_ids.size(1) - 1, 0)), -1, dtype=torch.long)
    cm = completion_mask
    for r, row in enumerate(rows):
        start = 0
        for k, i in enumerate(row):
            u = units[i]
            end = start + len(u.ids)
            ids[r, start:end] = torch.tensor(u.ids)
            pos[r, start:end] = torch.tensor(u.positions)
            unit[r, start:end] = k
            branch[r, start:end] = torch.tensor(u.branches)
            labels[r, start:end] = torch.tensor(u.labels)
            for (seq, j), off in u.where.items():
                if j + 1 < cm.size(1) and cm[seq, j + 1]:
                    source[seq, j] = r * width + start + off
            start = end
    return {"packed_input_ids": ids, "packed_position_ids": pos, "packed_unit_ids": unit,
            "packed_branch_ids": branch, "packed_shift_labels": labels, "packed_source_index": source}


def row_capacity(attn_implementation: str | None, max_length: int | None) -> int | None:
    """How wide packed rows are for a kernel. FlashAttention varlen: one row (``None``). Flex
    attention skips masked blocks, so rows fill up to ``max_length``. A dense 4-D mask (SDPA,
    eager) costs rows × width², so rows are only as wide as the batch's longest unit (``0``):
    never more attention work than the padded rows, and fewer positions."""
    impl = attn_implementation or "eager"
    if "flash" in impl:
        return None
    if impl == "flex_attention":
        return max_length or 0
    return 0


def allowed_mask(unit_ids: torch.Tensor, branch_ids: torch.Tensor) -> torch.Tensor:
    """``[R, 1, W, W]`` bool, True where query q may attend key k (see the module docstring).

    A padding position attends only itself, so no softmax row is empty (no NaN).
    """
    width = unit_ids.size(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=unit_ids.device).tril()
    same = (unit_ids[:, :, None] == unit_ids[:, None, :]) & (unit_ids[:, :, None] >= 0)
    branch_ok = (branch_ids[:, None, :] == SHARED) | (branch_ids[:, None, :] == branch_ids[:, :, None])
    eye = torch.eye(width, dtype=torch.bool, device=unit_ids.device)
    return ((same & causal & branch_ok) | eye).unsqueeze(1)


def flex_block_mask(unit_ids: torch.Tensor, branch_ids: torch.Tensor):
    """The same rule as a flex-attention ``BlockMask`` (sparse: cost follows the kept blocks)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        uq, uk = unit_ids[b, q], unit_ids[b, k]
        bk = branch_ids[b, k]
        inside = (uq == uk) & (uq >= 0) & (k <= q) & ((bk == SHARED) | (bk == branch_ids[b, q]))
        return inside | (q == k)

    rows, width = unit_ids.shape
    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=width, KV_LEN=width, device=unit_ids.device)


def model_inputs(batch: dict[str, Any], attn_implementation: str | None, dtype: torch.dtype) -> dict[str, Any]:
    """``input_ids``/``position_ids``/``attention_mask`` for the model from the ``packed_*`` keys."""
    unit, branch = batch["packed_unit_ids"], batch["packed_branch_ids"]
    impl = attn_implementation or "eager"
    out = {"input_ids": batch["packed_input_ids"], "position_ids": batch["packed_position_ids"]}
    if "flash" in impl:
        if unit.size(0) != 1 or bool((branch != SHARED).any()):
            raise ValueError("FlashAttention needs padding_free packing in one row (varlen); got another layout")
        out["attention_mask"] = None  # transformers finds the sequences from the position ids
    elif impl == "flex_attention":
        out["attention_mask"] = flex_block_mask(unit, branch)
    elif impl == "sdpa":
        out["attention_mask"] = allowed_mask(unit, branch)
    else:  # eager adds the mask to the scores
        allowed = allowed_mask(unit, branch)
        out["attention_mask"] = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return out


def unpack(packed: torch.Tensor, source_index: torch.Tensor) -> torch.Tensor:
    """Per-position values ``[R, W]`` → the padded layout ``[2B, L-1]`` (0 where no label)."""
    flat = packed.reshape(-1)
    got = flat[source_index.clamp(min=0)]
    return got.masked_fill(source_index < 0, 0)


def attn_implementation(model) -> str:
    """The attention implementation of a (possibly DDP-, PEFT- or compile-wrapped) model."""
    while hasattr(model, "module"):
        model = model.module
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) or "eager"


@dataclass
class PackedOutputs:
    """The fields of TRL's fused-head output the trainer reads, in the padded layout."""

    log_probs: torch.Tensor
    entropy: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


def token_logps(model, batch: dict[str, Any], **kwargs) -> tuple[torch.Tensor, PackedOutputs]:
    """Per-token log-probs of the padded batch's completion tokens, computed on the packed rows.

    Returns ``[2B, L-1]`` aligned with ``input_ids[:, 1:]`` (0 where not a completion token),
    exactly what `stepwise_trainer.per_token_logps` returns for the padded rows. Each packed
    position scores its own label (``shift_labels``), through TRL's fused LM head when the model
    has one, else a log-softmax over the logits.
    """
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    inputs = model_inputs(batch, attn_implementation(model), dtype)
    labels = batch["packed_shift_labels"]
    source = batch["packed_source_index"]
    outputs = None
    try:
        outputs = model(**inputs, **kwargs, shift_labels=labels, fused_lm_head=True)
    except TypeError:  # a model without the fused head rejects the keyword
        pass
    if outputs is not None and getattr(outputs, "log_probs", None) is not None:
        fields = {k: getattr(outputs, k, None) for k in ("entropy", "mean_logits", "is_top1")}
        out = PackedOutputs(unpack(outputs.log_probs, source),
                            **{k: None if v is None else unpack(v, source) for k, v in fields.items()},
                            aux_loss=getattr(outputs, "aux_loss", None))
        return out.log_probs, out
    outputs = model(**inputs, **kwargs)
    logits = outputs.logits.float()
    mask = labels != -100
    logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = unpack(logps.masked_fill(~mask, 0.0), source)
    return logps, PackedOutputs(logps, aux_loss=getattr(outputs, "aux_loss", None))


def tokens_computed(batch: dict[str, Any]) -> int:
    """Positions the model runs on: padded rows × width, or packed rows × width."""
    key = "packed_input_ids" if "packed_input_ids" in batch else "input_ids"
    return batch[key].numel()


__all__ = ["PACKING_MODES", "PACKED_KEYS", "resolve_packing", "build_units", "assign_rows", "pack_batch",
           "allowed_mask", "flex_block_mask", "row_capacity", "model_inputs", "unpack", "tokens_computed",
           "attn_implementation", "token_logps", "PackedOutputs"]
