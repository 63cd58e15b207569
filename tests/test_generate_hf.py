"""`hf:` backend on a tiny offline model: it generates, batched left-padded greedy decoding
equals one-prompt-at-a-time decoding, and a rerun resumes without generating anything twice."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from labeler.sources.generation.base import GenRequest, Sampling  # noqa: E402
from labeler.sources.generation.registry import GeneratorOptions, create_generator  # noqa: E402
from schemas.tables import RESPONSES, read_table  # noqa: E402
from stepdpo.cli import main  # noqa: E402
from trainer.tiny_model import build_tiny_model  # noqa: E402

PROMPTS = ["Natalia sold clips to 48 of her friends.", "Weng earns $12 an hour for babysitting. Yesterday",
           "A robe takes 2 bolts", "James writes a 3-page letter to 2 different friends twice a week."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # A tokenizer trained on a few lines is enough for the mechanics, and fast to build.
    text = PROMPTS + ["Below is an instruction that describes a task. Step 1: Step 2: The answer is"]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-policy"), arch="llama", vocab_text=text, seed=1)


def test_batched_left_padded_greedy_equals_one_at_a_time(tiny):
    greedy = Sampling(temperature=0.0, max_new_tokens=12)
    requests = [GenRequest(key=str(i), prompt=p, prefill="Step 1: ") for i, p in enumerate(PROMPTS)]
    batched = create_generator(f"hf:{tiny}", GeneratorOptions(batch_size=4))
    single = create_generator(f"hf:{tiny}", GeneratorOptions(batch_size=1))
    many = asyncio.run(batched.generate(requests, greedy))
    one = [asyncio.run(single.generate([r], greedy))[0] for r in requests]
    assert [g.text for g in many] == [g.text for g in one]
    assert [g.input_tokens for g in many] == [g.input_tokens for g in one]
    assert all(g.finish_reason in ("stop", "length") for g in many)
    assert any(g.output_tokens > 0 for g in many)
    assert batched.fingerprint() == single.fingerprint()  # batch size is not part of the output


def test_generate_command_on_tiny_model_resumes(tiny, tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    with open(problems, "w") as fh:
        for i, p in enumerate(PROMPTS):
            fh.write(json.dumps({"id": f"q{i}", "problem": p, "answer": str(i)}) + "\n")
    out, cache = tmp_path / "gen", tmp_path / "cache"
    base = ["generate", str(problems), "--generator", f"hf:{tiny}", "-o", str(out), "--max-new-tokens", "8",
            "--progress", "none", "--cache-dir", str(cache), "--batch-size", "3", "-n", "2"]
    assert main(base + ["--limit", "2"]) == 0
    first = {json.loads(r["meta"])["generation_id"]: r for r in read_table(out, RESPONSES).to_pylist()}
    assert len(first) == 4
    assert main(base) == 0  # resumes: only the two new problems are sampled
    rows = read_table(out, RESPONSES).to_pylist()
    by_gid = {json.loads(r["meta"])["generation_id"]: r for r in rows}
    assert len(rows) == len(by_gid) == 8
    assert all(by_gid[g] == first[g] for g in first)
    err = capsys.readouterr().err
    assert "4 drawn (0 from cache), 4 already done" in err
    for r in rows:
        meta = json.loads(r["meta"])
        assert meta["generator"] == f"hf:{tiny}" and meta["finish_reason"] in ("stop", "length")
        assert r["steps"][0].startswith("Step 1:") and r["source"] == "generate"
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["totals"]["samples"] == 8 and manifest["runs"][-1]["cost_usd"] == 0.0
