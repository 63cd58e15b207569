"""Process and outcome reward models trained from step labels (`stepdpo train-rm`).

TRL 1.16 deleted its PRMTrainer (trl#7133), so this is the process-supervision trainer: the loop
"label a slice with an expensive judge, distil it into a local PRM, label everything with it".

**Process (PRM)**, in the public Qwen2.5-Math-PRM layout so that `prm:DIR --style qwen`, vLLM
(``token_classify`` pooling) and SGLang load the result: a separator token (``<extra_0>``) after
each step, a base model (``model.*``) plus ``score`` = Linear(h, h) → ReLU → Linear(h, 2), the
chat template with the Qwen system prompt (`schemas.prm_layout`, shared with the judge). The loss
is read only at the separators: with q the step's target in [0, 1],
``−q log p₁ − (1 − q) log p₀`` over the 2-way softmax, averaged over the labelled steps of a
batch. Hard targets are ``score ≥ threshold``; soft ones are the score itself. Steps after the
first error are ignored by default (PRM800K / Math-Shepherd do: once a solution has gone wrong,
"correct" later steps are ill-defined).

**Outcome (ORM)**: ``AutoModelForSequenceClassification`` with 2 labels on problem + solution
(same chat layout, steps closed by newlines), the same soft cross-entropy on the solution's
label (the aggregated step scores). Saved as a plain transformers model.

This module is the model half (config, the PRM head, the loss, saving, prediction, the training
entry point); the data half (labels → targets, streaming, the held-out split, encoding,
batching) is :mod:`trainer.reward_data`. Only `schemas` and `trainer` of ours are imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from schemas.aggregate import AGGREGATIONS
from schemas.errors import UserError
from trainer.reward_data import (
    IGNORE,
    LabelSource,
    RewardCollator,
    RowStream,
    encode_outcome,
    encode_process,
)

PRM_SUFFIX = "ForProcessRewardModel"


@dataclass
class RewardModelConfig(TrainingArguments):
    """transformers' TrainingArguments plus how step labels become training targets."""

    kind: str = field(default="process", metadata={
        "help": "process: a PRM scoring every step (Qwen2.5-Math-PRM layout); outcome: an ORM "
                "scoring the whole solution", "choices": ["process", "outcome"]})
    step_separator: str = field(default="<extra_0>", metadata={
        "help": "process: token placed after each step and scored (added to the tokenizer as a "
                "special token when it is not one token)"})
    threshold: float = field(default=0.5, metadata={
        "help": "a label >= threshold is 'correct': hard targets, the first error, AUC positives"})
    soft_labels: bool = field(default=False, metadata={
        "help": "train on the score itself (cross-entropy against [1-s, s]) instead of the hard "
                "label score >= threshold"})
    after_first_error: str = field(default="ignore", metadata={
        "help": "process: steps after the first one labelled below --threshold: ignore (PRM800K, "
                "Math-Shepherd) or keep their labels", "choices": ["ignore", "keep"]})
    aggregate: str = field(default="product", metadata={
        "help": "outcome: how step labels become the solution label (an answer-match run puts its "
                "label on the last step: use last)", "choices": list(AGGREGATIONS)})
    max_length: int = field(default=2048, metadata={
        "help": "token limit per response; process: later steps go unscored, outcome: over-long "
                "rows are skipped"})
    eval_fraction: float = field(default=0.1, metadata={
        "help": "share of problems (by hash of problem_id) held out for step accuracy, AUC and "
                "ProcessBench F1; 0 turns the evaluation off"})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "kept False: the reward-model collator needs its own columns"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")


# -- models -------------------------------------------------------------------------------
class ProcessRewardModel(torch.nn.Module):
    """A base model plus Qwen's ``score`` MLP; :meth:`forward` computes the head only where asked
    (the separators), since a 2-way head over every position is wasted work in training."""

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        self.model = backbone
        h = backbone.config.hidden_size
        self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))
        self.score.to(dtype=next(backbone.parameters()).dtype)
        self.config = backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                score_mask: torch.Tensor | None = None) -> torch.Tensor:
        """2-way logits at ``score_mask`` positions ([N, 2]), or at every position ([B, L, 2])."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.score(hidden[score_mask] if score_mask is not None else hidden)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.model.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        self.model.enable_input_require_grads()


def soft_cross_entropy(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """mean of −q log p₁ − (1 − q) log p₀ over rows of 2-way ``logits`` (hard q ∈ {0, 1} is the
    usual cross-entropy)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    q = q.float()
    return -(q * logp[:, 1] + (1.0 - q) * logp[:, 0]).mean()


class RewardModelTrainer(Trainer):
    """transformers' Trainer with the reward-model loss (see the module docstring)."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        targets = inputs.pop("targets")
        if targets.dim() == 2:  # process: loss only at the separators
            where = targets != IGNORE
            logits = model(inputs["input_ids"], inputs["attention_mask"], score_mask=where)
            loss = soft_cross_entropy(logits, targets[where])
        else:
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            loss = soft_cross_entropy(logits, targets)
        return (loss, {"logits": logits}) if return_outputs else loss


def prepare_tokenizer(tokenizer: Any, cfg: RewardModelConfig) -> bool:
    """Give the tokenizer a pad token and (process) the separator as one special token; True
    when tokens were added (the embeddings must grow)."""
    added = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.kind == "process" and len(tokenizer.encode(cfg.step_separator, add_special_tokens=False)) != 1:
        tokenizer.add_special_tokens({"additional_special_tokens": [cfg.step_separator]})
        added = True
    if not tokenizer.is_fast:
        raise UserError("train-rm needs a fast tokenizer (character offsets locate the steps)")
    return added


def build_model(name: str, tokenizer: Any, cfg: RewardModelConfig, resize: bool,
                load_kwargs: dict[str, Any], peft_config: Any = None) -> Any:
    """The model to train: a PRM around ``AutoModel`` of ``name``, or a 2-label sequence
    classifier; LoRA (``peft_config``) wraps the backbone only (the head is trained in full)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    if cfg.kind == "outcome":
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=2, **load_kwargs)
        model.config.pad_token_id = tokenizer.pad_token_id
        if resize:
            model.resize_token_embeddings(len(tokenizer))
        if peft_config is not None:
            from peft import get_peft_model

            peft_config.modules_to_save = list(peft_config.modules_to_save or []) + ["score"]
            model = get_peft_model(model, peft_config)
        return model
    backbone = AutoModel.from_pretrained(name, **load_kwargs)
    if resize:
        backbone.resize_token_embeddings(len(tokenizer))
    if peft_config is not None:
        from peft import get_peft_model

        backbone = get_peft_model(backbone, peft_config)
    return ProcessRewardModel(backbone)


def _unwrap(model: Any) -> Any:
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def save_reward_model(model: Any, tokenizer: Any, out: str | Path) -> Path:
    """Write the trained model to ``out``: a PRM in the Qwen2.5-Math-PRM checkpoint layout
    (``model.*`` + ``score.*`` safetensors, architectures ``<Base>ForProcessRewardModel``), an ORM
    as a plain transformers sequence classifier; LoRA is merged first. The tokenizer goes along."""
    from huggingface_hub import save_torch_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(model, ProcessRewardModel):
        _unwrap(model).save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    backbone = _unwrap(model.model)
    state = {f"model.{k}": v.detach().contiguous() for k, v in backbone.state_dict().items()}
    state.update({f"score.{k}": v.detach().contiguous() for k, v in model.score.state_dict().items()})
    save_torch_state_dict(state, out, max_shard_size="5GB")
    config = backbone.config
    base = type(backbone).__name__
    config.architectures = [(base[: -len("Model")] if base.endswith("Model") else base) + PRM_SUFFIX]
    config.num_labels = 2
    if hasattr(config, "auto_map"):
        del config.auto_map
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# -- prediction (the held-out evaluation) ---------------------------------------------------
@torch.inference_mode()
def predict(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: RewardModelConfig,
            batch_size: int = 8) -> list[list[float | None]]:
    """P(correct) for every step of each row as the trained head computes it (process), or the
    solution's P(correct) on its last step with the other steps None (outcome) — what `prm:DIR`
    and `orm:DIR` write for the same rows."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    out: list[list[float | None]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        if cfg.kind == "outcome":
            encoded = [(encode_outcome(tokenizer, r["prompt"], r["steps"]), []) for r in chunk]
        else:
            encoded = [encode_process(tokenizer, r["prompt"], r["steps"], cfg.step_separator,
                                      cfg.max_length) for r in chunk]
        batch = RewardCollator(pad, "outcome")([{"input_ids": ids, "targets": 0.0} for ids, _ in encoded])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if cfg.kind == "outcome":
            probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)[:, 1]
            out += [[None] * (len(r["steps"]) - 1) + [float(p)] for r, p in zip(chunk, probs.tolist(), strict=True)]
            continue
        probs = torch.softmax(model(ids, mask).float(), -1)[..., 1].cpu()
        for b, (_, positions) in enumerate(encoded):
            out.append([None if p is None else float(probs[b, p]) for p in positions])
    return out


def train_reward_model(source: LabelSource, model_name: str, cfg: RewardModelConfig,
                       load_kwargs: dict[str, Any] | None = None, peft_config: Any = None,
                       callbacks: list[Any] | None = None) -> tuple[Any, Any, Any]:
    """Train on ``source`` and save to ``cfg.output_dir``; returns (model, tokenizer, trainer)."""
    from transformers import AutoTokenizer, set_seed

    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    resize = prepare_tokenizer(tokenizer, cfg)
    dataset = RowStream(source, tokenizer, cfg)
    if next(iter(dataset), None) is None:
        raise UserError("no training step can run: no input row had a usable label outside the "
                        "held-out problems (status ok, labels present, within --max_length)")
    model = build_model(model_name, tokenizer, cfg, resize, load_kwargs or {}, peft_config)
    trainer = RewardModelTrainer(model=model, args=cfg, train_dataset=dataset,
                                 data_collator=RewardCollator(tokenizer.pad_token_id, cfg.kind),
                                 processing_class=tokenizer, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=cfg.resume_from_checkpoint)
    if trainer.is_world_process_zero() and trainer.state.global_step > 0:
        save_reward_model(trainer.model, tokenizer, cfg.output_dir)
    return trainer.model, tokenizer, trainer
