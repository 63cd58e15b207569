"""prm: single-pass batched scores equal the per-prefix computation, for all three styles."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from labeler.judges import create_judge  # noqa: E402
from labeler.judges.base import Item  # noqa: E402
from labeler.judges.config import JudgeConfig  # noqa: E402
from labeler.judges.prm import QWEN_SYSTEM, render  # noqa: E402
from schemas.errors import UserError  # noqa: E402
from tests.prm_models import build_prm, gsm8k_sample  # noqa: E402

STYLES = ("qwen", "shepherd", "yesno")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("prms")
    return {style: build_prm(root / style, style) for style in STYLES}


@pytest.fixture(scope="module")
def items():
    rows = gsm8k_sample(8)
    return [Item(f"r{i}", q, steps) for i, (q, steps) in enumerate(rows)]


def make(models, style, **kw):
    cfg = JudgeConfig(style=style, device="cpu", dtype="float32", **kw)
    return create_judge(f"prm:{models[style]}", cfg)


def judge_all(judge, items):
    return asyncio.run(judge.judge(items))


def naive_scores(judge, item: Item) -> list[float]:
    """The seeds' way, written from the model cards: one forward pass per step prefix, read at
    the last separator of that prefix."""
    tok, model, out = judge.tokenizer, judge.model, []
    for k in range(1, len(item.steps) + 1):
        steps = item.steps[:k]
        with torch.no_grad():
            if judge.style == "qwen":
                messages = [{"role": "system", "content": QWEN_SYSTEM},
                            {"role": "user", "content": item.prompt},
                            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
                ids = torch.tensor([tok.encode(text)])
                logits = model(input_ids=ids).logits[0]
                sep_id = tok.encode("<extra_0>", add_special_tokens=False)[0]
                where = (ids[0] == sep_id).nonzero().flatten()
                assert len(where) == k
                out.append(torch.softmax(logits[where[-1]], -1)[1].item())
                continue
            if judge.style == "shepherd":
                text = item.prompt + " " + "\n".join(s + " ки" for s in steps)
            else:
                text = item.prompt + "\n" + "\n".join(s + judge.sep for s in steps)
            ids = torch.tensor([tok.encode(text)])
            logits = model(input_ids=ids).logits[0, -1, judge.candidates]
            out.append(torch.softmax(logits, -1)[0].item())
    return out


@pytest.mark.parametrize("style", STYLES)
def test_single_pass_equals_per_prefix(models, items, style):
    judge = make(models, style, prm_batch_size=3)
    verdicts = judge_all(judge, items)
    worst = 0.0
    for item, verdict in zip(items, verdicts, strict=True):
        assert verdict.error is None
        expected = naive_scores(judge, item)
        assert len(verdict.scores) == len(item.steps)
        worst = max(worst, max(abs(a - b) for a, b in zip(verdict.scores, expected, strict=True)))
    assert worst <= 1e-4
    flat = [s for v in verdicts for s in v.scores]
    assert all(0.0 <= s <= 1.0 for s in flat)
    assert max(flat) - min(flat) > 1e-3  # a random model still varies: the test can fail


def test_candidate_tokens(models):
    shepherd, yesno = make(models, "shepherd"), make(models, "yesno")
    assert [shepherd.tokenizer.decode([i]).strip() for i in shepherd.candidates] == ["+", "-"]
    assert [yesno.tokenizer.decode([i]).strip() for i in yesno.candidates] == ["Yes", "No"]


@pytest.mark.parametrize("style", ["qwen", "shepherd"])
def test_padding_side_and_batch_composition(models, items, style):
    judge = make(models, style, prm_batch_size=8)
    alone = [judge_all(judge, [it])[0].scores for it in items]
    judge.padding_side = "left"
    together_left = [v.scores for v in judge_all(judge, items)]
    judge.padding_side = "right"
    mixed = [v.scores for v in judge_all(judge, list(reversed(items)))][::-1]
    for a, b, c in zip(alone, together_left, mixed, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5
        assert max(abs(x - y) for x, y in zip(a, c, strict=True)) <= 1e-5


def test_over_long_response_is_scored_up_to_the_limit(models, items):
    full = make(models, "shepherd")
    item = max(items, key=lambda it: len(it.steps))
    enc = full.encode(item)
    limit = enc.positions[1] + 1  # room for exactly two steps
    short = make(models, "shepherd", max_length=limit)
    (ref,) = judge_all(full, [item])
    (cut,) = judge_all(short, [item])
    assert cut.scores[:2] == pytest.approx(ref.scores[:2], abs=1e-5)
    assert cut.scores[2:] == [None] * (len(item.steps) - 2)
    assert cut.error is None
    raw = json.loads(cut.raw)
    assert raw["truncated"] == (f"response is {enc.total_tokens} tokens, over the limit of {limit}; "
                                f"steps 3..{len(item.steps)} not scored")
    tiny = make(models, "shepherd", max_length=enc.positions[0])
    (none,) = judge_all(tiny, [item])
    assert none.scores == [None] * len(item.steps)
    assert none.error.startswith(f"response is {enc.total_tokens} tokens, over the limit of")


def test_qwen_layout_follows_the_model_card(models):
    judge = make(models, "qwen")
    layout = render("qwen", judge.tokenizer, "What is 2+2?", ["2+2=4", "The answer is 4"], "<extra_0>")
    assert QWEN_SYSTEM in layout.text
    assert "<|im_start|>assistant\n2+2=4<extra_0>The answer is 4<extra_0><|im_end|>" in layout.text
    assert [layout.text[e - 8: e + 1] for e in layout.ends] == ["<extra_0>", "<extra_0>"]


def test_bad_options_are_user_errors(models, tmp_path):
    with pytest.raises(UserError, match="is not one token"):
        make(models, "qwen", step_separator="\n\n<step>")
    with pytest.raises(UserError, match="cannot load PRM"):
        create_judge(f"prm:{tmp_path / 'missing'}", JudgeConfig(style="shepherd", device="cpu"))
    with pytest.raises(UserError, match="prm needs a model"):
        create_judge("prm:", JudgeConfig())


def test_fingerprint_tracks_what_changes_scores(models):
    a = make(models, "shepherd")
    assert a.name == f"prm:{models['shepherd']}" and a.price_model is None
    assert a.fingerprint() == make(models, "shepherd", prm_batch_size=2).fingerprint()
    assert a.fingerprint() != make(models, "shepherd", step_separator=" <tag>").fingerprint()
    assert a.fingerprint() != make(models, "shepherd", max_length=64).fingerprint()


def test_importing_the_judge_module_does_not_import_torch():
    code = "import sys, labeler.judges.prm, labeler.judges.calc; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_stepdpo_label_with_prm_end_to_end(models, tmp_path, gsm8k_sample, capsys):
    from schemas.tables import STEP_SCORES, read_table
    from stepdpo.cli import main

    responses = tmp_path / "responses.parquet"
    assert main(["ingest", "gsm8k", str(gsm8k_sample), "-o", str(responses)]) == 0
    run = tmp_path / "run"
    argv = ["label", str(responses), "--judge", f"prm:{models['shepherd']}", "--style", "shepherd",
            "--device", "cpu", "--prm-batch-size", "4", "--limit", "8", "-o", str(run),
            "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = read_table(run, STEP_SCORES).to_pylist()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    judge = make(models, "shepherd")
    direct = judge.score_items([Item(r["response_id"], r["prompt"], r["steps"]) for r in rows])
    for row, verdict in zip(rows, direct, strict=True):
        assert row["scores"] == pytest.approx(verdict.scores, abs=1e-5)
        assert row["judge"] == judge.name and row["judge_fingerprint"] == judge.fingerprint()
        assert json.loads(row["raw"])["tokens"] == row["input_tokens"] > 0


def test_fingerprint_changes_when_local_weights_are_replaced(tmp_path):
    path = build_prm(tmp_path / "m", "shepherd", seed=0)
    cfg = JudgeConfig(style="shepherd", device="cpu")
    before = create_judge(f"prm:{path}", cfg).fingerprint()
    assert create_judge(f"prm:{path}", cfg).fingerprint() == before
    import time

    time.sleep(0.01)
    build_prm(tmp_path / "m", "shepherd", seed=1)  # retrained into the same folder
    assert create_judge(f"prm:{path}", cfg).fingerprint() != before


def test_throughput_bench_runs_and_checks_equality(tmp_path, capsys):
    from bench.prm_throughput import main as bench_main

    out = tmp_path / "prm.json"
    threads = torch.get_num_threads()
    try:
        assert bench_main(["--style", "shepherd", "--n", "4", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert result["scores_equal"] and run["max_abs_diff"] <= 1e-4
    assert run["forward_passes"]["per_prefix"] == result["steps"] > run["forward_passes"]["single_pass"]
