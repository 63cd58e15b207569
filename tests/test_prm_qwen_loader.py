"""prm: loads Qwen2.5-Math-PRM checkpoints without remote code, refuses models with no 2-way
head, and fingerprints what was actually loaded (#12 item 2, #16 item 10)."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from labeler.judges import create_judge  # noqa: E402
from labeler.judges.base import Item  # noqa: E402
from labeler.judges.config import JudgeConfig  # noqa: E402
from schemas.errors import UserError  # noqa: E402
from tests.prm_models import (  # noqa: E402
    build_prm,
    build_released_qwen_prm,
    gsm8k_sample,
    official_qwen_prm_scores,
)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return build_released_qwen_prm(tmp_path_factory.mktemp("released") / "Qwen2.5-Math-PRM-tiny")


def judge_for(path, **kw):
    cfg = JudgeConfig(style="qwen", device="cpu", dtype="float32", **kw)
    return create_judge(f"prm:{path}", cfg)


def test_released_layout_matches_the_model_card_without_remote_code(released):
    rows = gsm8k_sample(6)
    items = [Item(f"r{i}", q, steps) for i, (q, steps) in enumerate(rows)]
    judge = judge_for(released, prm_batch_size=4)
    assert judge.model_class == "Qwen2Model+score" and not judge.trust_remote_code
    verdicts = asyncio.run(judge.judge(items))
    worst, flat = 0.0, []
    for item, verdict in zip(items, verdicts, strict=True):
        expected = official_qwen_prm_scores(released, item.prompt, item.steps)
        assert len(expected) == len(item.steps) == len(verdict.scores)
        worst = max(worst, max(abs(a - b) for a, b in zip(verdict.scores, expected, strict=True)))
        flat += verdict.scores
    assert worst <= 1e-5
    assert max(flat) - min(flat) > 1e-3  # random weights still vary: the comparison can fail


def test_remote_code_flag_still_uses_the_builtin_loader(released):
    """The released remote code cannot import under transformers 5; the built-in loader is used
    and the fingerprint records the flag."""
    plain, remote = judge_for(released), judge_for(released, trust_remote_code=True)
    assert remote.model_class == plain.model_class == "Qwen2Model+score"
    assert remote.fingerprint() != plain.fingerprint()


def _bare_base_model(tmp_path):
    """What the old code silently scored: a Qwen2Model folder with no head at all."""
    from transformers import AutoModel, AutoTokenizer

    src = build_prm(tmp_path / "tc", "qwen")
    base = AutoModel.from_pretrained(src)  # the ForTokenClassification body without its head
    out = tmp_path / "bare"
    base.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def test_models_without_a_two_way_head_are_refused_at_load(tmp_path, released):
    bare = _bare_base_model(tmp_path)
    with pytest.raises(UserError, match=r"\(Qwen2Model\) has no 2-way head: --style qwen reads"):
        judge_for(bare)
    causal = build_prm(tmp_path / "lm", "yesno")
    with pytest.raises(UserError, match=r"\(Qwen2ForCausalLM\) has no 2-way head.*--style shepherd or yesno"):
        judge_for(causal)
    # a token classifier with 3 labels, and a 2-way head asked for a class it does not have
    from trainer.tiny_model import build_tiny_model

    three = build_tiny_model(tmp_path / "three", arch="qwen2", token_classes=3, extra_tokens=["<extra_0>"])
    with pytest.raises(UserError, match="has a 3-way head, not a 2-way one"):
        judge_for(three)
    with pytest.raises(UserError, match="has a 2-way head, not a 2-way one"):
        judge_for(released, class_index=2)
    # a PRM config whose weights lack the head
    headless = tmp_path / "headless"
    shutil.copytree(released, headless)
    index = json.loads((headless / "model.safetensors.index.json").read_text())
    from safetensors.torch import load_file, save_file

    for shard in set(index["weight_map"].values()):
        tensors = {k: v for k, v in load_file(str(headless / shard)).items() if not k.startswith("score.")}
        save_file(tensors, str(headless / shard), metadata={"format": "pt"})
    with pytest.raises(UserError, match="has no `score` head weights"):
        judge_for(headless)


def test_label_refuses_a_bare_model_and_writes_nothing(tmp_path, gsm8k_sample, capsys):
    from stepdpo.cli import main

    bare = _bare_base_model(tmp_path)
    responses = tmp_path / "responses.parquet"
    assert main(["ingest", "gsm8k", str(gsm8k_sample), "-o", str(responses)]) == 0
    cache = tmp_path / "cache"
    argv = ["label", str(responses), "--judge", f"prm:{bare}", "--device", "cpu", "--limit", "4",
            "-o", str(tmp_path / "run"), "--cache-dir", str(cache), "--progress", "none"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stepdpo label: error: ") and "no 2-way head" in err[0]
    assert not any((tmp_path / "run").rglob("*.parquet"))  # refused before anything was scored


def test_fingerprint_covers_tokenizer_files_and_chat_template(tmp_path, released):
    copy = tmp_path / "copy"
    shutil.copytree(released, copy)
    before = judge_for(copy).fingerprint()
    assert judge_for(copy).fingerprint() == before
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config["chat_template"] = config.get("chat_template", "") + "{# another template #}"
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert judge_for(copy).fingerprint() != before


def test_multi_token_candidate_words_are_refused(tmp_path):
    shepherd = build_prm(tmp_path / "shep", "shepherd")
    cfg = JudgeConfig(style="shepherd", device="cpu", positive_token="Correctness")
    with pytest.raises(UserError, match=r"token 'Correctness' is \d+ tokens with this tokenizer"):
        create_judge(f"prm:{shepherd}", cfg)
