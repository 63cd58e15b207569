"""Sample solutions (or continuations of labeled ones) from a policy into a responses folder.

Writes RUN_DIR/part-NNNNN.parquet (`responses` rows: steps split from the text, final answer
extracted, gold_answer carried; meta records the generator, sampling parameters, sample index,
finish reason and the problem's reference solution as `gold_solution`) and RUN_DIR/run.json.
The folder is an input of `stepdpo label` as it stands. Rerunning the same command resumes:
samples already written are skipped, samples that arrived before a crash come from the cache
for free, and a larger -n adds only the new samples.

Backends: hf:PATH_OR_ID (local transformers, batched, CUDA + bf16 when present),
openai-compatible:MODEL@URL (vLLM, SGLang, llama.cpp; raw completions for text templates),
openai:MODEL and anthropic:MODEL (chat; keys from OPENAI_API_KEY / ANTHROPIC_API_KEY).

Templates: step-dpo (Step-DPO's prompt; the answer starts "Let's think step by step.\\nStep 1: "),
chat (the model's chat template / chat API, asking for 'Step k:' lines and a \\boxed{} answer),
plain (the bare problem), or a JSON file with 'user' (containing {problem}), 'system', 'chat',
'marker'.

--continue-from RUN_DIR --at first-error: for each solution of a labeled run whose first error
(first step scored below --threshold) is step k, sample -n continuations of its correct prefix
(steps before k, kept in each new row); each row records the id of the row it continues. The
run must come from a STEP-LEVEL judge (an API judge, e.g. with a reference-solution rubric as
Step-DPO's GPT-4 locator; prm:; gsm8k-calc). An answer-match run knows only the outcome and is
refused. Label the continuations with answer-match, then `stepdpo pairs --strategy first-error`
pairs each wrong step with a correct continuation's step (Step-DPO's rectify pairs).

--flaw (the LLM counterpart of `perturb`): each correct solution of INPUT (a responses file) is
rewritten by the model with one plausible mistake at step k (--flaw-step, or drawn per solution)
carried to the end; steps before k are kept verbatim and reference_scores are known.

--batch (openai: and anthropic:): the same requests through the provider's batch API at half
price (results within 24h): one batch line per (problem, sample) with the online body and seed,
so batch and online rows of a task are interchangeable (same cache key; meta adds batch_id).
Batch ids are written to RUN_DIR/batches/ before and at submit: a killed run's rerun attaches
to its batches instead of paying twice, a finished job's rerun submits nothing, and a sample
that failed inside a batch is drawn again by the next run (--batch-retry batch|online).
`stepdpo batches RUN_DIR` shows or cancels them; --dry-run shows online vs batch price.

exit codes: 0 every sample asked for is in the folder (an empty answer counts: it is the model's),
or --batch batches left running; 1 samples failed after their retries (one line names the exact
rerun that draws only them; run.json keeps it as `rerun`, credentials in a URL removed), or no
sample at all; 2 a user error or a run stopped by a fatal error; 130 stopped by a signal.

examples:
  stepdpo generate data/gsm8k/test_sample.jsonl --generator hf:runs/demo/tiny-model -o work/gen -n 4 --max-new-tokens 64   # model from `stepdpo demo`
  stepdpo generate problems.jsonl --generator openai-compatible:Qwen/Qwen2-7B-Instruct@http://gpu:8000/v1 -o work/gen -n 8 --temperature 0.8 --top-p 0.95
  stepdpo generate problems.jsonl --generator openai:gpt-4o-mini --template chat -o work/gen-4o --dry-run
  stepdpo label work/gen --judge openai:gpt-4o -o work/located
  stepdpo generate --continue-from work/located --at first-error -n 8 --generator openai-compatible:Qwen/Qwen2-7B-Instruct@http://gpu:8000/v1 -o work/cont
  stepdpo label work/cont --judge answer-match -o work/cont-checked
  stepdpo pairs work/located work/cont-checked --strategy first-error -o work/pairs
  stepdpo generate work/responses.parquet --flaw --generator openai:gpt-4o-mini -o work/flawed -n 2
  stepdpo generate problems.jsonl --generator openai:gpt-4o-mini --template chat -o work/gen-4o -n 8 --batch
  stepdpo batches work/gen-4o
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field

from schemas.errors import UserError
from stepdpo.options import (
    add_allow_incomplete,
    add_dataclass_arguments,
    dataclass_from_args,
    require_finished_inputs,
    stop_after_failures_help,
)
from stepdpo.startup import resume_gc


@dataclass
class GenerateConfig:
    n: int = field(default=1, metadata={"help": "samples per problem (or per wrong solution with "
                                                 "--continue-from)", "flag": "-n", "metavar": "K"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (0: greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=1024, metadata={"help": "cap on generated tokens per sample "
                                                                "(a sample cut there has finish_reason=length)"})
    seed: int = field(default=0, metadata={"help": "base seed; each sample's seed derives from it and the "
                                                   "sample's identity"})
    template: str = field(default="step-dpo", metadata={"help": "prompt template: step-dpo, chat, plain, or a "
                                                                "JSON file", "metavar": "NAME|FILE"})
    split: str = field(default="step-markers", metadata={"help": "how the text becomes steps: lines, "
                                                                 "blank-lines, step-markers, regex:PATTERN"})
    continue_from: str | None = field(default=None, metadata={"help": "labeled run whose wrong solutions are "
                                                                      "continued from before their first error",
                                                              "metavar": "RUN_DIR"})
    at: str = field(default="first-error", metadata={"help": "with --continue-from: where to continue from",
                                                     "choices": ["first-error"]})
    threshold: float = field(default=0.5, metadata={"help": "with --continue-from: a step scored below this "
                                                            "is an error"})
    flaw: bool = field(default=False, metadata={"help": "ask the model to rewrite each correct solution of INPUT "
                                                        "(a responses file) with one mistake at a step; rows carry "
                                                        "known reference_scores (1 before, 0 at it, null after)"})
    flaw_step: int | None = field(default=None, metadata={"help": "with --flaw: the step to corrupt (1-based; "
                                                                  "default: one drawn per solution from --seed)",
                                                          "metavar": "K"})
    prompt_field: str | None = field(default=None, metadata={"help": "problems file: field of the problem "
                                                                     "text (default: prompt|problem|question)"})
    answer_field: str | None = field(default=None, metadata={"help": "problems file: field of the gold answer "
                                                                     "(default: gold_answer|answer|solution)"})
    id_field: str | None = field(default=None, metadata={"help": "problems file: field of the problem id "
                                                                 "(default: problem_id|id|unique_id, else a hash)"})
    limit: int | None = field(default=None, metadata={"help": "only the first N problems", "metavar": "N"})
    concurrency: int = field(default=32, metadata={"help": "requests (or hf batches) in flight at once"})
    rpm: float | None = field(default=None, metadata={"help": "client-side requests/min limit"})
    tpm: float | None = field(default=None, metadata={"help": "client-side tokens/min limit"})
    max_attempts: int = field(default=6, metadata={"help": "tries per request; a sample still failing is "
                                                           "left out and retried by the next run"})
    backoff: float = field(default=1.0, metadata={"help": "first retry wait in seconds (doubles, plus jitter; "
                                                          "a server's retry-after wins)"})
    max_backoff: float = field(default=60.0, metadata={"help": "longest single retry wait in seconds"})
    stop_after_failures: int = field(
        default=8, metadata={"help": stop_after_failures_help("the samples drawn"), "metavar": "N"})
    shard_size: int = field(default=200, metadata={"help": "samples per output shard"})
    cache: bool = field(default=True, metadata={"help": "reuse and store samples in the on-disk cache"})
    cache_dir: str | None = field(default=None, metadata={"help": "generation cache folder (default: "
                                                                  "$STEPDPO_CACHE_DIR/generate or "
                                                                  "~/.cache/stepdpo/generate)", "metavar": "DIR"})
    dry_run: bool = field(default=False, metadata={"help": "print samples, tokens and the cost bound of what is "
                                                           "not yet done; send nothing, write nothing"})
    prices: str | None = field(default=None, metadata={"help": "price table override (as `label --prices`)",
                                                       "metavar": "FILE"})
    progress: str = field(default="auto", metadata={"help": "progress display", "choices": ["auto", "rich", "log",
                                                                                            "none"]})
    log_interval: float = field(default=10.0, metadata={"help": "seconds between progress log lines"})


def configure(parser: argparse.ArgumentParser) -> None:
    from labeler.sources.generation.registry import GeneratorOptions, generator_help

    parser.add_argument("input", nargs="?", metavar="INPUT",
                        help="problems: a responses file/folder, or JSONL/JSON/Parquet with a prompt and a gold "
                             "answer (not needed with --continue-from)")
    parser.add_argument("--generator", required=True, metavar="SPEC", help=f"the policy; {generator_help()}")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR",
                        help="folder for responses shards and run.json")
    add_dataclass_arguments(parser, GenerateConfig, "generation")
    add_dataclass_arguments(parser, GeneratorOptions, "backend")
    from labeler.engine.ray_options import RayOptions  # no Ray, no engine: --help stays light

    parser.add_argument("--engine", default="local", choices=["local", "ray"],
                        help="where an hf: model runs: local (this process) or ray (an actor pool on a Ray "
                             "cluster, one model per worker; needs the `ray` extra). Output, cache and resume "
                             "are the same either way (default: local)")
    add_dataclass_arguments(parser, RayOptions, "Ray (--engine ray)")
    add_allow_incomplete(parser)
    from labeler.batch.options import BatchOptions  # provider batch mode: labeler/batch/generate.py

    parser.add_argument("--batch", action="store_true",
                        help="openai: and anthropic: generators: send the samples through the provider's batch "
                             "API (half price, results within 24h); one request per (problem, sample), the same "
                             "bodies, seeds and rows as online; batch ids are kept in RUN_DIR/batches/ and a rerun "
                             "attaches to them (`stepdpo batches RUN_DIR` shows them)")
    add_dataclass_arguments(parser, BatchOptions, "provider batch mode (--batch)")


def _check(cfg: GenerateConfig, args: argparse.Namespace) -> None:
    if cfg.n < 1:
        raise UserError("-n must be at least 1")
    if cfg.temperature < 0:
        raise UserError("--temperature must be >= 0")
    if not 0 < cfg.top_p <= 1:
        raise UserError("--top-p must be in (0, 1]")
    if cfg.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if cfg.n > 1 and cfg.temperature == 0 and not (cfg.flaw and cfg.flaw_step is None):  # as eval refuses it
        raise UserError(f"-n {cfg.n} at --temperature 0 draws {cfg.n} identical greedy solutions; set --temperature "
                        "(Step-DPO samples at 0.8)")
    if cfg.concurrency < 1 or cfg.max_attempts < 1 or cfg.shard_size < 1:
        raise UserError("--concurrency, --max-attempts and --shard-size must be at least 1")
    if cfg.stop_after_failures < 0:
        raise UserError("--stop-after-failures must be 0 (off) or more")
    if cfg.limit is not None and cfg.limit < 1:
        raise UserError("--limit must be at least 1")
    if not 0 <= cfg.threshold <= 1:
        raise UserError("--threshold must be in [0, 1]")
    for name in ("rpm", "tpm"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be positive")
    if cfg.flaw_step is not None and cfg.flaw_step < 1:
        raise UserError("--flaw-step must be at least 1")
    # As `label` checks them: a --timeout of 0 would fail every request and stop the run only
    # after its first samples all failed, with a folder left behind.
    if cfg.backoff < 0 or cfg.max_backoff < 0:
        raise UserError("--backoff and --max-backoff must not be negative")
    if not cfg.log_interval > 0:
        raise UserError("--log-interval must be positive")
    timeout = getattr(args, "timeout", None)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    if getattr(args, "batch_size", 1) < 1:
        raise UserError("--batch-size must be at least 1")
    if cfg.flaw and cfg.continue_from:
        raise UserError("--flaw and --continue-from are different jobs; give one")
    if cfg.continue_from and args.input:
        raise UserError("give INPUT or --continue-from RUN_DIR, not both")
    if not cfg.continue_from and not args.input:
        raise UserError("INPUT is required (a problems or responses file), or --continue-from RUN_DIR")


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from labeler.engine.pricing import load_prices, price_for
    from labeler.engine.retry import RetryPolicy
    from labeler.sources.generation.problems import load_problems
    from labeler.sources.generation.prompts import load_template
    from labeler.sources.generation.registry import GeneratorOptions, create_generator
    from labeler.sources.generation.runner import GenConfig, GenerationEngine, estimate, run_engine
    from labeler.sources.generation.store import GenerationCache, GenerationDir
    from labeler.sources.generation.tasks import continuation_tasks, flaw_tasks, sample_tasks
    from labeler.sources.splitters import get_splitter
    from schemas.ids import sha256_hex

    cfg = dataclass_from_args(GenerateConfig, args)
    _check(cfg, args)
    from labeler.sources.generation.base import Sampling

    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        seed=cfg.seed)
    template = load_template(cfg.template)
    try:
        splitter = get_splitter(cfg.split)
    except ValueError as exc:
        raise UserError(f"--split {cfg.split}: {exc}") from None
    separator = splitter.join(["a", "b"])[1:-1] or "\n"
    counts: Counter = Counter()
    # Inputs are read (and refused) before a model is loaded or a key is needed.
    require_finished_inputs([args.input, cfg.continue_from], args)
    if cfg.flaw:
        tasks = flaw_tasks(args.input, cfg.n, sampling, cfg.flaw_step, counts, cfg.limit)
    elif cfg.continue_from:
        tasks = continuation_tasks(cfg.continue_from, template, cfg.n, sampling, cfg.threshold, separator, counts)
    else:
        problems = load_problems(args.input, cfg.prompt_field, cfg.answer_field, cfg.id_field, cfg.limit)
        counts["problems"] = len(problems)
        tasks = sample_tasks(problems, template, cfg.n, sampling, separator)
    options = dataclass_from_args(GeneratorOptions, args)
    engine_kind = getattr(args, "engine", "local")
    batch = getattr(args, "batch", False)
    if batch:  # refused before a model loads or a key is needed
        from labeler.batch.collect import BatchOptions
        from labeler.batch.generate import check_batch_options, refuse_spec

        refuse_spec(args.generator, engine_kind)
        check_batch_options(dataclass_from_args(BatchOptions, args))
    if engine_kind == "ray":
        from labeler.engine.ray_engine import RayOptions, check_options
        from labeler.sources.generation.ray_generation import remote_generator

        ray_options = dataclass_from_args(RayOptions, args)
        check_options(ray_options)
        generator = remote_generator(args.generator, options, ray_options)  # the model loads on a worker
    else:
        generator = create_generator(args.generator, options)
    resume_gc()  # start-up over: the generator's SDK (or model) is loaded (stepdpo.startup)
    if getattr(generator, "chat_only", False) and not template.chat and not cfg.flaw:
        raise UserError(f"{generator.name} serves chat models only: use --template chat (the Step-DPO "
                        "text template needs a raw-completions server: openai-compatible:MODEL@URL or hf:)")
    prices = load_prices(cfg.prices)
    identity_parts = {"generator": generator.fingerprint(), "template": template.as_dict(),
                      "sampling": sampling.as_dict(), "split": cfg.split,
                      "mode": "flaw" if cfg.flaw else "continue" if cfg.continue_from else "sample",
                      "threshold": cfg.threshold}
    identity = sha256_hex(identity_parts)[:16]
    described = {"template": template.name, "generator": generator.name}
    out = GenerationDir(args.output)
    if cfg.dry_run:
        done = out.done_ids() if out.path.is_dir() else set()
        todo = [t for t in tasks if t.generation_id not in done]
        est = estimate(todo, generator, sampling, price_for(generator.price_model, prices))
        est["already_done"] = len(tasks) - len(todo)
        if generator.batch_provider is not None:  # online vs --batch price
            from labeler.batch.registry import transport_class

            discount = transport_class(generator.batch_provider).discount
            est.update(online_cost_usd_max=est["cost_usd_max"], batch_discount=discount,
                       batch_cost_usd_max=None if est["cost_usd_max"] is None
                       else round(est["cost_usd_max"] * discount, 4))
        print(json.dumps(est, indent=2))
        bound = "unknown (no price for this model; --prices FILE)" if est["cost_usd_max"] is None \
            else f"${est['cost_usd_max']:.4f}"
        print(f"dry run: {est['samples']} samples to draw ({est['already_done']} already done), "
              f"~{est['input_tokens']} input tokens, ≤ {est['output_tokens_max']} output tokens, cost ≤ {bound}",
              file=sys.stderr)
        if est.get("batch_cost_usd_max") is not None:
            print(f"dry run: online ≤ ${est['online_cost_usd_max']:.4f}, with --batch ≤ "
                  f"${est['batch_cost_usd_max']:.4f} ({est['batch_discount']:g} of the online price)", file=sys.stderr)
        return 0
    if not tasks:
        if cfg.flaw:
            why = ", ".join(f"{n} {what}" for what, n in (("not correct", counts["skipped_not_correct"]),
                            (f"shorter than --flaw-step {cfg.flaw_step}", counts["skipped_too_short"])) if n)
            need = f" of at least {cfg.flaw_step} steps (--flaw-step)" if cfg.flaw_step is not None else ""
            print(f"generate: nothing to rewrite in {args.input}: --flaw rewrites correct solutions (final answer "
                  f"= gold answer){need}; skipped: {why or 'none, the file is empty'}", file=sys.stderr)
        else:
            print("generate: nothing to sample (no wrong solution in the run)" if cfg.continue_from
                  else "generate: no problems", file=sys.stderr)
        return 0
    engine_cfg = GenConfig(concurrency=cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm,
                           retry=RetryPolicy(max_attempts=cfg.max_attempts, initial=cfg.backoff,
                                             max_wait=cfg.max_backoff),
                           shard_size=cfg.shard_size, progress=cfg.progress, log_interval=cfg.log_interval,
                           stop_after_failures=cfg.stop_after_failures)
    cache = GenerationCache(cfg.cache_dir) if cfg.cache else None
    # Names every part of the identity, so a refused folder's message shows what differs.
    from stepdpo.rerun import rerun_command

    what = (f"{generator.name} with template {template.name}, temperature {sampling.temperature}, top-p "
            f"{sampling.top_p}, max {sampling.max_new_tokens} new tokens, seed {sampling.seed}, split {cfg.split}"
            + (f", continuing below {cfg.threshold}" if cfg.continue_from else ""))
    info = {"identity": identity, "described": what,
            "generator": generator.name, "generator_fingerprint": generator.fingerprint(),
            "generator_parts": generator.fingerprint_parts(), "template": template.as_dict(),
            "sampling": sampling.as_dict(), "n": cfg.n, "input": args.input, "continue_from": cfg.continue_from,
            "config": dataclasses.asdict(cfg), "input_counts": dict(counts),
            # credentials in a URL removed; `eval` names itself (it draws its samples through here)
            "rerun": getattr(args, "rerun_as", None) or rerun_command("stepdpo generate", configure, args)}
    try:
        with out.locked():
            out.check_identity(identity, info["described"])
            if engine_kind == "ray":
                from labeler.sources.generation.ray_generation import RayGenerationEngine

                engine = RayGenerationEngine(generator, out, engine_cfg, sampling, splitter, cache, prices, described,
                                             spec=args.generator, generator_options=options,
                                             ray_options=ray_options)
            else:
                engine = GenerationEngine(generator, out, engine_cfg, sampling, splitter, cache, prices, described)
            if batch:
                return _generate_batch(args, engine, tasks, info)
            manifest = run_engine(engine, tasks, info)
    finally:
        if cache is not None:
            cache.close()
    s, totals, this = engine.stats, manifest["totals"], manifest["runs"][-1]
    print(f"generate: {this['tasks'] - this['missing']} of {this['tasks']} samples in {args.output} "
          f"({totals['samples']} in the folder); this run: "
          f"{s.ok} drawn ({s.cache_hits} from cache), {s.skipped} already done, {s.requests} requests, "
          f"{s.input_tokens} tokens in / {s.output_tokens} out, cost {s.cost_text()}", file=sys.stderr)
    if this["empty"]:
        print(_empty_note(this["empty"]), file=sys.stderr)
    if _repeats_note(totals, args.output):
        print(_repeats_note(totals, args.output), file=sys.stderr)
    return _holes("generate", this, out.manifest_path, info["rerun"]) or (0 if totals["samples"] else 1)


def _repeats_note(totals: dict, output: str) -> str:
    """One line when samples of the folder repeat one another word for word (a policy at a low
    temperature, or continuations of one prefix): such samples are one solution, one
    response_id, and `label` writes one row for them."""
    samples, distinct = totals["samples"], totals.get("distinct_solutions", totals["samples"])
    if distinct >= samples:
        return ""
    return (f"generate: note: the {samples} samples in {output} are {distinct} distinct solutions ({samples - distinct} "
            "repeat another sample of the same problem word for word, prefix included, and share its response_id); "
            f"`stepdpo label` labels each solution once: {distinct} rows")


def _empty_note(empty: int) -> str:
    # An empty answer is the model's (cached like any answer, so a rerun gets it again): no hole.
    return (f"generate: {empty} sample(s) came back with no step (an empty answer, cached: a rerun draws them "
            "again only with another --seed or template)")


def _holes(command: str, this: dict, manifest, rerun: str, how: str = "after their retries", then: str = "") -> int:
    """Exit code of a finished run: 1, with the one line naming the rerun, when samples failed
    after their retries (not written: the rerun draws exactly those); 0 when every sample asked
    for is in the folder (an empty answer counts as drawn)."""
    if not this["failed"]:
        return 0
    from stepdpo.rerun import holes_line

    first = f"; first: {next(iter(this['failures']))}" if this.get("failures") else ""
    print(holes_line(command, this["failed"], this["tasks"], "samples", f"failures in {manifest}{first}{then}",
                     rerun, how), file=sys.stderr)
    return 1


def _generate_batch(args: argparse.Namespace, engine, tasks: list, info: dict) -> int:
    """``stepdpo generate ... --batch`` once the folder is locked and the engine built."""
    from labeler.batch.collect import BatchOptions
    from labeler.batch.generate import run_batch_generate

    options = dataclass_from_args(BatchOptions, args)
    manifest = run_batch_generate(engine, tasks, info, options)
    from stepdpo.batch_summary import batch_lines, online_text

    totals, this = manifest["totals"], manifest["runs"][-1]
    o = this.get("online_retry") if this["retried_online"] else None
    online = f"drew {o['samples']} sample(s) that failed in a batch online first: " \
        f"{online_text(o['requests'], o['cost_usd'])}" if o else ""
    # this run's cost_usd includes the online retry's: the summary splits it
    for line in batch_lines("generate --batch", f"{this['tasks'] - this['missing']} of {this['tasks']} samples in "
                            f"{args.output} ({totals['samples']} in the folder)", this, args.output,
                            skipped=this["skipped"], drawn=f"{this['ok']} drawn in batches, ",
                            online_cost=(o or {}).get("cost_usd"), online=online):
        print(line, file=sys.stderr)
    if this["batches_pending"]:
        return 0  # not a hole: asked for (--no-batch-wait, --batch-max-wait); run.json says pending
    if this["empty"]:
        print(_empty_note(this["empty"]), file=sys.stderr)
    if _repeats_note(totals, args.output):
        print(_repeats_note(totals, args.output), file=sys.stderr)
    then = "; the rerun draws them online" if options.batch_retry == "online" else "; the rerun draws them in a new batch"
    return _holes("generate --batch", this, engine.out.manifest_path, info["rerun"], "inside a batch", then) \
        or (0 if totals["samples"] else 1)
