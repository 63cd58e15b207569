"""Evaluate a policy: accuracy on GSM8K test (bundled) or any problems file, pass@k and maj@k.

Samples solutions through any `stepdpo generate` backend into OUT/samples (so an evaluation
resumes, caches and retries exactly like generation: a rerun samples nothing twice), grades each
stated answer against the gold one (the GSM8K numeric rule, then math-verify; a sample with no
answer, cut off, or never written counts as wrong), and writes:

  OUT/problems.parquet   one row per problem (answers, correctness per sample, majority answer)
  OUT/summary.json       accuracy (the first sample: greedy at the default --temperature 0),
                         pass@k (unbiased estimator) and maj@k with -n K, counts, the generator

Samples that failed after their retries are graded as wrong and the run exits 1, with one line
naming the eval command that draws only them and grades again.

--baseline OTHER_OUT compares this evaluation with another one on the problems both graded:
the accuracy difference with a 95% paired-bootstrap interval (problems resampled together).

--pairs PAIRS --model DIR scores preference pairs with the model's implicit DPO rewards against
its reference (beta * (log pi - log pi_ref) summed over a side's steps, as the trainer's
rewards/chosen): OUT/pairs_eval.jsonl and .csv with prompt, model_output, chosen_score,
rejected_score, preferred per pair, and the share of pairs preferred correctly. The reference,
beta, separator, EOS and chat-template settings come from the model's stepwise_config.json when
it has one (a folder `stepdpo train` wrote); --ref-model and --beta override.

examples:
  stepdpo eval --generator hf:work/model -o work/eval-trained                 # GSM8K test, greedy
  stepdpo eval --generator hf:work/base -o work/eval-base
  stepdpo eval --generator hf:work/model -o work/eval-trained --baseline work/eval-base
  stepdpo eval problems.jsonl --generator openai-compatible:my-policy@http://gpu:8000/v1 -o work/eval -n 8 --temperature 0.8
  stepdpo eval --pairs work/pairs --model work/model -o work/pairs-eval
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from schemas.errors import UserError
from stepdpo.options import (
    add_allow_incomplete,
    add_dataclass_arguments,
    dataclass_from_args,
)

# The flags handed through to `stepdpo generate` unchanged (its help documents them).
PASSTHROUGH = ("template", "split", "prompt_field", "answer_field", "id_field", "concurrency", "rpm", "tpm",
               "max_attempts", "cache_dir", "prices", "progress", "seed", "top_p", "stop_after_failures")


@dataclass
class EvalConfig:
    n: int = field(default=1, metadata={"help": "samples per problem; > 1 reports pass@k and maj@k (set "
                                                 "--temperature too)", "flag": "-n", "metavar": "K"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0: greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass (with --temperature > 0)"})
    max_new_tokens: int = field(default=1024, metadata={"help": "cap per solution (Step-DPO evaluates with "
                                                                "2048); a solution cut there counts as wrong"})
    seed: int = field(default=0, metadata={"help": "base seed of the samples"})
    template: str = field(default="step-dpo", metadata={"help": "prompt template (as `generate --template`)",
                                                        "metavar": "NAME|FILE"})
    split: str = field(default="step-markers", metadata={"help": "how solutions become steps (as `generate`)"})
    limit: int | None = field(default=None, metadata={"help": "only the first N problems", "metavar": "N"})
    prompt_field: str | None = field(default=None, metadata={"help": "problems file: field of the problem text"})
    answer_field: str | None = field(default=None, metadata={"help": "problems file: field of the gold answer"})
    id_field: str | None = field(default=None, metadata={"help": "problems file: field of the problem id"})
    concurrency: int = field(default=32, metadata={"help": "requests (or hf batches) in flight"})
    rpm: float | None = field(default=None, metadata={"help": "client-side requests/min limit"})
    tpm: float | None = field(default=None, metadata={"help": "client-side tokens/min limit"})
    max_attempts: int = field(default=6, metadata={"help": "tries per request"})
    stop_after_failures: int = field(default=8, metadata={"help": "stop drawing when the server looks down, at "
                                                                  "the start or mid-run (as `generate "
                                                                  "--stop-after-failures`); 0: never",
                                                          "metavar": "N"})
    cache: bool = field(default=True, metadata={"help": "reuse and store samples in the generation cache"})
    cache_dir: str | None = field(default=None, metadata={"help": "generation cache folder", "metavar": "DIR"})
    prices: str | None = field(default=None, metadata={"help": "price table override", "metavar": "FILE"})
    progress: str = field(default="auto", metadata={"help": "progress display",
                                                    "choices": ["auto", "rich", "log", "none"]})
    baseline: str | None = field(default=None, metadata={"help": "another eval folder: compare accuracy on "
                                                                 "the shared problems (paired bootstrap)",
                                                         "metavar": "OTHER_OUT"})
    resamples: int = field(default=10_000, metadata={"help": "bootstrap resamples for --baseline"})


@dataclass
class PairsEvalConfig:
    pairs: str | None = field(default=None, metadata={"help": "score these pairs with --model's implicit "
                                                              "rewards instead of sampling problems",
                                                      "metavar": "PAIRS"})
    model: str | None = field(default=None, metadata={"help": "with --pairs: the trained policy (folder or hub "
                                                              "id)", "metavar": "MODEL"})
    ref_model: str | None = field(default=None, metadata={"help": "with --pairs: the reference (default: the "
                                                                  "base model in MODEL's stepwise_config.json)",
                                                          "metavar": "MODEL"})
    beta: float | None = field(default=None, metadata={"help": "with --pairs: DPO beta (default: MODEL's, else "
                                                               "0.1)"})
    pairs_limit: int | None = field(default=None, metadata={"help": "with --pairs: only the first N pairs",
                                                            "metavar": "N"})
    generate_outputs: bool = field(default=True, metadata={"help": "with --pairs: write the policy's greedy "
                                                                   "continuation of each prompt as model_output "
                                                                   "(--no-generate-outputs: leave it empty)"})
    output_tokens: int = field(default=256, metadata={"help": "with --pairs: max new tokens of model_output"})


def configure(parser: argparse.ArgumentParser) -> None:
    from labeler.sources.generation.registry import GeneratorOptions, generator_help

    parser.add_argument("problems", nargs="?", metavar="PROBLEMS",
                        help="problems (JSONL/JSON/Parquet with a prompt and a gold answer, or a responses "
                             "file); default: the bundled GSM8K test set (1,319 problems)")
    parser.add_argument("--generator", metavar="SPEC", help=f"the policy to evaluate; {generator_help()}")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for samples and results")
    add_dataclass_arguments(parser, EvalConfig, "evaluation")
    add_dataclass_arguments(parser, PairsEvalConfig, "implicit rewards on pairs (--pairs)")
    add_dataclass_arguments(parser, GeneratorOptions, "backend")
    from labeler.engine.ray_options import RayOptions

    parser.add_argument("--engine", default="local", choices=["local", "ray"],
                        help="where an hf: model samples: local, or ray (one model per Ray worker; as "
                             "`generate --engine ray`)")
    add_dataclass_arguments(parser, RayOptions, "Ray (--engine ray)")
    add_allow_incomplete(parser)


def bundled_gsm8k_test() -> Path:
    from stepdpo.bundled import bundled_file

    return bundled_file("gsm8k/test.jsonl")


def _check(cfg: EvalConfig) -> None:
    if cfg.n < 1:
        raise UserError("-n must be at least 1")
    if cfg.temperature < 0:
        raise UserError("--temperature must be >= 0")
    if cfg.n > 1 and cfg.temperature == 0:
        raise UserError(f"-n {cfg.n} at --temperature 0 draws {cfg.n} identical greedy solutions; set "
                        "--temperature (Step-DPO samples at 0.8)")
    if cfg.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if cfg.resamples < 100:
        raise UserError("--resamples must be at least 100")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError("--limit must be at least 1")


def run(args: argparse.Namespace) -> int:
    pcfg = dataclass_from_args(PairsEvalConfig, args)
    if pcfg.pairs:
        return _run_pairs(args, pcfg)
    if pcfg.model or pcfg.ref_model:
        raise UserError("--model and --ref-model go with --pairs; to evaluate a model on problems use "
                        "--generator hf:MODEL")
    cfg = dataclass_from_args(EvalConfig, args)
    _check(cfg)
    if not args.generator:
        raise UserError("--generator is required (e.g. hf:work/model), or --pairs PAIRS --model MODEL")
    out = Path(args.output)
    _check_output(out)
    baseline = _read_eval(Path(cfg.baseline)) if cfg.baseline else None  # refuse a bad one before sampling
    problems_path = args.problems or str(bundled_gsm8k_test())
    holes = _sample(args, cfg, problems_path, out / "samples")
    return _grade(args, cfg, problems_path, out, baseline) or (1 if holes else 0)


# What eval writes into OUT (its samples go into OUT/samples): a folder holding anything else
# that marks a result (a run, pairs, a model, other Parquet files) is refused.
EVAL_FILES = ("summary.json", "problems.parquet", "pairs_summary.json")


def _check_output(out: Path) -> None:
    from schemas.folders import refuse_other_result

    refuse_other_result(out, "-o", own=EVAL_FILES)


def _sample(args: argparse.Namespace, cfg: EvalConfig, problems: str, samples: Path) -> bool:
    """Draw the samples with `stepdpo generate` itself: same backends, cache, resume, progress.
    True when samples failed after their retries (graded as wrong; generate's line names this
    eval command as the rerun that draws them)."""
    from stepdpo.commands import generate
    from stepdpo.rerun import rerun_command

    argv = [problems, "--generator", args.generator, "-o", str(samples), "-n", str(cfg.n),
            "--temperature", str(cfg.temperature), "--max-new-tokens", str(cfg.max_new_tokens)]
    if cfg.limit:
        argv += ["--limit", str(cfg.limit)]
    if not cfg.cache:
        argv.append("--no-cache")
    for name in PASSTHROUGH:
        value = getattr(cfg, name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    parser = argparse.ArgumentParser(prog="stepdpo eval (generate)")
    generate.configure(parser)
    gen_args = parser.parse_args(argv)
    for key, value in vars(args).items():  # backend options (GeneratorOptions) pass through as parsed
        if hasattr(gen_args, key) and key not in vars(EvalConfig()) and key not in ("output", "problems"):
            setattr(gen_args, key, value)
    gen_args.rerun_as = rerun_command("stepdpo eval", configure, args)  # what finishes the samples: eval
    code = generate.run(gen_args)
    if code:
        manifest = json.loads((samples / "run.json").read_text(encoding="utf-8")) \
            if (samples / "run.json").is_file() else {}
        if not (manifest.get("totals") or {}).get("samples"):
            raise UserError("no sample was drawn; see the generate lines above")
    return bool(code)


def _grade(args: argparse.Namespace, cfg: EvalConfig, problems_path: str, out: Path,
           baseline: dict | None) -> int:
    from labeler.evaluation.grade import grade, summarize
    from labeler.sources.generation.problems import load_problems
    from schemas.atomic import atomic_write_json
    from schemas.evaluation import EVAL_PROBLEMS
    from schemas.tables import RESPONSES, from_rows, read_table, write_table

    problems = load_problems(problems_path, cfg.prompt_field, cfg.answer_field, cfg.id_field, cfg.limit)
    rows = read_table(out / "samples", RESPONSES).to_pylist()
    results = grade(rows, [{"problem_id": p.problem_id, "prompt": p.prompt, "gold_answer": p.gold_answer}
                           for p in problems], cfg.n)
    summary = summarize(results, cfg.n)
    samples_manifest = json.loads((out / "samples" / "run.json").read_text(encoding="utf-8"))
    summary.update(generator=args.generator, generator_fingerprint=samples_manifest.get("generator_fingerprint"),
                   problems_file=problems_path, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                   template=cfg.template)
    if baseline is not None:
        summary["baseline"] = _compare(results, baseline, cfg)
    write_table(from_rows([r.as_row() for r in results], EVAL_PROBLEMS), out / "problems.parquet", EVAL_PROBLEMS)
    atomic_write_json(out / "summary.json", summary)
    _print(summary, out)
    return 0


def _read_eval(folder: Path) -> dict:
    from schemas.evaluation import EVAL_PROBLEMS
    from schemas.tables import read_table

    if not (folder / "problems.parquet").is_file():
        raise UserError(f"--baseline {folder}: not an eval folder (no problems.parquet; run `stepdpo eval` first)")
    table = read_table(folder / "problems.parquet", EVAL_PROBLEMS)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    first = {pid: bool(c[0]) for pid, c in zip(table.column("problem_id").to_pylist(),
                                                table.column("correct").to_pylist(), strict=True)}
    return {"folder": str(folder), "first_correct": first, "summary": summary}


def _compare(results: list, baseline: dict, cfg: EvalConfig) -> dict:
    from labeler.evaluation.metrics import paired_bootstrap

    theirs = baseline["first_correct"]
    shared = [r for r in results if r.problem_id in theirs]
    if not shared:
        raise UserError(f"--baseline {baseline['folder']}: no problem in common with this evaluation")
    ours = [float(r.correct[0]) for r in shared]
    other = [float(theirs[r.problem_id]) for r in shared]
    out = paired_bootstrap(ours, other, resamples=cfg.resamples)
    out.update(folder=baseline["folder"], generator=baseline["summary"].get("generator"),
               accuracy=sum(ours) / len(ours), baseline_accuracy=sum(other) / len(other),
               only_this_better=sum(a > b for a, b in zip(ours, other, strict=True)),
               only_baseline_better=sum(b > a for a, b in zip(ours, other, strict=True)))
    return out


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}%"


def _print(summary: dict, out: Path) -> None:
    lines = [f"eval: {summary['problems']} problems, {summary['samples_per_problem']} sample(s) each, "
             f"generator {summary['generator']}",
             f"  accuracy (first sample{', greedy' if summary['temperature'] == 0 else ''}): "
             f"{_pct(summary['accuracy'])}"]
    for k, v in (summary.get("pass_at_k") or {}).items():
        lines.append(f"  pass@{k:<4} {_pct(v)}")
    for k, v in (summary.get("maj_at_k") or {}).items():
        lines.append(f"  maj@{k:<5} {_pct(v)}")
    lines.append(f"  no answer: {summary['no_answer_samples']} sample(s) (cut off at the token limit: "
                 f"{summary['cut_off_samples']}; never written: {summary['missing_samples']})")
    b = summary.get("baseline")
    if b:
        lines.append(f"  vs {b['folder']}: {_pct(b['accuracy'])} vs {_pct(b['baseline_accuracy'])} on "
                     f"{b['problems']} shared problems; difference {100 * b['difference']:+.1f} points, "
                     f"{int(100 * b['confidence'])}% CI [{100 * b['low']:+.1f}, {100 * b['high']:+.1f}] "
                     f"(paired bootstrap, {b['resamples']} resamples); only this right on "
                     f"{b['only_this_better']}, only the baseline on {b['only_baseline_better']}")
    lines.append(f"  wrote {out / 'problems.parquet'} and {out / 'summary.json'}")
    print("\n".join(lines))
    if summary["missing_samples"]:
        print(f"eval: {summary['missing_samples']} sample(s) were never written (empty answers, or requests "
              "that failed); they count as wrong. Rerun the same command to retry failed requests.",
              file=sys.stderr)


# -- implicit rewards on pairs -------------------------------------------------------------------

def _trained_settings(model: str) -> dict:
    path = Path(model) / "stepwise_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def _base_model(settings: dict) -> str | None:
    prov = settings.get("provenance") or {}
    for value in (prov.get("base_model"), settings.get("base_model"), settings.get("model_name_or_path"),
                  settings.get("model")):
        if isinstance(value, str) and value:
            return value
    return None


def _run_pairs(args: argparse.Namespace, pcfg: PairsEvalConfig) -> int:
    # Implicit rewards are log-prob ratios of local weights: a sampling backend cannot give them,
    # so the options of the problems mode are refused rather than silently ignored.
    if args.generator:
        model = args.generator[3:] if args.generator.startswith("hf:") else "PATH"
        raise UserError(f"--generator samples problems and does not go with --pairs, whose policy is --model "
                        f"(implicit rewards need its weights): use --pairs {pcfg.pairs} --model {model}")
    if args.problems:
        raise UserError(f"PROBLEMS ({args.problems}) and --pairs are two modes: evaluate problems with "
                        "--generator, or score pairs with --pairs --model")
    if dataclass_from_args(EvalConfig, args).baseline:
        raise UserError("--baseline compares two problem evaluations; it does not go with --pairs")
    if not pcfg.model:
        raise UserError("--pairs needs --model (the trained policy)")
    if pcfg.pairs_limit is not None and pcfg.pairs_limit < 1:
        raise UserError("--pairs-limit must be at least 1")
    if pcfg.output_tokens < 1:
        raise UserError("--output-tokens must be at least 1")
    from schemas.tables import PAIRS, read_table
    from trainer.data import pair_files
    from trainer.implicit_rewards import PairSettings, greedy_outputs, score_pairs
    from trainer.precompute import load_reference

    _check_output(Path(args.output))
    pair_files(pcfg.pairs)  # a pairs folder is read only when its manifest vouches for it, as by `train`
    rows = read_table(pcfg.pairs, PAIRS).to_pylist()[: pcfg.pairs_limit]
    if not rows:
        raise UserError(f"{pcfg.pairs}: no pairs")
    trained = _trained_settings(pcfg.model)
    ref = pcfg.ref_model or _base_model(trained)
    if not ref:
        raise UserError(f"no reference model: {pcfg.model} has no stepwise_config.json naming its base model; "
                        "pass --ref-model")
    beta = pcfg.beta if pcfg.beta is not None else float(trained.get("beta") or 0.1)
    if beta <= 0:
        raise UserError("--beta must be positive")
    max_length = trained.get("max_length", 1024)
    settings = PairSettings(beta=beta, sep=trained.get("step_separator") or "\n",
                            add_eos=trained.get("add_eos") or "auto", max_length=max_length or None,
                            truncation_mode=trained.get("truncation_mode") or "keep_start",
                            chat_template=bool(trained.get("chat_template")))
    policy, tokenizer = load_reference(pcfg.model)
    outputs = greedy_outputs(policy, tokenizer, rows, settings, pcfg.output_tokens) if pcfg.generate_outputs \
        else None
    reference, _ = load_reference(ref)
    results = score_pairs(policy, reference, tokenizer, rows, settings, outputs=outputs)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_pairs_eval(out, results)
    share = sum(r["correct"] for r in results) / len(results)
    summary = {"pairs": len(results), "preferred_correctly": share, "model": pcfg.model, "reference": ref,
               "beta": beta, "mean_margin": sum(r["margin"] for r in results) / len(results),
               "ties": sum(r["preferred"] == "tie" for r in results), "pairs_folder": pcfg.pairs}
    from schemas.atomic import atomic_write_json

    atomic_write_json(out / "pairs_summary.json", summary)
    print(f"eval --pairs: {len(results)} pairs, preferred correctly {_pct(share)} (model {pcfg.model} vs reference "
          f"{ref}, beta {beta}); mean margin {summary['mean_margin']:+.4f}; wrote {out / 'pairs_eval.jsonl'} and "
          f"{out / 'pairs_eval.csv'}")
    return 0


def _write_pairs_eval(out: Path, results: list[dict]) -> None:
    from schemas.atomic import atomic_open

    with atomic_open(out / "pairs_eval.jsonl", "w") as fh:
        for r in results:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    columns = ["pair_id", "prompt", "model_output", "chosen_score", "rejected_score", "preferred", "correct",
               "margin"]
    with atomic_open(out / "pairs_eval.csv", "w") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
