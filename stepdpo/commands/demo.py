"""Run the whole job end to end on bundled GSM8K data: no API keys, no network.

  ingest → perturb → label (gsm8k-calc judge) → first-error pairs → train a tiny model

Every stage is the same `stepdpo` command a user would type, so the demo doubles as a worked
example; it prints each command and where every file went. With a GPU and keys, swap in a real
judge and model:

  stepdpo demo --judge openai:gpt-4o-mini --model Qwen/Qwen2.5-0.5B-Instruct --max-steps 200

Without the `train` extra (no torch), stop after the labeling half:

  stepdpo demo --until pairs
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from pathlib import Path

from schemas.errors import UserError
from stepdpo.bundled import bundled_file

#: The bundled sample (data/gsm8k/ in a checkout, stepdpo/_data/gsm8k/ in a wheel).
SAMPLE = "gsm8k/test_sample.jsonl"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="where every file goes (default: %(default)s)")
    parser.add_argument("--data", default=None, metavar="JSONL",
                        help="GSM8K-format jsonl to start from (default: the bundled sample of 200 GSM8K test "
                             "problems)")
    parser.add_argument("--limit", type=int, default=120, help="problems to use (default: %(default)s)")
    parser.add_argument("--judge", default="gsm8k-calc", help="judge for `stepdpo label` (default: %(default)s, free and offline)")
    parser.add_argument(
        "--model",
        default=None,
        help="model to train: local path or hub id (default: a tiny model built offline in WORKDIR/tiny-model)",
    )
    parser.add_argument("--max-steps", type=int, default=30, help="training steps (default: %(default)s)")
    parser.add_argument(
        "--learning-rate", type=float, default=5e-3,
        help="learning rate (default: %(default)s, high because the demo model is tiny and random)",
    )
    parser.add_argument("--loss", default="step_weighted", help="stepwise loss (default: %(default)s)")
    parser.add_argument("--until", default="train", choices=STAGES,
                        help="last stage to run (default: %(default)s; `pairs` needs no torch)")


STAGES = ("ingest", "perturb", "label", "pairs", "train")


def _stage(title: str, argv: list[str], holes_ok: bool = False) -> None:
    """Run one stage as the user would type it; stop the demo at a failed one. ``holes_ok``: a
    stage that finished with some rows failed (exit 1, e.g. a paid judge's few errors) is noted
    and the demo goes on with the rows it has."""
    from stepdpo.cli import main

    print(f"\n== {title}\n$ stepdpo {shlex.join(argv)}", flush=True)
    code = main(argv)
    if code == 1 and holes_ok:
        print(f"demo: {title} finished with some rows failed (the line above names the rerun that retries them); "
              "the demo goes on with the rows it has", flush=True)
    elif code != 0:
        raise UserError(f"demo stage '{title}' failed with exit code {code}")


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    if work.exists() and not work.is_dir():
        raise UserError(f"--workdir {work}: exists and is not a folder")
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.max_steps < 1:
        raise UserError("--max-steps must be at least 1")
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--workdir {work}: cannot create it ({exc.strerror or exc})") from None
    responses = work / "responses.parquet"
    perturbed = work / "perturbed.parquet"
    labeled = work / "labeled"
    pairs = work / "pairs"
    out = work / "model-out"
    wanted = STAGES[: STAGES.index(args.until) + 1]
    data = args.data or str(bundled_file(SAMPLE))
    files = [("responses", responses)]

    _stage("ingest", ["ingest", "gsm8k", data, "-o", str(responses), "--limit", str(args.limit)])
    if "perturb" in wanted:
        _stage("perturb", ["perturb", str(responses), "-o", str(perturbed), "--seed", "0"])
        files.append(("perturbed responses", perturbed))
    if "label" in wanted:
        if (labeled / "run.json").is_file():
            # The demo labels from scratch: an earlier demo's run folder would be resumed
            # with rows of its own inputs (another --limit, --data) or refused (another --judge).
            shutil.rmtree(labeled)
        # A free judge needs no cache; a paid one keeps it, so rerunning the demo costs nothing twice.
        free = args.judge in ("gsm8k-calc", "reference")
        _stage("label", ["label", str(perturbed), "--judge", args.judge, "-o", str(labeled)]
               + (["--no-cache"] if free else []), holes_ok=True)
        files.append(("step scores", labeled))
    if "pairs" in wanted:
        _stage("pairs", ["pairs", str(labeled), "-o", str(pairs), "--strategy", "first-error",
                         "--continuation", "rest", "--overwrite"])
        files.append(("pairs", pairs))
    metrics = out / "metrics.jsonl"
    if "train" in wanted:
        model = _train(args, work, pairs, out)
        files += [("model", Path(model)), ("trained model", out), ("metrics", metrics)]
    print("\n== files")
    for name, path in files:
        print(f"  {name:<20} {path}")
    if "train" in wanted and metrics.exists():
        _print_metrics(metrics)
    return 0


def _train(args: argparse.Namespace, work: Path, pairs: Path, out: Path) -> str:
    """Build the tiny model unless --model names one, then train; returns the model used."""
    model = args.model
    if model is None:
        from trainer.tiny_model import build_tiny_model

        model = str(work / "tiny-model")
        print(f"\n== tiny model\nbuilding a 2-layer model and an offline tokenizer in {model}", flush=True)
        build_tiny_model(model, vocab_text=bundled_file(SAMPLE))
    _stage(
        "train",
        [
            "train", "--pairs", str(pairs), "--model", model, "--output_dir", str(out),
            "--max_steps", str(args.max_steps), "--stepwise_loss", args.loss,
            "--per_device_train_batch_size", "8", "--learning_rate", str(args.learning_rate),
            "--logging_steps", "5", "--report_to", "none", "--save_strategy", "no",
            # Checkpointing trades time for memory; a tiny model on a CPU needs the time back.
            "--gradient_checkpointing", "false",
        ],
    )
    return model


def _print_metrics(metrics: Path) -> None:
    logs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    logs = [m for m in logs if "loss" in m]
    if logs:
        first, last = logs[0], logs[-1]
        print("\n== training metrics (first logged step → last)")
        for key in ("loss", "rewards/accuracies", "rewards/margins"):
            if key in first and key in last:
                print(f"  {key:<20} {first[key]:.4f} → {last[key]:.4f}")
