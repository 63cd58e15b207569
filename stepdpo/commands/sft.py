"""Supervised fine-tuning (TRL's SFTTrainer) on the correct solutions of a responses file.

The first step of Step-DPO's recipe: a policy that writes "Step k:" solutions, trained on the
same text layout `stepdpo train` uses (the problem, the separator, the steps joined by it; with
--chat_template the problem is a chat user turn), loss on the solution only. With --select
correct (the default) a solution is used when its final answer equals the gold answer (the GSM8K
numeric rule, then math-verify), so sampled solutions from `stepdpo generate` can be filtered
into SFT data (rejection sampling) with no judge at all.

The flags are TRL's (`TrlParser` over the options below, TRL's SFTConfig and ModelConfig), as in
`trl sft`: --model_name_or_path, --use_peft --lora_r ..., --dtype, --attn_implementation,
--learning_rate, --num_train_epochs, --max_length, and --config FILE.yaml under the flags.

  stepdpo sft --responses work/gsm8k_train.parquet --model_name_or_path Qwen/Qwen2.5-0.5B \\
      --output_dir work/sft --num_train_epochs 1
  stepdpo sft --responses work/gen --select correct --model_name_or_path work/sft --output_dir work/sft2

Writes the model, tokenizer and sft_config.json (base model, responses file, rows used and
skipped, layout) to --output_dir.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from schemas.errors import UserError
from stepdpo.options import add_allow_incomplete, require_finished_inputs
from stepdpo.trl_args import add_trl_arguments, parse_trl_arguments


def _types() -> tuple[type, ...]:
    from trl import ModelConfig

    from trainer.sft import SFTScriptArguments, StepwiseSFTConfig

    return (SFTScriptArguments, StepwiseSFTConfig, ModelConfig)


TITLES = ("script options", "SFTConfig (TRL)", "ModelConfig (TRL: model loading and LoRA)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("stepdpo sft --responses FILE --model_name_or_path MODEL --output_dir DIR [--config FILE.yaml] "
                    "[--select correct|all] [--use_peft --lora_r R] [any option below]")
    add_trl_arguments(parser, _types(), TITLES)
    add_allow_incomplete(parser)


def _defaults() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"bf16": cuda, "report_to": "none", "save_strategy": "no"} if cuda else \
        {"bf16": False, "use_cpu": True, "report_to": "none", "save_strategy": "no"}


def select_rows(rows: list[dict[str, Any]], select: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The solutions to train on, and how many were left out and why."""
    from labeler.answers import answer_of_steps, check_answer

    counts = {"rows": len(rows), "used": 0, "wrong": 0, "no_gold": 0}
    if select == "all":
        counts["used"] = len(rows)
        return rows, counts
    kept = []
    for row in rows:
        verdict = check_answer(answer_of_steps(list(row["steps"]), row.get("final_answer")), row.get("gold_answer"))
        if verdict.correct is None:
            counts["no_gold"] += 1
        elif verdict.correct:
            kept.append(row)
        else:
            counts["wrong"] += 1
    counts["used"] = len(kept)
    return kept, counts


def run(args: argparse.Namespace) -> int:
    parsed = parse_trl_arguments(args, _types(), defaults=_defaults())
    script, config, model_args = parsed.values
    if not script.responses:
        raise UserError("--responses is required: a responses file or folder")
    if not model_args.model_name_or_path:
        raise UserError("--model_name_or_path (or --model) is required: the policy to fine-tune")
    if config.learning_rate <= 0 or config.per_device_train_batch_size < 1:
        raise UserError("--learning_rate must be positive and --per_device_train_batch_size at least 1")
    if script.max_rows is not None and script.max_rows < 1:
        raise UserError("--max_rows must be at least 1")
    from schemas.folders import refuse_model_output

    out = Path(config.output_dir)
    refuse_model_output(out, model_args.model_name_or_path, own=("sft_config.json", "config.json"))
    from schemas.tables import RESPONSES, read_table

    require_finished_inputs(script.responses, args)
    rows = read_table(script.responses, RESPONSES).to_pylist()
    rows, counts = select_rows(rows, script.select)
    rows = rows[: script.max_rows] if script.max_rows else rows
    counts["used"] = len(rows)
    if not rows:
        raise UserError(f"{script.responses}: no solution to train on ({counts['wrong']} wrong, {counts['no_gold']} "
                        "without a gold answer); --select all trains on every row")
    print(f"sft: {counts['used']} solution(s) of {counts['rows']} ({counts['wrong']} wrong and {counts['no_gold']} "
          f"without a gold answer left out)")

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    from trainer.sft import sft_example

    model_id = model_args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=model_args.model_revision)
        model = AutoModelForCausalLM.from_pretrained(model_id, revision=model_args.model_revision,
                                                     dtype=model_args.dtype or "float32")
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load '{model_id}': {first}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if script.chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"--chat_template: the tokenizer of '{model_id}' has no chat template")
    dataset = Dataset.from_list([sft_example(tokenizer, r["prompt"], r["steps"], script.step_separator,
                                             script.chat_template) for r in rows])
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=get_peft_config(model_args))
    result = trainer.train()
    trainer.save_model(config.output_dir)
    tokenizer.save_pretrained(config.output_dir)
    record = {"base_model": model_id, "responses": str(script.responses), "select": script.select,
              "counts": counts, "step_separator": script.step_separator, "chat_template": script.chat_template,
              "train_loss": result.training_loss, "global_step": result.global_step}
    (out / "sft_config.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"sft: {result.global_step} step(s), mean train loss {result.training_loss:.4f}; wrote {out}")
    return 0
