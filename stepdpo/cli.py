"""`stepdpo`: a thin dispatcher.

Each command lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``.
The table below names them without importing them, so ``stepdpo --help`` is instant and the
heavy half (torch, TRL) loads only when ``train`` or a local judge runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from schemas.errors import UserError
from stepdpo import startup
from stepdpo.options import accept_both_spellings

# name -> (module, one-line summary). Order is the order of a typical job.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("stepdpo.commands.demo", "run the whole pipeline on bundled GSM8K data, no keys, no network"),
    "ingest": ("stepdpo.commands.ingest", "turn GSM8K / PRM800K / any JSONL into a responses file"),
    "perturb": ("stepdpo.commands.perturb", "make flawed variants of correct solutions (no API needed)"),
    "generate": ("stepdpo.commands.generate", "sample solutions or continuations from a policy (hf, vLLM, APIs)"),
    "label": ("stepdpo.commands.label", "score every step with a judge into step_scores shards"),
    "batches": ("stepdpo.commands.batches", "show or cancel the provider batch jobs of a label or generate --batch run"),
    "inspect": ("stepdpo.commands.inspect", "summarise, compare and report on any stepdpo file"),
    "combine": ("stepdpo.commands.combine", "combine several judges' runs: mean, min, vote, weighted, consensus (+ escalate)"),
    "judge-eval": ("stepdpo.commands.judge_eval", "score judges on ProcessBench-format files (F1 table)"),
    "pairs": ("stepdpo.commands.pairs", "build preference pairs from labeled runs"),
    "precompute-ref": ("stepdpo.commands.precompute_ref", "write per-step reference log-probs into pair shards"),
    "sft": ("stepdpo.commands.sft", "supervised fine-tuning (TRL SFTTrainer) on correct solutions"),
    "train": ("stepdpo.commands.train", "train with stepwise DPO on TRL from pair shards"),
    "train-rm": ("stepdpo.commands.train_rm", "train a process or outcome reward model from step labels"),
    "eval": ("stepdpo.commands.eval", "accuracy, pass@k, maj@k of a policy; implicit rewards on pairs"),
}

# Commands that need the `train` extra (torch, TRL).
TRAIN_COMMANDS = {"train", "precompute-ref", "train-rm", "sft"}

# Commands whose run() imports its heavy half itself (an API judge's or generator's SDK) and ends
# the start-up with stepdpo.startup.resume_gc() once that is done; the others start their run()
# with the GC already back on.
STARTUP_IN_RUN = {"label", "generate"}

# How to pick up an interrupted command where resuming is not simply running it again.
RESUME_HINTS = {
    "train": "add --resume_from_checkpoint last to continue from the last saved checkpoint",
    "demo": "rerun it",
    "inspect": "nothing was written",
}

EPILOG = """\
a typical job:
  stepdpo ingest gsm8k data/gsm8k/test_sample.jsonl -o work/responses.parquet
  stepdpo label work/responses.parquet --judge openai:gpt-4o-mini -o work/run
  stepdpo inspect work/run
  stepdpo pairs work/run -o work/pairs --strategy first-error
  stepdpo train --pairs work/pairs --model Qwen/Qwen2.5-0.5B-Instruct --output_dir work/model

run `stepdpo COMMAND --help` for a command's options.
"""


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(n) for n in COMMANDS)
    listing = "\n".join(f"  {n:<{width}}  {summary}" for n, (_, summary) in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="stepdpo",
        description="Label math solutions step by step with a judge, then train with stepwise DPO.",
        usage="stepdpo [-h] [--version] COMMAND [options]",
        epilog=f"commands:\n{listing}\n\n{EPILOG}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("stepwise-dpo")
    except Exception:  # not installed as a distribution (e.g. run from a checkout)
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    Called without ``argv`` (the console script, ``python -m stepdpo``) it owns the process and
    runs the start-up with the cyclic GC paused (:mod:`stepdpo.startup`)."""
    if argv is None:
        startup.pause_gc()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        startup.resume_gc()  # never left off, whatever happened


def _main(argv: list[str]) -> int:
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"stepdpo {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.print_usage(sys.stderr)
        print(f"stepdpo: error: unknown command '{name}' (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    module_name, summary = COMMANDS[name]
    try:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = exc.name or str(exc)
            if missing.split(".")[0] in ("schemas", "labeler", "trainer", "stepdpo"):
                raise  # our own bug: keep the traceback
            extra = "train" if name in TRAIN_COMMANDS else "all"
            raise UserError(
                f"this command needs '{missing}', which is not installed "
                f"(pip install 'stepwise-dpo[{extra}]')"
            ) from exc
        parser = argparse.ArgumentParser(
            prog=f"stepdpo {name}",
            description=(module.__doc__ or summary).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(parser)
        accept_both_spellings(parser)  # --max-length and --max_length, for every command
        args = parser.parse_args(rest)
        if name not in STARTUP_IN_RUN:
            startup.resume_gc()
        return int(module.run(args) or 0)
    except UserError as exc:
        from stepdpo.rerun import redact  # a spec echoed back may hold user:password@ or ?api_key=

        print(f"stepdpo {name}: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = RESUME_HINTS.get(name, "rerun the same command to resume")
        print(f"stepdpo {name}: interrupted; {how}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stepdpo inspect ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
