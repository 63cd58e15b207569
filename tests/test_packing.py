"""Packed and prefix-shared DPO (trainer/packing.py) against the padded path, TRL's own loss, training."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from tests.trainer_util import gsm8k_pair_rows, preference_rows  # noqa: E402
from trainer import losses, packing  # noqa: E402
from trainer.alignment import tokenize_pair  # noqa: E402
from trainer.config import StepwiseDPOConfig  # noqa: E402
from trainer.precompute import load_reference, reference_step_logps  # noqa: E402
from trainer.stepwise_trainer import StepwiseDPOTrainer, per_token_logps  # noqa: E402
from trainer.tiny_model import build_tiny_model  # noqa: E402
from trainer.trl_compat import DataCollatorForPreference, add_fused_lm_head  # noqa: E402

MODES = ("padding_free", "prefix_shared")
TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=64, layers=2)


@pytest.fixture(scope="module")
def tok(tiny):
    return AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def rows():
    """Mixed prefix and completion lengths: first-error pairs (long prefix, one step each) and
    whole-solution pairs (no prefix, several steps) in one batch."""
    mixed = gsm8k_pair_rows(3, strategy="first-error") + gsm8k_pair_rows(3, strategy="best-worst", offset=5)
    return [mixed[i] for i in (0, 3, 1, 4, 2, 5)]


def _perturbed(tiny, impl="sdpa"):
    model = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation=impl)
    torch.manual_seed(1)
    with torch.no_grad():  # away from init, so the policy/reference differences are not trivial
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _padded(tok, rows, max_length=None, truncation_mode="keep_start"):
    examples = [tokenize_pair(tok, e["prompt"], e["chosen_steps"], e["rejected_steps"])
                for e in preference_rows(rows)]
    collate = DataCollatorForPreference(pad_token_id=tok.pad_token_id, max_length=max_length,
                                        truncation_mode=truncation_mode)
    return collate(examples)


# -- the layout alone --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("max_length,truncation_mode", [(None, "keep_start"), (90, "keep_start"), (90, "keep_end")])
def test_layout_scores_exactly_the_padded_completion_tokens(tok, rows, mode, max_length, truncation_mode):
    b = _padded(tok, rows, max_length, truncation_mode)
    pk = packing.pack_batch(b["input_ids"], b["attention_mask"], b["completion_mask"], mode, max_length or 128)
    src, labels = pk["packed_source_index"], pk["packed_shift_labels"].reshape(-1)
    target = b["input_ids"][:, 1:]
    scored = b["completion_mask"][:, 1:].bool()
    # every kept completion token is scored once, with its own id, and nothing else is scored
    assert torch.equal(src >= 0, scored)
    assert torch.equal(labels[src[scored]], target[scored])
    assert int((labels != -100).sum()) == int(scored.sum())
    # no pair is split across rows: both sides' scoring positions sit in one packed row
    width = pk["packed_input_ids"].size(1)
    half = b["input_ids"].size(0) // 2
    for i in range(2 * half):
        assert len(set((src[i][src[i] >= 0] // width).tolist())) <= 1
    if mode == "prefix_shared":
        for i in range(half):
            rows_of = {int(x) // width for x in torch.cat([src[i], src[half + i]]) if x >= 0}
            assert len(rows_of) <= 1
    # never more positions computed than TRL's [2B, L] padded rows; fewer unless truncation made
    # every sequence max_length long (nothing to pack) and cut each pair's prompts apart
    assert packing.tokens_computed(pk) <= packing.tokens_computed(b)
    if max_length is None or truncation_mode == "keep_start" and mode == "prefix_shared":
        assert packing.tokens_computed(pk) < packing.tokens_computed(b)


def test_prefix_shared_mask_keeps_the_two_completions_apart(tok, rows):
    b = _padded(tok, rows[:1])  # one first-error pair: [shared | chosen branch | rejected branch]
    pk = packing.pack_batch(b["input_ids"], b["attention_mask"], b["completion_mask"], "prefix_shared", None)
    branch, pos = pk["packed_branch_ids"][0], pk["packed_position_ids"][0]
    allowed = packing.allowed_mask(pk["packed_unit_ids"], pk["packed_branch_ids"])[0, 0]
    shared, chosen, rejected = (branch == packing.SHARED), (branch == packing.CHOSEN), (branch == packing.REJECTED)
    p = int(shared.sum()) + 1  # the prompt's last token opens each branch
    assert int(chosen.sum()) == int(b["attention_mask"][0].sum()) - p + 1
    assert int(rejected.sum()) == int(b["attention_mask"][1].sum()) - p + 1
    assert not allowed[rejected][:, chosen].any()  # rejected never sees chosen
    assert not allowed[chosen][:, rejected].any()
    assert allowed[rejected][:, shared].all() and allowed[chosen][:, shared].all()
    # both branches continue the prefix's positions
    assert pos[chosen][0] == pos[rejected][0] == p - 1
    assert torch.equal(pos[shared], torch.arange(p - 1))
    # one copy of the prompt instead of two
    assert pk["packed_input_ids"].numel() == int(b["attention_mask"].sum()) - p + 1


def test_rows_never_exceed_capacity_unless_one_unit_does():
    rows = packing.assign_rows([50, 30, 120, 20, 70], 100)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    for r in rows:
        total = sum([50, 30, 120, 20, 70][i] for i in r)
        assert total <= 100 or len(r) == 1
    assert packing.assign_rows([5, 6], None) == [[0, 1]]


@pytest.mark.parametrize("mode", MODES)
def test_dense_mask_rows_are_as_wide_as_the_longest_unit(tok, rows, mode):
    b = _padded(tok, rows)
    assert packing.row_capacity("sdpa", 512) == 0
    pk = packing.pack_batch(b["input_ids"], b["attention_mask"], b["completion_mask"], mode, 0)
    units = packing.build_units(b["input_ids"], b["attention_mask"], b["completion_mask"], mode)
    assert pk["packed_input_ids"].size(1) == max(len(u.ids) for u in units)
    if mode == "padding_free":  # never more dense-attention work than the padded rows
        n, width = pk["packed_input_ids"].shape
        assert n * width**2 <= b["input_ids"].size(0) * b["input_ids"].size(1) ** 2


def test_row_capacity_per_kernel():
    assert packing.row_capacity("flash_attention_2", 512) is None  # varlen: one row
    assert packing.row_capacity("flex_attention", 512) == 512
    assert packing.row_capacity("eager", 512) == 0


def test_resolve_packing_follows_the_attention_implementation():
    assert packing.resolve_packing("auto", "sdpa") == "prefix_shared"
    assert packing.resolve_packing("auto", "eager") == "prefix_shared"
    assert packing.resolve_packing("auto", "flash_attention_2") == "padding_free"
    assert packing.resolve_packing("auto", "paged|sdpa") == "none"
    assert packing.resolve_packing("auto", "sdpa", router_aux_loss=True) == "none"
    with pytest.raises(ValueError, match="needs an attention implementation that takes a mask"):
        packing.resolve_packing("prefix_shared", "flash_attention_2")
    with pytest.raises(ValueError, match="router load-balancing"):
        packing.resolve_packing("padding_free", "sdpa", router_aux_loss=True)
    with pytest.raises(ValueError, match="packing must be one of"):
        packing.resolve_packing("dense", "sdpa")


# -- the model on the layout -------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("max_length,truncation_mode", [(None, "keep_start"), (90, "keep_end")])
def test_packed_token_logps_equal_the_padded_rows(tiny, tok, rows, impl, max_length, truncation_mode):
    model = _perturbed(tiny, impl)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    b = _padded(tok, rows, max_length, truncation_mode)
    labels = b["input_ids"].masked_fill(b["completion_mask"] == 0, -100)
    with torch.no_grad():
        expected, out = per_token_logps(model, {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
                                        labels)
        for mode in MODES:
            pk = packing.pack_batch(b["input_ids"], b["attention_mask"], b["completion_mask"], mode, max_length)
            got, packed_out = packing.token_logps(model, pk)
            assert (got - expected).abs().max() <= TOL
            assert (packed_out.entropy - out.entropy).abs().max() <= TOL
            assert torch.equal(packed_out.is_top1, out.is_top1)
    assert expected.abs().sum() > 0


def test_padding_free_single_row_is_the_varlen_layout(tiny, tok, rows):
    """One row with position ids and no mask (what FlashAttention varlen receives): transformers
    finds the sequences from the restarting position ids, and the log-probs are the padded ones."""
    model = _perturbed(tiny)
    b = _padded(tok, rows)
    labels = b["input_ids"].masked_fill(b["completion_mask"] == 0, -100)
    pk = packing.pack_batch(b["input_ids"], b["attention_mask"], b["completion_mask"], "padding_free", None)
    assert pk["packed_input_ids"].size(0) == 1
    assert pk["packed_input_ids"].numel() == int(b["attention_mask"].sum())  # not one pad token
    with torch.no_grad():
        expected, _ = per_token_logps(model, {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
                                      labels)
        out = model(input_ids=pk["packed_input_ids"], position_ids=pk["packed_position_ids"], use_cache=False)
    logps = torch.log_softmax(out.logits, -1).gather(-1, pk["packed_shift_labels"].clamp(min=0)[..., None])[..., 0]
    got = packing.unpack(logps.masked_fill(pk["packed_shift_labels"] == -100, 0), pk["packed_source_index"])
    assert (got - expected).abs().max() <= TOL


# -- through the trainer -----------------------------------------------------------------------

def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], bf16=False, use_cpu=True,
                per_device_train_batch_size=6, max_length=200, gradient_checkpointing=False,
                save_strategy="no", logging_steps=1, beta=0.1, seed=0, step_temperature=2.0)
    base.update(kw)
    return StepwiseDPOConfig(**base)


def _trainer(tiny, tok, rows, tmp_path, model=None, **kw):
    model = model if model is not None else _perturbed(tiny)
    return StepwiseDPOTrainer(model, ref_model=AutoModelForCausalLM.from_pretrained(tiny).eval(),
                              args=_config(tmp_path, **kw), train_dataset=Dataset.from_list(preference_rows(rows)),
                              processing_class=tok)


def _loss_and_grads(tr, mode, n):
    tr.data_collator.packing = mode
    batch = tr.data_collator([tr.train_dataset[i] for i in range(n)])
    assert ("packed_input_ids" in batch) == (mode != "none")
    tr.model.train()
    tr.model.zero_grad(set_to_none=True)
    for v in tr._metrics["train"].values():
        v.clear()
    tr._total_train_tokens = 0  # num_tokens is a running total
    loss = tr.compute_loss(tr.model, dict(batch))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in tr.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in tr._metrics["train"].items() if v}
    return loss.item(), grads, metrics


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_every_loss_and_its_gradients_equal_the_padded_path(tiny, tok, rows, tmp_path, kind):
    tr = _trainer(tiny, tok, rows, tmp_path, stepwise_loss=kind, margin_scale=0.5)
    assert tr.packing == "prefix_shared"  # the default (auto) for SDPA
    n = len(tr.train_dataset)
    loss0, grads0, metrics0 = _loss_and_grads(tr, "none", n)
    assert not math.isclose(loss0, math.log(2), abs_tol=1e-4)
    for mode in MODES:
        loss, grads, metrics = _loss_and_grads(tr, mode, n)
        assert abs(loss - loss0) <= TOL
        assert grads.keys() == grads0.keys()
        worst = max((grads[k] - grads0[k]).abs().max().item() for k in grads0)
        assert worst <= TOL, f"{mode}: gradient differs by {worst}"
        assert metrics.keys() == metrics0.keys()
        for key, value in metrics0.items():  # rewards, margins, logps, step metrics, num_tokens
            # logps are sums of a few hundred log-probs (~ -400): equal up to fp32 rounding of the sum
            assert metrics[key] == pytest.approx(value, rel=1e-6, abs=TOL), key


@pytest.mark.parametrize("mode", MODES)
def test_sigmoid_packed_equals_trls_own_dpo_loss(tiny, tok, rows, tmp_path, mode):
    prefs = [{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in preference_rows(rows)]
    trl = DPOTrainer(_perturbed(tiny), ref_model=AutoModelForCausalLM.from_pretrained(tiny).eval(),
                     args=DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], bf16=False, use_cpu=True,
                                    per_device_train_batch_size=6, max_length=200, beta=0.1),
                     train_dataset=Dataset.from_list(prefs), processing_class=tok)
    ours = _trainer(tiny, tok, rows, tmp_path, stepwise_loss="sigmoid", add_eos="always", packing=mode)
    assert ours.packing == mode
    trl.model.train()
    expected = trl.compute_loss(trl.model, trl.data_collator([trl.train_dataset[i] for i in range(6)]))
    got, _, _ = _loss_and_grads(ours, mode, 6)
    assert abs(got - expected.item()) <= TOL


def test_lora_and_gradient_accumulation_train_like_the_padded_path(tiny, tok, rows, tmp_path):
    """Two optimizer steps of 2×3 pairs with LoRA (adapter off = reference): the same trajectory."""
    from peft import LoraConfig

    trained = {}
    for mode in ("none", "prefix_shared"):
        torch.manual_seed(0)
        tr = StepwiseDPOTrainer(
            _perturbed(tiny), args=_config(tmp_path / mode, packing=mode, per_device_train_batch_size=3,
                                           gradient_accumulation_steps=2, max_steps=2, optim="sgd",
                                           learning_rate=0.5),
            train_dataset=Dataset.from_list(preference_rows(rows * 2)), processing_class=tok,
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
        assert tr.packing == mode and tr.ref_model is None
        tr.train()
        trained[mode] = ([h["loss"] for h in tr.state.log_history if "loss" in h],
                         {k: p.detach().clone() for k, p in tr.model.named_parameters() if p.requires_grad})
    (loss_pad, w_pad), (loss_pk, w_pk) = trained["none"], trained["prefix_shared"]
    assert len(loss_pad) == 2 and loss_pk == pytest.approx(loss_pad, abs=TOL)
    assert loss_pad[1] != pytest.approx(loss_pad[0], abs=1e-4)  # the adapter moved
    assert max((w_pk[k] - w_pad[k]).abs().max().item() for k in w_pad) <= TOL


def test_precompute_ref_packs_and_gives_the_padded_numbers(tiny, tok, rows):
    ref, _ = load_reference(str(tiny))
    padded = reference_step_logps(ref, tok, rows, max_length=90, truncation_mode="keep_end", packing="none")
    for mode in ("auto", *MODES):
        packed = reference_step_logps(ref, tok, rows, max_length=90, truncation_mode="keep_end", packing=mode)
        for side in range(2):
            for a, b in zip(packed[side], padded[side], strict=True):
                assert a == pytest.approx(b, abs=TOL)


def test_bad_packing_value_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="packing must be one of auto, none, padding_free, prefix_shared"):
        _config(tmp_path, packing="dense")


def test_train_command_says_which_packing_and_refuses_a_bad_one(tmp_path, capsys):
    from stepdpo.cli import main
    from tests.trainer_util import write_pairs

    model = build_tiny_model(tmp_path / "model", arch="qwen2", hidden=32, layers=1)
    pairs = write_pairs(tmp_path / "pairs", gsm8k_pair_rows(4, strategy="first-error"))
    code = main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "1", "--per_device_train_batch_size", "4", "--save_strategy", "no"])
    assert code == 0
    assert "packing: prefix_shared (auto: the fastest this attention implementation supports)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["train", "--pairs", str(pairs), "--model", str(model), "--output_dir", str(tmp_path / "run2"),
              "--max_steps", "1", "--packing", "dense"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stepdpo train: error:") and "--packing" in err[-1] and "prefix_shared" in err[-1]
