"""Train with stepwise DPO (TRL 1.16) from pair shards, streamed.

The flags are TRL's (`TrlParser` over the script options below, StepwiseDPOConfig = TRL's
DPOConfig plus the stepwise fields, and TRL's ModelConfig), so a `trl dpo` command line works:
--model_name_or_path (or --model), --use_peft --lora_r --lora_alpha --lora_target_modules,
--dtype (or --torch_dtype), --attn_implementation, and --config FILE.yaml, whose values sit
under the flags given on the command line. --loss_type (or --stepwise_loss) picks the stepwise
loss: step_weighted, margin, soft_label, combined, or sigmoid (plain DPO). --max_length 0 means
no limit. Without --max_steps one run covers --num_train_epochs epochs of the pairs (counted
from the shards' footers); the stream is shuffled (shard order and a 1,000-row buffer, per
epoch) unless --train_sampling_strategy sequential. margin and soft_label use the rewards
`stepdpo pairs` stored unless --aggregation asks to re-aggregate the step scores.
Pair shards with precomputed per-step reference log-probs (`stepdpo precompute-ref`) train with
no reference model in memory. Runs as is under `accelerate launch` (DDP, FSDP, DeepSpeed).

  stepdpo train --pairs work/pairs --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \\
      --output_dir work/model --loss_type step_weighted --use_peft --lora_r 8
  accelerate launch -m stepdpo train --pairs work/pairs --model Qwen/Qwen2.5-0.5B-Instruct \\
      --output_dir work/model --max_steps 500 --config train.yaml

Writes the model, tokenizer, stepwise_config.json (with the base model, pairs and judges it
came from), the model card and metrics.jsonl to --output_dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import UserError
from stepdpo.trl_args import add_trl_arguments, parse_trl_arguments


@dataclass
class TrainScriptArguments:
    """Where the pairs are and what the reference is."""

    pairs: str | None = field(default=None, metadata={"help": "folder (or file) of pair shards (required)"})
    eval_pairs: str | None = field(
        default=None,
        metadata={"help": "folder (or file) of held-out pair shards, evaluated every --eval_steps when "
                  "--eval_strategy is steps or epoch (streamed like --pairs)"},
    )
    ref_model: str | None = field(
        default=None,
        metadata={"help": "reference model path or hub id (default: a frozen copy of the policy, or none when "
                  "the shards carry precomputed reference log-probs or LoRA is used: then the adapter "
                  "switched off is the reference)"},
    )


def _types() -> tuple[type, ...]:
    from trl import ModelConfig

    from trainer.config import StepwiseDPOConfig

    return (TrainScriptArguments, StepwiseDPOConfig, ModelConfig)


TITLES = ("script options", "StepwiseDPOConfig (TRL DPOConfig + stepwise fields)",
          "ModelConfig (TRL: model loading and LoRA)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("stepdpo train --pairs DIR --model_name_or_path MODEL --output_dir DIR [--config FILE.yaml] "
                    "[--loss_type LOSS] [--use_peft --lora_r R] [--max_steps N] [any option below]")
    add_trl_arguments(parser, _types(), TITLES)


def _defaults() -> dict[str, Any]:
    """This command's defaults where they differ from TRL's: bf16 on CUDA, fp32 on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    return {"bf16": cuda} if cuda else {"bf16": False, "use_cpu": True}


REPORTERS = {"wandb": "wandb", "tensorboard": "tensorboard", "trackio": "trackio", "mlflow": "mlflow",
             "comet_ml": "comet_ml", "clearml": "clearml", "swanlab": "swanlab", "dvclive": "dvclive"}


def _check_flags(config, model_args, explicit: set[str]) -> None:
    """Values TRL would accept, or fail on much later with a traceback: one line each."""
    import importlib.util

    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: is a file, not a folder")
    from schemas.folders import refuse_model_output

    # not into a run, pairs or another model, nor over the base model; its own folder resumes
    refuse_model_output(out, model_args.model_name_or_path or "", own=("stepwise_config.json", "config.json"))
    if "max_steps" in explicit and config.max_steps <= 0:
        raise UserError(f"--max_steps must be at least 1, got {config.max_steps} (leave it out to train "
                        "--num_train_epochs epochs of the pairs)")
    if model_args.lora_r < 1:
        raise UserError(f"--lora_r must be at least 1, got {model_args.lora_r}")
    if model_args.lora_alpha <= 0:
        raise UserError(f"--lora_alpha must be positive, got {model_args.lora_alpha}")
    for name in config.report_to or []:
        module = REPORTERS.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"--report_to {name}: the '{module}' package is not installed "
                            f"(pip install 'stepwise-dpo[trackers]', or pip install {module})")
    if not model_args.model_name_or_path:
        raise UserError("--model_name_or_path (or --model) is required: the policy to train, a local folder "
                        "or a hub id")


def _model_exists(name: str, flag: str) -> None:
    """A local path that does not exist is named as such, not as a bad Hub repo id."""
    looks_local = name.startswith(("/", ".", "~")) or os.sep in name.strip("/").replace("/", "", 1) \
        or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise UserError(f"{flag} {name}: no such model folder")


def build_config(args: argparse.Namespace):
    """(script options, StepwiseDPOConfig, ModelConfig) from flags, --config and our defaults."""
    parsed = parse_trl_arguments(args, _types(), defaults=_defaults(), ignore=("provenance",))
    script, config, model_args = parsed.values
    explicit = parsed.explicit
    _check_flags(config, model_args, explicit)
    if config.precompute_ref_log_probs:
        raise UserError("--precompute_ref_log_probs is TRL's in-memory precompute, which needs a non-streamed "
                        "dataset: run `stepdpo precompute-ref` to write per-step reference log-probs into "
                        "the pair shards, then train on those")
    if config.hub_token:
        # A credential must not be pickled into training_args.bin: hand it to huggingface_hub
        # through the environment, where push_to_hub finds it.
        os.environ["HF_TOKEN"] = config.hub_token
        config.hub_token = None
    if not script.pairs:
        raise UserError("--pairs is required: the folder (or file) of pair shards")
    if {"lora_r", "lora_alpha", "lora_target_modules"} & explicit and not model_args.use_peft:
        model_args.use_peft = True  # `--lora_r 8` alone meant LoRA in earlier releases; say so
        print("note: a --lora_* option was given: training a LoRA adapter (--use_peft)")
    targets = model_args.lora_target_modules
    if isinstance(targets, str) and "," in targets:
        model_args.lora_target_modules = [t for t in targets.split(",") if t]
    init = {"revision": model_args.model_revision, "trust_remote_code": config.trust_remote_code}
    import torch

    if "dtype" in explicit:
        init["dtype"] = model_args.dtype
    else:  # TRL's ModelConfig says float32; train in bf16 on CUDA as TRL's bf16 default does
        init["dtype"] = "bfloat16" if torch.cuda.is_available() and config.bf16 else "float32"
    if model_args.attn_implementation:
        init["attn_implementation"] = model_args.attn_implementation
    elif torch.cuda.is_available():
        init["attn_implementation"] = "sdpa"
    init.update(config.model_init_kwargs or {})
    config.model_init_kwargs = init
    return script, config, model_args


def _metrics_callback(path: Path):
    from transformers import TrainerCallback

    class JsonlMetrics(TrainerCallback):
        """Appends every log record to metrics.jsonl (main process only)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return JsonlMetrics()


def check_precompute_settings(pairs: str | os.PathLike, config) -> None:
    """Refuse precomputed reference log-probs made with other tokenization settings.

    `stepdpo precompute-ref` records its max length, truncation mode, separator and EOS rule in
    precompute.json; a reference summed over other tokens than the policy's biases every Δ.
    """
    path = Path(pairs)
    meta = (path if path.is_dir() else path.parent) / "precompute.json"
    if not meta.is_file():
        return
    try:
        saved = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{meta}: unreadable ({exc}); rerun `stepdpo precompute-ref` (it resumes)".splitlines()[0]) \
            from exc
    if not isinstance(saved, dict) or saved.get("complete") is not True:
        raise UserError(f"{meta}: `stepdpo precompute-ref` did not finish writing these shards; rerun it "
                        "(it resumes) before training on them")
    saved.setdefault("chat_template", False)  # written before the option existed
    ours = {"max_length": config.max_length, "truncation_mode": config.truncation_mode,
            "step_separator": config.step_separator, "add_eos": config.add_eos,
            "chat_template": config.chat_template}
    theirs = {"max_length": "--max-length", "truncation_mode": "--truncation-mode",
              "step_separator": "--step-separator", "add_eos": "--add-eos"}
    diff = [f"{k}={ours[k]!r} (precomputed with {saved[k]!r})" for k in ours if k in saved and saved[k] != ours[k]]
    if diff:
        flags = " ".join(f"{theirs[k]} {ours[k] if ours[k] is not None else 0}" if k in theirs
                         else ("--chat-template" if ours[k] else "without --chat-template") for k in ours
                         if k in saved and saved[k] != ours[k])
        raise UserError(f"{meta}: the reference log-probs were computed with other settings than this run: "
                        f"{'; '.join(diff)}. Rerun `stepdpo precompute-ref ... {flags}`, train with the same "
                        "settings, or pass --ref_model")


def _config_json(config, provenance: dict[str, Any]) -> str:
    """The config as a file `--config` accepts back (`to_dict` masks every *_token field, meant for
    hub tokens; the trainer turns precompute_ref_log_probs on for precomputed shards), plus where
    the model came from under ``provenance`` (a key `--config` skips)."""
    d = config.to_dict()
    d["pad_token"] = config.pad_token
    d["hub_token"] = None  # never write a credential
    d["precompute_ref_log_probs"] = False  # set by the trainer; `stepdpo train` refuses it as a flag
    d["model_init_kwargs"] = None  # rebuilt from --dtype / --attn_implementation on the next run
    d["provenance"] = provenance
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def _steps_for_epochs(num_pairs: int, config) -> int:
    """Optimizer steps that cover ``num_train_epochs`` passes over ``num_pairs`` pairs."""
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * max(config.world_size, 1)
    return max(1, math.ceil(num_pairs * config.num_train_epochs / per_step))


def _load_model_error(name: str, what: str, exc: Exception) -> UserError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Repo id must" in text or "repo_name" in text:
        text = "neither a local model folder nor a valid hub model id (namespace/name)"
    return UserError(f"cannot load {what} '{name}': {text}")


def resolve_resume(value: str | None, out: Path) -> str | None:
    """``--resume_from_checkpoint``: last/true = the newest COMPLETE checkpoint-N of --output_dir
    (naming the newer ones skipped), or a folder, which must be complete."""
    from trainer.checkpoints import checkpoint_problem, newest_complete_checkpoint

    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("last", "true"):
        point = newest_complete_checkpoint(out)
        for path, problem in point.skipped:
            print(f"note: skipping {path.name}: {problem}")
        if point.path is None:
            raise UserError(f"--resume_from_checkpoint {value}: no complete checkpoint-N folder in {out}")
        print(f"resuming from {point.path}")
        return os.fspath(point.path)
    if not Path(value).is_dir():
        raise UserError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    problem = checkpoint_problem(value)
    if problem:
        raise UserError(f"--resume_from_checkpoint {value}: cannot resume from it: {problem}")
    return os.fspath(value)


def trim_metrics(path: Path, resume: str | None) -> None:
    """A fresh run starts a fresh metrics.jsonl; a resumed one keeps the steps up to its checkpoint."""
    from trainer.checkpoints import checkpoint_step, trim_metrics_log

    trim_metrics_log(path, checkpoint_step(resume) if resume else None)


def run(args: argparse.Namespace) -> int:
    from trainer.data import (
        check_aggregation,
        count_pairs,
        has_precomputed_ref,
        load_pairs,
        pairs_provenance,
        recorded_threshold,
    )

    script, config, model_args = build_config(args)
    model_id = model_args.model_name_or_path
    _model_exists(model_id, "--model_name_or_path")
    if script.ref_model:
        _model_exists(script.ref_model, "--ref_model")
    precomputed = has_precomputed_ref(script.pairs)  # also checks every shard's schema stamp and the manifest
    check_aggregation(script.pairs, config.aggregation)
    use_peft = model_args.use_peft
    uses_precomputed = precomputed and not script.ref_model and not use_peft
    if uses_precomputed:
        check_precompute_settings(script.pairs, config)
    eval_pairs = script.eval_pairs
    if eval_pairs:
        eval_precomputed = has_precomputed_ref(eval_pairs)
        if uses_precomputed and not eval_precomputed:
            raise UserError(f"{eval_pairs}: the training shards carry precomputed reference log-probs, the eval "
                            "shards do not: run `stepdpo precompute-ref` on them too, or pass --ref_model")
        if uses_precomputed:
            check_precompute_settings(eval_pairs, config)
        if config.eval_strategy == "no":
            raise UserError("--eval_pairs needs --eval_strategy steps (with --eval_steps) or epoch")
    elif config.eval_strategy != "no":
        strategy = getattr(config.eval_strategy, "value", config.eval_strategy)
        raise UserError(f"--eval_strategy {strategy} needs --eval_pairs (held-out pair shards)")
    num_pairs = count_pairs(script.pairs)
    if config.max_steps is None or config.max_steps <= 0:
        config.max_steps = _steps_for_epochs(num_pairs, config)
        print(f"note: {num_pairs} pairs x {config.num_train_epochs:g} epoch(s): --max_steps {config.max_steps}")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    from trainer.stepwise_trainer import StepwiseDPOTrainer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=model_args.model_revision,
                                                  trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_model_error(model_id, "the tokenizer of", exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"--chat_template: the tokenizer of '{model_id}' has no chat template")
    ref_model = None
    if script.ref_model:
        init = {k: v for k, v in config.model_init_kwargs.items() if k != "revision"}
        try:
            ref_model = AutoModelForCausalLM.from_pretrained(script.ref_model, **init)
        except (OSError, ValueError) as exc:
            raise _load_model_error(script.ref_model, "the reference model", exc) from exc
    try:
        peft_config = get_peft_config(model_args)
    except ValueError as exc:
        raise UserError(f"--use_peft: {exc}".splitlines()[0] + " (pip install 'stepwise-dpo[train]')") from exc
    extra = {}
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        extra["quantization_config"] = quantization
    # The Trainer ignores train_sampling_strategy for a stream: shuffle it here unless sequential.
    shuffle = config.train_sampling_strategy != "sequential"
    dataset = load_pairs(script.pairs, sep=config.step_separator, streaming=True,
                         shuffle_seed=config.seed if shuffle else None)
    eval_dataset = load_pairs(eval_pairs, sep=config.step_separator, streaming=True) if eval_pairs else None
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    provenance = {"base_model": model_id, "base_model_revision": model_args.model_revision,
                  "train_pairs": pairs_provenance(script.pairs),
                  "eval_pairs": pairs_provenance(eval_pairs) if eval_pairs else None}
    try:
        trainer = StepwiseDPOTrainer(
            model_id,
            ref_model=ref_model,
            args=config,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[_metrics_callback(metrics_path)],
            num_train_pairs=num_pairs,
            provenance=provenance,
            error_threshold=recorded_threshold(script.pairs),
            **extra,
        )
    except (OSError, ValueError) as exc:
        from peft.utils.error import PeftError

        if isinstance(exc, PeftError):  # e.g. --lora_target_modules naming modules the model lacks
            raise UserError(f"LoRA: {exc}".splitlines()[0]) from exc
        if isinstance(exc, OSError) or "Repo id must" in str(exc):
            raise _load_model_error(model_id, "the model", exc) from exc
        raise
    resume = resolve_resume(config.resume_from_checkpoint, out)
    if trainer.is_world_process_zero():
        trim_metrics(metrics_path, resume)
    reference = ("precomputed per-step log-probs" if trainer.uses_precomputed_ref
                 else script.ref_model if script.ref_model
                 else "adapter switched off" if peft_config is not None
                 else "frozen copy of the policy")
    if precomputed and not trainer.uses_precomputed_ref and trainer.is_world_process_zero():
        print(f"note: the shards carry precomputed reference log-probs; they are not used, the reference is: "
              f"{reference}")
    if trainer.is_world_process_zero():  # trainer/packing.py: the layout auto chose, or the one asked for
        print(f"packing: {trainer.packing}" + (" (auto: the fastest this attention implementation supports)"
                                               if config.packing == "auto" else ""), flush=True)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.state.global_step == 0:
        limit = (f": every pair's prompt is at least --max_length {config.max_length} tokens"
                 if config.max_length is not None and config.truncation_mode == "keep_start" else "")
        raise UserError(f"no training step ran, no pair was left to train on{limit}; nothing was saved")
    trainer.save_model(os.fspath(out))
    if trainer.is_world_process_zero():
        trainer.create_model_card(model_name=out.name)
        (out / "stepwise_config.json").write_text(_config_json(config, provenance), encoding="utf-8")
        logs = [h for h in trainer.state.log_history if "loss" in h]
        last = logs[-1] if logs else {}
        print(f"reference: {reference}")
        print(f"model, tokenizer, card: {out}")
        print(f"config: {out / 'stepwise_config.json'}")
        print(f"metrics: {metrics_path}")
        keys = ("loss", "rewards/accuracies", "rewards/margins", "step/margin", "step/first_error_weight")
        if last:
            print("final: " + ", ".join(f"{k}={last[k]:.4g}" for k in keys if k in last))
        else:
            summary = next((h for h in trainer.state.log_history if "train_loss" in h), {})
            mean = f"train_loss={summary['train_loss']:.4g}" if "train_loss" in summary else "no loss"
            print(f"final: {mean} (mean over the run; no step was logged: --logging_steps "
                  f"{config.logging_steps:g} > --max_steps {config.max_steps})")
    return 0
