"""Train with stepwise DPO (TRL 1.16) from pair shards, streamed.

Every StepwiseDPOConfig field (all of TRL's DPOConfig / transformers' TrainingArguments plus the
stepwise ones) is an option below; --config FILE.yaml sets any of them, and a flag given on the
command line wins over the file. --max_length 0 means no limit. Streaming data has no length, so
--max_steps is required; the stream is shuffled (shard order and a 1,000-row buffer, per epoch)
unless --train_sampling_strategy sequential.
Pair shards with precomputed per-step reference log-probs (`stepdpo precompute-ref`) train with
no reference model in memory. Runs as is under `accelerate launch` (DDP, FSDP, DeepSpeed):

  accelerate launch -m stepdpo.cli train --pairs work/pairs --model Qwen/Qwen2.5-0.5B-Instruct \\
      --output_dir work/model --max_steps 500 --stepwise_loss step_weighted

Writes the model, tokenizer, stepwise_config.json and metrics.jsonl to --output_dir.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

from schemas.errors import UserError

OWN_OPTIONS = ("pairs", "eval_pairs", "model", "config", "ref_model", "lora_r", "lora_alpha", "lora_targets")


def _hf_parser():
    from transformers import HfArgumentParser

    from trainer.config import StepwiseDPOConfig

    return HfArgumentParser(StepwiseDPOConfig, add_help=False)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, help="folder (or file) of pair shards")
    parser.add_argument("--eval_pairs", default=None,
                        help="folder (or file) of held-out pair shards, evaluated every --eval_steps when "
                             "--eval_strategy is steps or epoch (streamed like --pairs)")
    parser.add_argument("--model", required=True, help="policy to train: local path or hub id")
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file of StepwiseDPOConfig fields; command-line flags override it")
    parser.add_argument("--ref_model", default=None,
                        help="reference model path or hub id (default: a frozen copy of --model, or none "
                             "when the shards carry precomputed reference log-probs or LoRA is used)")
    parser.add_argument("--lora_r", type=int, default=0,
                        help="train a LoRA adapter of this rank; the adapter switched off is the reference "
                             "(default: 0 = full fine-tuning)")
    parser.add_argument("--lora_alpha", type=int, default=16, help="LoRA alpha (default: 16)")
    parser.add_argument("--lora_targets", default="all-linear",
                        help="LoRA target modules, comma-separated or all-linear (default: all-linear)")
    group = parser.add_argument_group("StepwiseDPOConfig (TRL DPOConfig + stepwise fields)")
    hf = _hf_parser()
    for action in hf._actions:
        if action.dest == "help":
            continue
        # No default in the namespace: a flag is present only when given, so a flag given with
        # its default value still overrides the YAML file (and `--no_X` cannot mask `X`).
        action = copy.copy(action)
        action.default = argparse.SUPPRESS
        group._add_action(action)


def _coerce(action: argparse.Action, value: Any, source: str) -> Any:
    """A YAML value as argparse would have typed it: PyYAML reads `1e-4` as a string."""
    convert = action.type
    if convert is None or convert is str:
        return value
    try:
        if isinstance(value, str):
            return convert(value)
        if isinstance(value, list) and action.nargs in ("+", "*"):
            return [convert(v) if isinstance(v, str) else v for v in value]
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise UserError(f"{source}: {action.dest}: invalid value {value!r} ({exc})".splitlines()[0]) from exc
    return value


def _merged_config(args: argparse.Namespace) -> dict[str, Any]:
    """Parser defaults < YAML file < flags given on the command line."""
    hf = _hf_parser()
    actions = [a for a in hf._actions if a.dest != "help"]
    defaults: dict[str, Any] = {}
    typed: dict[str, argparse.Action] = {}
    for a in actions:  # `--X` comes before its `--no_X` twin: the first one holds the default
        defaults.setdefault(a.dest, a.default)
        if a.type is not None:
            typed.setdefault(a.dest, a)
    values = dict(defaults)
    if args.config:
        import yaml

        try:
            loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"{args.config}: cannot read the YAML config ({exc})".splitlines()[0]) from exc
        if not isinstance(loaded, dict):
            raise UserError(f"{args.config}: the YAML config must be a mapping of field: value")
        unknown = sorted(set(loaded) - set(defaults))
        if unknown:
            raise UserError(f"{args.config}: unknown field(s) {', '.join(unknown)}")
        for name, value in loaded.items():
            values[name] = _coerce(typed[name], value, args.config) if name in typed else value
    for name in defaults:
        if hasattr(args, name):  # given on the command line (see `configure`)
            values[name] = getattr(args, name)
    return values


def build_config(args: argparse.Namespace):
    import torch

    from trainer.config import StepwiseDPOConfig

    values = _merged_config(args)
    if not values.get("max_steps") or values["max_steps"] <= 0:
        raise UserError("--max_steps is required: streamed pair shards have no length")
    if values.get("max_length") is not None and values["max_length"] <= 0:
        values["max_length"] = None  # 0 = no limit, as in `stepdpo precompute-ref --max-length 0`
    if values.get("precompute_ref_log_probs"):
        raise UserError("--precompute_ref_log_probs is TRL's in-memory precompute, which needs a non-streamed "
                        "dataset: run `stepdpo precompute-ref` to write per-step reference log-probs into "
                        "the pair shards, then train on those")
    cuda = torch.cuda.is_available()
    if values.get("bf16") is None:
        values["bf16"] = cuda  # bf16 on CUDA, fp32 on CPU
    if not cuda:
        values["use_cpu"] = True
    if cuda and not values.get("model_init_kwargs"):
        values["model_init_kwargs"] = {"dtype": "bfloat16" if values["bf16"] else "float32",
                                       "attn_implementation": "sdpa"}
    try:
        return StepwiseDPOConfig(**values)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc).splitlines()[0]) from exc


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
    except (OSError, ValueError):
        return
    if saved.get("complete") is False:
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


def _config_json(config) -> str:
    """The config as a file `--config` accepts back: `to_dict` masks every *_token field (meant for
    hub tokens) and the trainer turns precompute_ref_log_probs on for precomputed shards."""
    d = config.to_dict()
    d["pad_token"] = config.pad_token
    d["hub_token"] = None  # never write a credential
    d["precompute_ref_log_probs"] = False  # set by the trainer; `stepdpo train` refuses it as a flag
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def run(args: argparse.Namespace) -> int:
    from trainer.data import has_precomputed_ref, load_pairs

    load_pairs_dir = args.pairs
    precomputed = has_precomputed_ref(load_pairs_dir)  # also checks every shard's schema stamp
    config = build_config(args)
    uses_precomputed = precomputed and not args.ref_model and not args.lora_r
    if uses_precomputed:
        check_precompute_settings(load_pairs_dir, config)
    eval_pairs = getattr(args, "eval_pairs", None)
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

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.stepwise_trainer import StepwiseDPOTrainer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of '{args.model}': {exc}".splitlines()[0]) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"--chat_template: the tokenizer of '{args.model}' has no chat template")
    ref_model = None
    if args.ref_model:
        try:
            ref_model = AutoModelForCausalLM.from_pretrained(args.ref_model, **(config.model_init_kwargs or {}))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the reference model '{args.ref_model}': {exc}".splitlines()[0]) from exc
    peft_config = None
    if args.lora_r:
        from peft import LoraConfig

        targets = args.lora_targets if args.lora_targets == "all-linear" else args.lora_targets.split(",")
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=targets,
                                 task_type="CAUSAL_LM")
    # The Trainer ignores train_sampling_strategy for a stream: shuffle it here unless sequential.
    shuffle = config.train_sampling_strategy != "sequential"
    dataset = load_pairs(load_pairs_dir, sep=config.step_separator, streaming=True,
                         shuffle_seed=config.seed if shuffle else None)
    eval_dataset = load_pairs(eval_pairs, sep=config.step_separator, streaming=True) if eval_pairs else None
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    try:
        trainer = StepwiseDPOTrainer(
            args.model,
            ref_model=ref_model,
            args=config,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[_metrics_callback(metrics_path)],
        )
    except ValueError as exc:
        from peft.utils.error import PeftError

        if isinstance(exc, PeftError):  # e.g. --lora_targets naming modules the model lacks
            raise UserError(f"LoRA: {exc}".splitlines()[0]) from exc
        raise
    resume = config.resume_from_checkpoint
    if resume is not None and str(resume).lower() in ("last", "true"):
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(os.fspath(out)) if out.is_dir() else None
        if resume is None:
            raise UserError(f"--resume_from_checkpoint {config.resume_from_checkpoint}: no checkpoint-N folder "
                            f"in {out}")
    elif resume is not None and not Path(resume).is_dir():
        raise UserError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    if trainer.is_world_process_zero() and metrics_path.exists() and resume is None:
        metrics_path.unlink()  # a fresh run starts a fresh log; a resumed one appends
    reference = ("precomputed per-step log-probs" if trainer.uses_precomputed_ref
                 else args.ref_model if args.ref_model
                 else "adapter switched off" if peft_config is not None
                 else "frozen copy of the policy")
    if precomputed and not trainer.uses_precomputed_ref and trainer.is_world_process_zero():
        print(f"note: the shards carry precomputed reference log-probs; they are not used, the reference is: "
              f"{reference}")
    trainer.train(resume_from_checkpoint=resume)
    if trainer.state.global_step == 0:
        limit = (f": every pair's prompt is at least --max_length {config.max_length} tokens"
                 if config.max_length is not None and config.truncation_mode == "keep_start" else "")
        raise UserError(f"no training step ran, no pair was left to train on{limit}; nothing was saved")
    trainer.save_model(os.fspath(out))
    if trainer.is_world_process_zero():
        (out / "stepwise_config.json").write_text(_config_json(config), encoding="utf-8")
        logs = [h for h in trainer.state.log_history if "loss" in h]
        last = logs[-1] if logs else {}
        print(f"reference: {reference}")
        print(f"model, tokenizer: {out}")
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
