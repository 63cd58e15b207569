"""Step-token alignment: TRL's own tokens, one step per token, truncation never shifts a step id."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402

from schemas.convert import format_completion  # noqa: E402
from tests.trainer_util import gsm8k_pair_rows, preference_rows  # noqa: E402
from trainer.alignment import NO_STEP, tokenize_pair  # noqa: E402
from trainer.config import StepwiseDPOConfig  # noqa: E402
from trainer.stepwise_trainer import StepwiseCollator  # noqa: E402
from trainer.tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tokenizer(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param, hidden=16, layers=1)
    return AutoTokenizer.from_pretrained(path)


def _trl_tokenized(tok, examples):
    """TRL 1.16's own `_prepare_dataset` on the same preference rows (it appends EOS)."""
    ds = Dataset.from_list([{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in examples])
    fake_self = SimpleNamespace(_tokenizer=tok)
    args = DPOConfig(output_dir="unused", max_length=None, report_to=[], bf16=False, use_cpu=True)
    return list(DPOTrainer._prepare_dataset(fake_self, ds, tok, args, "train"))


@pytest.mark.parametrize("strategy", ["best-worst", "first-error"])
def test_ids_equal_trls_tokenization(tokenizer, strategy):
    examples = preference_rows(gsm8k_pair_rows(25, strategy=strategy))
    trl_rows = _trl_tokenized(tokenizer, examples)
    for ex, ref in zip(examples, trl_rows, strict=True):
        ours = tokenize_pair(tokenizer, ex["prompt"], ex["chosen_steps"], ex["rejected_steps"], add_eos="always")
        assert ours["prompt_ids"] == ref["prompt_ids"]
        assert ours["chosen_ids"] == ref["chosen_ids"]
        assert ours["rejected_ids"] == ref["rejected_ids"]


def test_every_token_has_exactly_one_step_and_steps_concatenate(tokenizer):
    for strategy in ("best-worst", "first-error"):
        for ex in preference_rows(gsm8k_pair_rows(25, strategy=strategy)):
            out = tokenize_pair(tokenizer, ex["prompt"], ex["chosen_steps"], ex["rejected_steps"])
            for side in ("chosen", "rejected"):
                ids, sids = out[f"{side}_ids"], out[f"{side}_step_ids"]
                steps = ex[f"{side}_steps"]
                assert len(sids) == len(ids)
                assert all(0 <= s < len(steps) for s in sids)
                assert sids == sorted(sids)  # a step id never goes back
                groups = [[t for t, s in zip(ids, sids, strict=True) if s == k] for k in range(len(steps))]
                assert [t for g in groups for t in g] == ids  # concatenated step tokens == TRL's tokens
                multi = max(len(ex["chosen_steps"]), len(ex["rejected_steps"])) > 1
                eos = tokenizer.eos_token if multi else ""
                text = "".join(tokenizer.decode(g) for g in groups)
                assert text == format_completion(steps) + eos
                # each step's tokens decode to that step (plus its separator): boundaries are exact
                for k, g in enumerate(groups[:-1]):
                    assert tokenizer.decode(g) == steps[k] + "\n"


def test_first_error_single_step_gets_no_eos(tokenizer):
    ex = preference_rows(gsm8k_pair_rows(1, strategy="first-error"))[0]
    out = tokenize_pair(tokenizer, ex["prompt"], ["x = 3"], ["x = 4"])
    assert tokenizer.eos_token_id not in out["chosen_ids"]
    assert tokenizer.eos_token_id not in out["rejected_ids"]
    full = tokenize_pair(tokenizer, ex["prompt"], ["a", "b"], ["c", "d"])
    assert full["chosen_ids"][-1] == tokenizer.eos_token_id
    assert full["rejected_ids"][-1] == tokenizer.eos_token_id


def test_eos_is_decided_per_pair_never_per_side(tokenizer):
    # first-error with --continuation rest: the chosen rest has 3 steps, the rejected rest is its
    # last (wrong) step; both run to the end of a solution, so both end with EOS. Were EOS given
    # to one side only, the model would learn "EOS is good" instead of the step difference.
    out = tokenize_pair(tokenizer, "Q:\n", ["a = 1", "b = 2", "c = 3"], ["c = 4"])
    assert out["chosen_ids"][-1] == tokenizer.eos_token_id
    assert out["rejected_ids"][-1] == tokenizer.eos_token_id


def test_a_token_straddling_a_boundary_still_gets_one_step(tokenizer):
    # With an empty separator, "12" + "34" can merge into tokens across the boundary.
    out = tokenize_pair(tokenizer, "Q:", ["x = 12", "34 + 1", "5"], ["y", "z"], sep="", add_eos="never")
    sids = out["chosen_step_ids"]
    assert len(sids) == len(out["chosen_ids"]) and sids == sorted(sids)
    assert set(sids) <= {0, 1, 2} and sids[0] == 0
    # " 15" starts inside step 1 ("34 + 1") and ends in step 2 ("5"): it counts for step 1 once
    text = "".join(tokenizer.decode([t]) for t in out["chosen_ids"])
    assert text == "x = 1234 + 15"
    assert sum(1 for s in sids if s == 1) >= 1


def _collate(tok, examples, max_length, mode):
    cfg = StepwiseDPOConfig(output_dir="unused", report_to=[], bf16=False, use_cpu=True,
                            max_length=max_length, truncation_mode=mode)
    base = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=max_length, truncation_mode=mode)
    return StepwiseCollator(base, cfg)(examples)


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_truncation_never_shifts_a_step_id(tokenizer, mode):
    examples = preference_rows(gsm8k_pair_rows(6))
    for ex in examples:
        ex.update(tokenize_pair(tokenizer, ex["prompt"], ex["chosen_steps"], ex["rejected_steps"]))
    full = _collate(tokenizer, examples, None, "keep_start")
    cut = _collate(tokenizer, examples, 60, mode)
    B = len(examples)
    assert full["step_ids"].shape == full["input_ids"].shape and full["input_ids"].shape[0] == 2 * B
    assert cut["step_ids"].shape == cut["input_ids"].shape
    # step ids sit exactly on completion tokens, chosen rows then rejected rows
    assert torch.equal(full["step_ids"] != NO_STEP, full["completion_mask"].bool())
    assert torch.equal(cut["step_ids"] != NO_STEP, cut["completion_mask"].bool())
    lengths = full["attention_mask"].sum(1)
    for i in range(2 * B):
        n = int(lengths[i])
        kept = min(n, 60)
        sl = slice(0, kept) if mode == "keep_start" else slice(n - kept, n)
        assert torch.equal(cut["input_ids"][i, :kept], full["input_ids"][i, sl])
        assert torch.equal(cut["step_ids"][i, :kept], full["step_ids"][i, sl])
    for i, ex in enumerate(examples):  # the first half are the chosen rows
        p = len(ex["prompt_ids"])
        row = full["step_ids"][i, p:p + len(ex["chosen_ids"])].tolist()
        assert row == ex["chosen_step_ids"]
        row = full["step_ids"][B + i, p:p + len(ex["rejected_ids"])].tolist()
        assert row == ex["rejected_step_ids"]


def test_collated_step_fields_keep_zero_scores_as_steps(tokenizer):
    examples = preference_rows(gsm8k_pair_rows(4))
    for ex in examples:
        ex.update(tokenize_pair(tokenizer, ex["prompt"], ex["chosen_steps"], ex["rejected_steps"]))
    out = _collate(tokenizer, examples, None, "keep_start")
    for i, ex in enumerate(examples):
        assert int(out["rejected_num_steps"][i]) == len(ex["rejected_steps"])
        err = ex["rejected_scores"].index(0.0)
        assert float(out["rejected_step_scores"][i, err]) == pytest.approx(1e-6)  # floored, still a step
        for k, s in enumerate(ex["rejected_scores"]):
            if s is None:  # unscored step: neutral
                assert float(out["rejected_step_scores"][i, k]) == 0.5
    assert out["chosen_rewards"].tolist() == [1.0] * 4  # product of all-1 scores


def test_prefix_fallback_agrees_with_offsets(tokenizer):
    """Tokenizers without offsets use step-prefix tokenization; both give the same step ids."""
    from trainer.alignment import completion_step_ids, step_boundaries

    for ex in preference_rows(gsm8k_pair_rows(15)):
        out = tokenize_pair(tokenizer, ex["prompt"], ex["chosen_steps"], ex["rejected_steps"], add_eos="always")
        full = out["prompt_ids"] + out["chosen_ids"]
        bounds = step_boundaries(tokenizer, ex["prompt"], ex["chosen_steps"], "\n", full, tokenizer.eos_token)
        ids = completion_step_ids(full, len(out["prompt_ids"]), bounds, len(ex["chosen_steps"]))
        assert ids == out["chosen_step_ids"]


@pytest.mark.parametrize("sep", [" ", "\n", " ; "])
def test_offsets_agree_with_per_step_tokenization_for_any_separator(tokenizer, sep):
    """With a space separator the token " 5" carrying it starts the next step (it used to be
    given to the step before on almost every pair); a per-step tokenization is the oracle."""
    from trainer.alignment import completion_step_ids, step_boundaries

    checked = 0
    for ex in preference_rows(gsm8k_pair_rows(60), sep=sep):
        for side in ("chosen", "rejected"):
            steps = ex[f"{side}_steps"]
            out = tokenize_pair(tokenizer, ex["prompt"], ex["chosen_steps"], ex["rejected_steps"], sep=sep,
                                add_eos="always")
            full = out["prompt_ids"] + out[f"{side}_ids"]
            bounds = step_boundaries(tokenizer, ex["prompt"], steps, sep, full, tokenizer.eos_token)
            assert completion_step_ids(full, len(out["prompt_ids"]), bounds, len(steps)) == out[f"{side}_step_ids"]
            checked += len(steps) > 1
    assert checked >= 60
