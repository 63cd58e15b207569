"""Train a process (PRM) or outcome (ORM) reward model from step labels.

Input: step_scores runs (their `scores`, ok rows only: distil an expensive judge) or responses
files with `reference_scores` (human labels, e.g. PRM800K). `--kind process` trains a PRM in the
public Qwen2.5-Math-PRM layout on any causal-LM backbone: `<extra_0>` after each step (added to
the tokenizer when missing), the chat template with Qwen's system prompt, a 2-way `score` head,
the loss only at the separators (hard labels by --threshold, or --soft_labels), steps after the
first error ignored unless --after_first_error keep. `--kind outcome` trains a 2-label sequence
classifier on problem + solution with the aggregated step labels (--aggregate).

Flags are TRL's, parsed as `train` parses them (`--model_name_or_path` or `--model`,
`--use_peft --lora_r --lora_target_modules`, `--dtype`, `--config FILE.yaml`) and transformers'
TrainingArguments; the data is streamed (and shuffled), so --max_steps is required. A share of the problems (--eval_fraction, by problem id) is held out: after training
it is scored and the step accuracy, AUC and ProcessBench F1 (earliest-error match) are printed and
written to reward_model.json (written last: its presence marks a finished folder). Runs as is
under `accelerate launch`.

The folder loads with `--judge prm:DIR` (`orm:DIR` for an outcome model) and in vLLM as a pooling
model (`LLM(model=DIR, runner="pooling")`, `llm.encode(prompts, pooling_task="token_classify")`).

  stepdpo train-rm work/run --kind process --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
      --output_dir work/prm --max_steps 500 --per_device_train_batch_size 8
  stepdpo train-rm work/prm800k.parquet --use_peft --lora_r 16 --soft_labels \\
      --model_name_or_path Qwen/Qwen2.5-Math-1.5B --output_dir work/prm --max_steps 2000
  stepdpo label work/responses.parquet --judge prm:work/prm -o work/run-local
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from labeler.judges.prm_load import REWARD_MODEL_MANIFEST
from schemas.errors import UserError
from stepdpo.options import add_allow_incomplete, require_finished_inputs

MANIFEST = REWARD_MODEL_MANIFEST  # the prm:/orm: judges read it


def _types() -> tuple[type, type]:
    from trl import ModelConfig

    from trainer.reward_model import RewardModelConfig

    return RewardModelConfig, ModelConfig


TITLES = ("RewardModelConfig (labels, layout + transformers TrainingArguments)", "ModelConfig (TRL)")


def configure(parser: argparse.ArgumentParser) -> None:
    from stepdpo.trl_args import add_trl_arguments

    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="step_scores run folders or responses files with reference_scores")
    add_trl_arguments(parser, _types(), TITLES)
    add_allow_incomplete(parser)


def build_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """TrainingArguments-style defaults < our defaults < --config YAML < flags given (the TRL
    parsing `train` uses: stepdpo/trl_args.py)."""
    import torch

    from stepdpo.trl_args import parse_trl_arguments

    cuda = torch.cuda.is_available()
    defaults = {"use_cpu": not cuda, "bf16": cuda, "save_strategy": "no", "report_to": "none"}
    parsed = parse_trl_arguments(args, _types(), defaults=defaults)
    cfg, model_args = parsed.values
    for need in ("model_name_or_path", "output_dir"):
        if need not in parsed.explicit:
            raise UserError(f"--{need} is required")
    if not cfg.max_steps or cfg.max_steps <= 0:
        raise UserError("--max_steps is required: the labels are streamed and have no length")
    if cfg.learning_rate < 0:
        raise UserError(f"--learning_rate must be >= 0, got {cfg.learning_rate}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    return cfg, model_args


def lora_config(model_args: Any, kind: str) -> Any:
    """LoRA from TRL's ModelConfig fields (the backbone only; the head trains in full)."""
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    targets = model_args.lora_target_modules or "all-linear"
    return LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                      lora_dropout=model_args.lora_dropout, target_modules=targets,
                      use_rslora=model_args.use_rslora, use_dora=model_args.use_dora,
                      task_type="SEQ_CLS" if kind == "outcome" else None)


def evaluate(model: Any, tokenizer: Any, source: Any, cfg: Any) -> dict[str, Any] | None:
    """Score the held-out problems with the trained head and compare with their labels through
    the inspection code (`labeler.inspection.agreement.versus_reference`)."""
    import pyarrow as pa

    from labeler.inspection.agreement import versus_reference
    from trainer.reward_data import heldout_rows, outcome_target, step_targets
    from trainer.reward_model import predict

    rows = heldout_rows(source, cfg.eval_fraction)
    if not rows:
        return None
    probs = predict(model, tokenizer, rows, cfg)
    references = []
    for row in rows:
        if cfg.kind == "outcome":
            target = outcome_target(row["labels"], cfg)
            references.append([None] * (len(row["steps"]) - 1) + [target])
        else:  # the labels the loss saw (a step ignored after the first error is not compared)
            kept = step_targets(row["labels"], cfg)
            references.append([r if k is not None else None for r, k in zip(row["labels"], kept, strict=True)])
    table = pa.table({"status": ["ok"] * len(rows), "steps": [r["steps"] for r in rows],
                      "scores": pa.array(probs, pa.list_(pa.float64())),
                      "reference_scores": pa.array(references, pa.list_(pa.float64()))})
    result = versus_reference(table, cfg.threshold)
    if result is None:
        return None
    out = {"rows": len(rows), "steps": result["steps"], "step_accuracy": result["step_accuracy"],
           "auc": result["step_auc"]}
    if cfg.kind == "process":
        out["processbench_f1"] = result["processbench"]["f1"]
        out["processbench"] = result["processbench"]
    return out


def run(args: argparse.Namespace) -> int:
    from schemas.atomic import atomic_write_json
    from schemas.folders import refuse_model_output
    from trainer.reward_data import label_source
    from trainer.reward_model import train_reward_model

    require_finished_inputs(args.inputs, args)
    source = label_source(args.inputs)
    cfg, model_args = build_configs(args)
    out = Path(cfg.output_dir)
    refuse_model_output(out, model_args.model_name_or_path, own=(MANIFEST, "config.json"))
    # Unfinished until the record is rewritten at the end: a killed run leaves a folder that the
    # prm:/orm: judges refuse to load (its weights may be half-trained or half-written).
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, {"complete": False, "kind": cfg.kind,
                                       "base_model": model_args.model_name_or_path})
    load_kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.dtype not in (None, "auto"):
        load_kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    try:
        try:
            model, tokenizer, trainer = train_reward_model(
                source, model_args.model_name_or_path, cfg, load_kwargs, lora_config(model_args, cfg.kind))
        except OSError as exc:
            raise UserError(f"cannot load '{model_args.model_name_or_path}': {exc}".splitlines()[0]) from exc
        if trainer.state.global_step == 0:
            raise UserError("no training step ran: no input row had a usable label; nothing was saved")
    except UserError:
        # Refused before a weight was written: a folder this run made holds only the "unfinished"
        # record; remove it, so "nothing was saved" leaves nothing behind.
        if fresh and out.is_dir() and [p.name for p in out.iterdir()] == [MANIFEST]:
            shutil.rmtree(out, ignore_errors=True)
        raise
    if not trainer.is_world_process_zero():
        return 0
    metrics = evaluate(model, tokenizer, source, cfg) if cfg.eval_fraction > 0 else None
    logs = [h for h in trainer.state.log_history if "train_loss" in h]
    manifest = {
        "kind": cfg.kind, "base_model": model_args.model_name_or_path,
        "inputs": [os.fspath(p) for p in args.inputs], "label_column": source.label_column,
        "threshold": cfg.threshold, "soft_labels": cfg.soft_labels,
        "after_first_error": cfg.after_first_error, "aggregate": cfg.aggregate,
        "step_separator": cfg.step_separator, "max_length": cfg.max_length,
        "lora": bool(model_args.use_peft), "max_steps": cfg.max_steps,
        "train_loss": logs[-1]["train_loss"] if logs else None, "heldout": metrics,
        "judge": f"{'prm' if cfg.kind == 'process' else 'orm'}:{out}", "complete": True,
    }
    atomic_write_json(out / MANIFEST, manifest)
    print(f"{cfg.kind} reward model: {out} (judge {manifest['judge']}"
          f"{' --style qwen' if cfg.kind == 'process' else ''})")
    if metrics:
        parts = [f"step accuracy {metrics['step_accuracy']:.3f}" if cfg.kind == "process"
                 else f"accuracy {metrics['step_accuracy']:.3f}",
                 f"AUC {metrics['auc']:.3f}" if metrics["auc"] is not None else "AUC n/a (one class)"]
        if metrics.get("processbench_f1") is not None:
            parts.append(f"ProcessBench F1 {metrics['processbench_f1']:.3f}")
        print(f"held-out ({metrics['rows']} responses, {metrics['steps']} labelled "
              f"{'steps' if cfg.kind == 'process' else 'solutions'}): " + ", ".join(parts))
    return 0
