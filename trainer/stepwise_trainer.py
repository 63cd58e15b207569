"""StepwiseDPOTrainer: TRL 1.16's DPOTrainer with per-step log-ratios and step-aware losses.

Override points (DESIGN.md §5; the private ones are listed, with their pinned signatures, in
`trainer.trl_compat`, the only module that imports TRL internals):
- `_prepare_dataset` tokenizes exactly as TRL does and adds per-token step ids;
- `_set_signature_columns_if_needed` keeps the step columns alive (also for streaming data);
- the collator lays step ids out like TRL lays out tokens (`trainer.alignment`);
- the public `compute_loss` (TRL routes every run through it, `use_liger_kernel` ones too,
  which we refuse) calls `step_logratios` and then `trainer.losses`;
- `step_logratios` pops the custom keys before the forward, takes TRL's fused per-token
  log-probs and sums them per step with one `scatter_add`: the one method a packed or
  prefix-shared layout overrides.
Reference log-probs come from a reference model, from the policy with its PEFT adapter
switched off, or precomputed per step in the pair shards (then no reference model exists).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from accelerate.utils import is_peft_model
from transformers.utils import logging
from trl import DPOTrainer

from schemas.aggregate import DEFAULT_STEP_THRESHOLD
from trainer import losses, packing
from trainer.alignment import (
    NO_STEP,
    chat_prompt,
    collate_step_fields,
    collate_step_ids,
    tokenize_pair,
)
from trainer.config import StepwiseDPOConfig
from trainer.trl_compat import DataCollatorForPreference, use_adapter

logger = logging.get_logger(__name__)

# Columns the trainer adds to TRL's signature columns, so the dataset keeps them for the collator.
SIGNATURE_STEP_COLUMNS = [
    "chosen_step_ids",
    "rejected_step_ids",
    "chosen_steps",
    "rejected_steps",
    "chosen_scores",
    "rejected_scores",
    "chosen_reward",
    "rejected_reward",
    "ref_chosen_step_logps",
    "ref_rejected_step_logps",
]
# Batch keys that are ours: popped before `model(**kwargs)`.
CUSTOM_KEYS = (
    "step_ids",
    "chosen_step_scores",
    "rejected_step_scores",
    "chosen_num_steps",
    "rejected_num_steps",
    "chosen_rewards",
    "rejected_rewards",
    "ref_chosen_step_logps",
    "ref_rejected_step_logps",
)
NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *CUSTOM_KEYS, *packing.PACKED_KEYS}


@dataclass
class StepLogratios:
    """What `StepwiseDPOTrainer.step_logratios` returns: rows are chosen then rejected, ``[2B, K]``
    per step (``policy_steps``, ``ref_steps``, ``token_counts``: completion tokens per step, 0 for
    a step truncated away) and ``[2B]`` per sequence; ``outputs`` is the policy forward's output
    (entropy and logit metrics), ``model_kwargs`` re-runs it, ``seq_len`` is the scored length."""

    policy_steps: torch.Tensor
    ref_steps: torch.Tensor
    policy_seq: torch.Tensor
    ref_seq: torch.Tensor
    token_counts: torch.Tensor
    outputs: Any
    model_kwargs: dict[str, Any]
    seq_len: int


class StepwiseCollator(DataCollatorForPreference):
    """TRL's preference collator plus step ids ``[2B, L]`` and the per-step fields ``[B, K]``.

    With a packing ``mode`` (resolved, see `trainer.packing`) it also lays the same kept tokens
    out packed (the ``packed_*`` keys); the padded keys stay for the loss and the metrics.
    """

    def __init__(self, base: DataCollatorForPreference, cfg: StepwiseDPOConfig, mode: str = "none",
                 attn_implementation: str | None = None):
        super().__init__(
            pad_token_id=base.pad_token_id,
            max_length=base.max_length,
            truncation_mode=base.truncation_mode,
            pad_to_multiple_of=base.pad_to_multiple_of,
        )
        self.cfg = cfg
        self.packing = mode
        self.pack_capacity = packing.row_capacity(attn_implementation, base.max_length)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        width = out["input_ids"].shape[1]
        out["step_ids"] = collate_step_ids(examples, width, self.max_length, self.truncation_mode)
        out.update(collate_step_fields(examples, self.cfg))
        if self.packing != "none":
            out.update(packing.pack_batch(out["input_ids"], out["attention_mask"], out["completion_mask"],
                                          self.packing, self.pack_capacity, self.pad_token_id))
        return out


def step_sums(per_token: torch.Tensor, step_ids: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Σ of ``per_token`` over each step's tokens: ``[N, T]`` → ``[N, num_slots]``.

    Positions with no step (prompt, padding) go to a dump slot that is dropped, so no mask
    multiplication or Python loop is needed.
    """
    index = (step_ids + 1).clamp(min=0)
    out = per_token.new_zeros(per_token.size(0), num_slots + 1)
    out.scatter_add_(1, index, per_token)
    return out[:, 1:]


@contextmanager
def no_activation_checkpointing(model, kwargs: dict | None = None) -> Iterator[None]:
    """Activation checkpointing off for a no-grad pass (the reference), back on afterwards.

    TRL's `disable_gradient_checkpointing` does the same through transformers' deprecated
    ``gradient_checkpointing_*`` names, which warns on every run.
    """
    was_on = getattr(model, "is_activation_checkpointing", False)
    if was_on:
        model.activation_checkpointing_disable()
    try:
        yield
    finally:
        if was_on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)


def per_token_logps(model, model_kwargs: dict[str, Any], labels: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Log-prob of each next token, aligned with ``input_ids[:, 1:]`` (0 where label is -100).

    Uses TRL's fused LM head when the model has one (no ``[B, L, V]`` logits), else a plain
    log-softmax gather.
    """
    try:
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        if getattr(outputs, "log_probs", None) is not None:
            return outputs.log_probs[:, -(labels.size(1) - 1):], outputs
    except TypeError:  # a model without the fused head rejects the keyword
        pass
    outputs = model(**model_kwargs)
    logits = outputs.logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    logps = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logps.masked_fill(~mask, 0.0), outputs


def provenance_markdown(provenance: dict[str, Any], args: StepwiseDPOConfig) -> str:
    """The model card's "Stepwise DPO" section: loss, base model, pairs and judges."""
    lines = ["## Stepwise DPO", "",
             f"- loss: `{args.stepwise_loss}` (β={args.beta:g}, τ={args.step_temperature:g})",
             f"- base model: `{provenance.get('base_model')}`"]
    for key, label in (("train_pairs", "training pairs"), ("eval_pairs", "eval pairs")):
        info = provenance.get(key)
        if not info:
            continue
        lines.append(f"- {label}: `{info.get('path')}` ({info.get('num_pairs')} pairs, strategy "
                     f"{info.get('strategy')}, aggregation {info.get('aggregation')}), manifest sha256 "
                     f"`{info.get('manifest_sha256')}`")
        for fp in info.get("judge_fingerprints") or []:
            lines.append(f"  - judge: `{fp}`")
    return "\n".join(lines) + "\n"


class StepwiseDPOTrainer(DPOTrainer):
    """`DPOTrainer` whose loss sees each step's policy/reference log-ratio ρ_k.

    Pass ``ref_model`` to use a reference model; pass a ``peft_config`` (or a PEFT model) to
    use the policy with its adapter switched off; give pair rows with precomputed
    ``ref_*_step_logps`` (from `stepdpo precompute-ref`) and no ``ref_model`` to train with no
    reference model at all. An in-memory policy with none of these gets a frozen deep copy as
    reference (TRL would try to reload it from a path it may not have).
    """

    _tag_names = ["trl", "dpo", "stepwise-dpo"]

    def __init__(self, model, ref_model=None, args: StepwiseDPOConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, peft_config=None,
                 num_train_pairs: int | None = None, provenance: dict[str, Any] | None = None,
                 error_threshold: float = DEFAULT_STEP_THRESHOLD, **kwargs):
        """``num_train_pairs`` (a stream has no length) makes the logged ``epoch`` the pairs seen
        over it; ``provenance`` (base model, pairs, judges) goes into the model card;
        ``error_threshold`` is the score below which a step counts as an error for the
        ``step/first_error_weight`` metric (the pairs' own threshold)."""
        self.num_train_pairs = num_train_pairs
        self.provenance = provenance or {}
        self.error_threshold = error_threshold
        if args is None:
            args = StepwiseDPOConfig("stepwise-dpo-output")
        if not isinstance(args, StepwiseDPOConfig):
            raise TypeError("args must be a StepwiseDPOConfig")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        first = next(iter(train_dataset))
        is_peft = not isinstance(model, str) and is_peft_model(model)
        self.uses_precomputed_ref = (
            ref_model is None
            and peft_config is None
            and not is_peft
            and first.get("ref_chosen_step_logps") is not None
            and first.get("ref_rejected_step_logps") is not None
        )
        if self.uses_precomputed_ref and eval_dataset is not None:
            evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset}
            for name, ds in evals.items():
                row = next(iter(ds), {})
                if row.get("ref_chosen_step_logps") is None or row.get("ref_rejected_step_logps") is None:
                    raise ValueError(
                        f"the train rows carry precomputed reference step log-probs but the {name} rows do "
                        "not: run `stepdpo precompute-ref` on the eval shards too, or pass a reference model"
                    )
        if self.uses_precomputed_ref:
            # Tells TRL not to build a reference model; our `_precompute_ref_logps` is a no-op.
            args.precompute_ref_log_probs = True
        elif (
            ref_model is None
            and peft_config is None
            and isinstance(model, torch.nn.Module)
            and not is_peft
        ):
            ref_model = copy.deepcopy(model).eval()
            ref_model.requires_grad_(False)
        super().__init__(model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, peft_config=peft_config, **kwargs)
        impl = packing.attn_implementation(self.model)
        self.packing = "none" if data_collator is not None else packing.resolve_packing(
            args.packing, impl, router_aux_loss=getattr(self, "aux_loss_enabled", False))
        if data_collator is None:
            self.data_collator = StepwiseCollator(self.data_collator, args, self.packing, impl)
        logger.info(f"packing: {self.packing} (attention implementation: {impl})")

    # -- data -------------------------------------------------------------------------------
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        first = next(iter(dataset))
        if "prompt_ids" in first:  # already tokenized (idempotent, as TRL's is)
            return dataset
        if "chosen_steps" not in first:
            raise ValueError(
                f"the {dataset_name} dataset has no 'chosen_steps': build it with trainer.data.load_pairs"
            )
        tokenizer = self._tokenizer
        if args.chat_template:
            if "question" not in first:
                raise ValueError(f"chat_template needs the {dataset_name} rows' 'question' and 'prefix_steps': "
                                 "build the dataset with trainer.data.load_pairs")
            chat_prompt(tokenizer, "", [], args.step_separator)  # fails early without a template

        def tokenize(example):
            prompt = example["prompt"]
            if args.chat_template:
                prompt = chat_prompt(tokenizer, example["question"], example["prefix_steps"], args.step_separator)
            return tokenize_pair(
                tokenizer,
                prompt,
                example["chosen_steps"],
                example["rejected_steps"],
                sep=args.step_separator,
                add_eos=args.add_eos,
            )

        map_kwargs = {}
        if isinstance(dataset, datasets.Dataset):  # IterableDataset.map has no num_proc
            map_kwargs["num_proc"] = args.dataset_num_proc
        dataset = dataset.map(tokenize, **map_kwargs)
        if args.max_length is not None and args.truncation_mode == "keep_start":
            max_length = args.max_length
            warned = []

            def fits(e):
                if len(e["prompt_ids"]) < max_length:
                    return True
                if not warned:  # TRL drops these silently; a long first-error prefix makes many
                    warned.append(True)
                    warnings.warn(f"{dataset_name}: skipping pairs whose prompt (problem + prefix steps) fills "
                                  f"max_length={max_length} tokens (no completion token would be left); raise "
                                  "max_length or use truncation_mode keep_end", stacklevel=2)
                return False

            dataset = dataset.filter(fits)
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for col in SIGNATURE_STEP_COLUMNS:
            if col not in self._signature_columns:
                self._signature_columns.append(col)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if self.uses_precomputed_ref:
            return dataset  # the per-step reference log-probs are already in the rows
        raise ValueError(
            "precompute_ref_log_probs is not supported by StepwiseDPOTrainer: run "
            "`stepdpo precompute-ref` to write per-step reference log-probs into the pair shards"
        )

    # -- loss -------------------------------------------------------------------------------
    def _token_logps(self, model, inputs, model_kwargs, labels) -> tuple[torch.Tensor, Any]:
        """Per-token log-probs ``[2B, L-1]`` in the padded layout, from the packed rows when the
        batch has them (`trainer.packing`), else from the padded rows."""
        if "packed_input_ids" in inputs:
            extra = {k: v for k, v in model_kwargs.items() if k not in ("input_ids", "attention_mask")}
            return packing.token_logps(model, inputs, **extra)
        return per_token_logps(model, model_kwargs, labels)

    def _reference_token_logps(self, model_kwargs, labels, inputs=None) -> torch.Tensor:
        inputs = inputs if inputs is not None else {}
        with torch.no_grad(), no_activation_checkpointing(self.model, self.args.activation_checkpointing_kwargs):
            if is_peft_model(self.model) and self.ref_model is None:
                unwrapped = self.accelerator.unwrap_model(self.model)
                ctx = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
                with ctx:
                    logps, _ = self._token_logps(self.model, inputs, model_kwargs, labels)
            else:
                logps, _ = self._token_logps(self.ref_model, inputs, model_kwargs, labels)
        return logps

    def step_logratios(self, model, inputs: dict[str, Any]) -> StepLogratios:
        """Per-step policy and reference log-probs of a collated batch (chosen rows, then rejected).

        The one place that knows the batch layout (here: TRL's padded ``[2B, L]`` rows with
        step ids per token); a packed layout overrides only this method.
        """
        extra = {k: inputs[k] for k in CUSTOM_KEYS if k in inputs}
        model_kwargs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        seq_len = completion_mask.size(1) - 1
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        step_ids = extra["step_ids"][:, 1:]  # the step of the token each log-prob scores

        policy_kwargs = dict(model_kwargs)
        if getattr(self, "aux_loss_enabled", False):  # MoE: the router's load-balancing loss, as TRL adds
            policy_kwargs["output_router_logits"] = True
        policy_tok, outputs = self._token_logps(model, inputs, policy_kwargs, labels)
        policy_tok = policy_tok[:, -seq_len:]
        k_max = extra["chosen_step_scores"].size(1)
        policy_steps = step_sums(policy_tok, step_ids, k_max)
        policy_seq = policy_tok.sum(dim=1)
        if self.uses_precomputed_ref:
            if "ref_chosen_step_logps" not in extra or "ref_rejected_step_logps" not in extra:
                raise ValueError(
                    "a batch has pairs without precomputed reference step log-probs; run "
                    "`stepdpo precompute-ref` on every shard (train and eval) or pass a reference model"
                )
            ref_w = extra["ref_chosen_step_logps"].to(policy_steps.dtype)
            ref_l = extra["ref_rejected_step_logps"].to(policy_steps.dtype)
            ref_steps = torch.cat([ref_w, ref_l], dim=0)
            ref_seq = ref_steps.sum(dim=1)
        else:
            ref_tok = self._reference_token_logps(model_kwargs, labels, inputs)[:, -seq_len:]
            ref_steps = step_sums(ref_tok, step_ids, k_max)
            ref_seq = ref_tok.sum(dim=1)
        counts = step_sums(completion_mask[:, 1:].to(policy_tok.dtype), step_ids, k_max)
        return StepLogratios(policy_steps=policy_steps, ref_steps=ref_steps, policy_seq=policy_seq,
                             ref_seq=ref_seq, token_counts=counts, outputs=outputs,
                             model_kwargs=model_kwargs, seq_len=seq_len)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stepwise loss of one batch (TRL's public hook; ``num_items_in_batch`` is unused,
        as in TRL's DPOTrainer: the loss is a mean over pairs)."""
        mode = "train" if self.model.training else "eval"
        args: StepwiseDPOConfig = self.args
        out = self.step_logratios(model, inputs)
        q_w, q_l = inputs["chosen_step_scores"], inputs["rejected_step_scores"]
        k_max = q_w.size(1)
        num_steps = torch.cat([inputs["chosen_num_steps"], inputs["rejected_num_steps"]])
        slots = torch.arange(k_max, device=out.token_counts.device)
        step_mask = (slots.unsqueeze(0) < num_steps.unsqueeze(1)) & (out.token_counts > 0)
        rho = out.policy_steps - out.ref_steps
        rho_w, rho_l = rho.chunk(2, dim=0)
        mask_w, mask_l = step_mask.chunk(2, dim=0)
        chosen_logratios, rejected_logratios = (out.policy_seq - out.ref_seq).chunk(2, dim=0)
        batch = losses.StepBatch(
            rho_w=rho_w, rho_l=rho_l, mask_w=mask_w, mask_l=mask_l, q_w=q_w, q_l=q_l,
            r_w=inputs["chosen_rewards"], r_l=inputs["rejected_rewards"],
            seq_w=chosen_logratios, seq_l=rejected_logratios,
        )
        per_example, loss_metrics = losses.compute_loss(args.stepwise_loss, batch, args)
        loss = per_example.mean()
        outputs = out.outputs
        if getattr(self, "aux_loss_enabled", False) and getattr(outputs, "aux_loss", None) is not None:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(
                self.accelerator.gather_for_metrics(outputs.aux_loss.detach()).mean().item())

        self._log_metrics(mode, outputs, inputs, out.policy_seq, chosen_logratios, rejected_logratios,
                          batch, loss_metrics, out.seq_len)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**out.model_kwargs)
            return loss, outputs
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, with ``epoch`` counted in pairs seen when the pairs are a stream: the
        Trainer cannot know a stream's length and reports 1.0 after the first pass of max_steps."""
        if self.num_train_pairs and self.state.epoch is not None:
            a = self.args
            seen = self.state.global_step * a.per_device_train_batch_size * a.gradient_accumulation_steps \
                * max(a.world_size, 1)
            self.state.epoch = seen / self.num_train_pairs  # Trainer.log copies it into the record
        super().log(logs, start_time)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None):
        """TRL's card, naming a local base model (TRL leaves it "None") and adding where the pairs
        and their judges came from."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero() or not self.provenance:
            return
        import os

        card = os.path.join(self.args.output_dir, "README.md")
        try:
            with open(card, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            return
        base = self.provenance.get("base_model")
        if base and "fine-tuned version of [None]" in text:
            text = text.replace("fine-tuned version of [None](https://huggingface.co/None)",
                                f"fine-tuned version of `{base}` (a local model)")
        text += "\n" + provenance_markdown(self.provenance, self.args)
        with open(card, "w", encoding="utf-8") as fh:
            fh.write(text)

    def _log_metrics(self, mode, outputs, inputs, policy_seq, chosen_lr, rejected_lr, batch,
                     loss_metrics, seq_len) -> None:
        """TRL's own metric names (so dashboards carry over) plus `step/*` metrics."""
        acc = self.accelerator
        m = self._metrics[mode]
        beta = self.args.beta if self.args.stepwise_loss != "combined" else self.args.outcome_beta
        chosen_rewards = beta * chosen_lr.detach()
        rejected_rewards = beta * rejected_lr.detach()
        g_w, g_l = acc.gather(chosen_rewards), acc.gather(rejected_rewards)
        m["rewards/chosen"].append(g_w.mean().item())
        m["rewards/rejected"].append(g_l.mean().item())
        m["rewards/accuracies"].append((g_w > g_l).float().mean().item())
        m["rewards/margins"].append((g_w - g_l).mean().item())
        logps_w, logps_l = policy_seq.detach().chunk(2, dim=0)
        m["logps/chosen"].append(acc.gather(logps_w).mean().item())
        m["logps/rejected"].append(acc.gather(logps_l).mean().item())
        shift_mask = inputs["completion_mask"][:, 1:]
        if mode == "train":
            tokens = acc.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        m["num_tokens"] = [self._total_train_tokens]
        if getattr(outputs, "entropy", None) is not None:
            ent = (outputs.entropy[:, -seq_len:].detach() * shift_mask).sum()
            tot = acc.gather_for_metrics(shift_mask.sum()).sum()
            ent = acc.gather_for_metrics(ent).sum()
            m["entropy"].append((ent / tot).item() if tot > 0 else 0.0)
        if getattr(outputs, "mean_logits", None) is not None:
            lw, ll = outputs.mean_logits[:, -seq_len:].detach().chunk(2, dim=0)
            mw, ml = shift_mask.bool().chunk(2, dim=0)
            sums = acc.gather_for_metrics(torch.stack([lw[mw].sum(), mw.sum(), ll[ml].sum(), ml.sum()])
                                          .reshape(1, 4)).sum(0)
            m["logits/chosen"].append((sums[0] / sums[1].clamp(min=1)).item())
            m["logits/rejected"].append((sums[2] / sums[3].clamp(min=1)).item())
            top1_w, _ = outputs.is_top1[:, -seq_len:].chunk(2, dim=0)
            hits = acc.gather_for_metrics(torch.stack([(top1_w & mw).sum(), mw.sum()]).reshape(1, 2)).sum(0)
            m["mean_token_accuracy"].append((hits[0] / hits[1].clamp(min=1)).item())

        # Step metrics: per-step margin and the weight the rejected side's first error gets.
        with torch.no_grad():
            k_w = batch.mask_w.sum(-1).clamp(min=1)
            k_l = batch.mask_l.sum(-1).clamp(min=1)
            step_margin = beta * (losses.masked_sum(batch.rho_w, batch.mask_w) / k_w
                                  - losses.masked_sum(batch.rho_l, batch.mask_l) / k_l)
            m["step/margin"].append(acc.gather(step_margin.detach()).mean().item())
            a_l = loss_metrics.get("weights_l")
            if a_l is None:  # the loss weights every step alike: report the weight it applies, 1
                a_l = batch.mask_l.to(batch.rho_l.dtype)
            is_err = (batch.q_l < self.error_threshold) & batch.mask_l.bool()
            has_err = is_err.any(dim=-1)
            first = is_err.float().argmax(dim=-1)
            w_first = a_l.gather(1, first.unsqueeze(1)).squeeze(1)
            s = acc.gather(torch.stack([(w_first * has_err).sum(), has_err.sum().float()]).reshape(1, 2)).sum(0)
            if s[1] > 0:
                m["step/first_error_weight"].append((s[0] / s[1]).item())
            m["step/num_steps"].append(acc.gather((k_w + k_l).float() / 2).mean().item())
            if "step_loss" in loss_metrics:
                m["step/step_loss"].append(acc.gather(loss_metrics["step_loss"]).mean().item())
                m["step/outcome_loss"].append(acc.gather(loss_metrics["outcome_loss"]).mean().item())


__all__ = ["StepwiseDPOTrainer", "StepwiseCollator", "StepLogratios", "step_sums", "per_token_logps", "NO_STEP"]
