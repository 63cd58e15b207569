"""StepwiseDPOTrainer against TRL's own DPOTrainer, every reference source, gradients."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from tests.trainer_util import gsm8k_pair_rows, preference_rows, write_pairs  # noqa: E402
from trainer import losses  # noqa: E402
from trainer.config import StepwiseDPOConfig  # noqa: E402
from trainer.data import has_precomputed_ref, load_pairs  # noqa: E402
from trainer.precompute import load_reference, reference_step_logps  # noqa: E402
from trainer.stepwise_trainer import StepwiseDPOTrainer  # noqa: E402
from trainer.tiny_model import build_tiny_model  # noqa: E402

B = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=64, layers=2)


@pytest.fixture(scope="module")
def rows():
    return gsm8k_pair_rows(8)


def _common(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], bf16=False, use_cpu=True,
                per_device_train_batch_size=B, max_length=160, gradient_checkpointing=False,
                save_strategy="no", logging_steps=1, beta=0.1, seed=0)
    base.update(kw)
    return base


def _ours(tiny, rows, tmp_path, model=None, **kw):
    tok = AutoTokenizer.from_pretrained(tiny)
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(tiny)
    args = StepwiseDPOConfig(**_common(tmp_path, **kw))
    ds = Dataset.from_list(preference_rows(rows)) if not isinstance(rows, Path) else load_pairs(rows)
    return StepwiseDPOTrainer(model, args=args, train_dataset=ds, processing_class=tok)


def _batch(trainer, n=B):
    examples = [trainer.train_dataset[i] for i in range(n)]
    return trainer.data_collator(examples)


def _loss(trainer, batch):
    trainer.model.train()
    return trainer.compute_loss(trainer.model, dict(batch))


def test_sigmoid_equals_trls_own_dpo_loss(tiny, rows, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny)
    prefs = [{k: e[k] for k in ("prompt", "chosen", "rejected")} for e in preference_rows(rows)]
    trl = DPOTrainer(AutoModelForCausalLM.from_pretrained(tiny), args=DPOConfig(**_common(tmp_path)),
                     train_dataset=Dataset.from_list(prefs), processing_class=tok)
    ours = _ours(tiny, rows, tmp_path, stepwise_loss="sigmoid", add_eos="always")  # TRL always adds EOS
    # the same batch: identical token tensors from both collators
    trl_batch, our_batch = _batch(trl), _batch(ours)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(trl_batch[key], our_batch[key])
    with torch.no_grad():
        # perturb the policies identically so the loss is not the trivial log 2
        for m in (trl.model, ours.model):
            torch.manual_seed(1)
            for p in m.parameters():
                p.add_(0.02 * torch.randn_like(p))
        expected = _loss(trl, trl_batch).item()
        got = _loss(ours, our_batch).item()
    assert not math.isclose(expected, math.log(2), abs_tol=1e-4)
    assert abs(got - expected) <= 1e-5
    assert ours._metrics["train"]["rewards/margins"][-1] == pytest.approx(
        trl._metrics["train"]["rewards/margins"][-1], abs=1e-5)
    # step_weighted with τ = 0 is exactly the same loss on the same batch
    ours.args.stepwise_loss, ours.args.step_temperature = "step_weighted", 0.0
    with torch.no_grad():
        assert abs(_loss(ours, our_batch).item() - expected) <= 1e-5
        ours.args.step_temperature = 3.0
        assert abs(_loss(ours, our_batch).item() - expected) > 1e-4  # τ > 0 does change it


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_policy_gets_a_gradient_from_every_loss(tiny, rows, tmp_path, kind):
    tr = _ours(tiny, rows, tmp_path, stepwise_loss=kind)
    batch = _batch(tr)
    tr.model.zero_grad()
    loss = _loss(tr, batch)
    assert loss.requires_grad and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad.abs().sum().item() for p in tr.model.parameters() if p.grad is not None]
    assert grads and sum(grads) > 0
    ref_grads = [p.grad for p in tr.ref_model.parameters() if p.grad is not None]
    assert not ref_grads  # the frozen reference never gets one


def test_in_memory_model_without_a_path_gets_a_frozen_copy_as_reference(tiny, rows, tmp_path):
    config = AutoConfig.from_pretrained(tiny)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)  # no _name_or_path: TRL alone would try to reload it
    tr = _ours(tiny, rows, tmp_path, model=model)
    assert tr.ref_model is not None and tr.ref_model is not tr.model
    assert not any(p.requires_grad for p in tr.ref_model.parameters())
    with torch.no_grad():
        assert _loss(tr, _batch(tr)).item() == pytest.approx(math.log(2), abs=1e-6)


def test_peft_adapter_switched_off_is_the_reference(tiny, rows, tmp_path):
    from peft import LoraConfig

    tok = AutoTokenizer.from_pretrained(tiny)
    args = StepwiseDPOConfig(**_common(tmp_path, max_steps=3, learning_rate=5e-2))
    tr = StepwiseDPOTrainer(AutoModelForCausalLM.from_pretrained(tiny), args=args,
                            train_dataset=Dataset.from_list(preference_rows(rows)), processing_class=tok,
                            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert tr.ref_model is None
    with torch.no_grad():  # a fresh LoRA adapter is a no-op: policy == reference
        assert _loss(tr, _batch(tr)).item() == pytest.approx(math.log(2), abs=1e-6)
    tr.train()
    logged = [h["loss"] for h in tr.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(math.isfinite(v) for v in logged)
    assert logged[-1] != pytest.approx(math.log(2), abs=1e-6)  # the adapter moved away from the reference


def test_precomputed_reference_equals_reference_model(tiny, rows, tmp_path):
    ref, tok = load_reference(str(tiny))
    chosen, rejected = reference_step_logps(ref, tok, rows, max_length=160, batch_size=3)
    filled = [dict(r, ref_chosen_step_logps=c, ref_rejected_step_logps=x)
              for r, c, x in zip(rows, chosen, rejected, strict=True)]
    assert [len(c) for c in chosen] == [len(r["chosen_steps"]) for r in rows]
    pre = _ours(tiny, filled, tmp_path, stepwise_loss="step_weighted", step_temperature=2.0)
    live = _ours(tiny, rows, tmp_path, stepwise_loss="step_weighted", step_temperature=2.0)
    assert pre.uses_precomputed_ref and pre.ref_model is None
    assert not live.uses_precomputed_ref and live.ref_model is not None
    batch_pre, batch_live = _batch(pre), _batch(live)
    assert "ref_chosen_step_logps" in batch_pre and "ref_chosen_step_logps" not in batch_live
    with torch.no_grad():
        for m in (pre.model, live.model):
            torch.manual_seed(2)
            for p in m.parameters():
                p.add_(0.02 * torch.randn_like(p))
        a, b = _loss(pre, batch_pre).item(), _loss(live, batch_live).item()
    assert abs(a - b) <= 1e-5
    assert not math.isclose(a, math.log(2), abs_tol=1e-4)


def test_streaming_shards_train_a_few_steps(tiny, tmp_path):
    pairs = write_pairs(tmp_path / "pairs", gsm8k_pair_rows(24, strategy="first-error"), per_shard=10)
    assert not has_precomputed_ref(pairs)
    ds = load_pairs(pairs)
    assert type(ds).__name__ == "IterableDataset"
    tok = AutoTokenizer.from_pretrained(tiny)
    args = StepwiseDPOConfig(**_common(tmp_path, max_steps=4, learning_rate=1e-2,
                                       stepwise_loss="combined", step_temperature=1.0))
    tr = StepwiseDPOTrainer(AutoModelForCausalLM.from_pretrained(tiny), args=args, train_dataset=ds,
                            processing_class=tok)
    tr.train()
    logs = [h for h in tr.state.log_history if "loss" in h]
    assert len(logs) == 4
    for h in logs:
        assert math.isfinite(h["loss"])
        for key in ("rewards/accuracies", "rewards/margins", "step/margin", "step/first_error_weight",
                    "step/step_loss", "step/outcome_loss"):
            assert key in h


def test_trainer_never_imports_labeler():
    root = Path(__file__).resolve().parent.parent / "trainer"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "labeler" or n.startswith("labeler.") for n in names), path


def test_tiny_model_is_deterministic_and_loads_back(tmp_path):
    from transformers import AutoModelForTokenClassification

    a = build_tiny_model(tmp_path / "a", hidden=16, layers=1, extra_tokens=("<extra_0>",))
    b = build_tiny_model(tmp_path / "b", hidden=16, layers=1, extra_tokens=("<extra_0>",))
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    tok = AutoTokenizer.from_pretrained(a)
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and tok.pad_token_id != tok.eos_token_id
    assert len(tok("x<extra_0>", add_special_tokens=False)["input_ids"]) == 2  # one token for the tag
    text = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.hidden_size == 16 and model.config.vocab_size == len(tok)
    prm = build_tiny_model(tmp_path / "prm", arch="qwen2", hidden=16, layers=1, token_classes=2)
    head = AutoModelForTokenClassification.from_pretrained(prm)
    assert head.config.num_labels == 2 and type(head).__name__ == "Qwen2ForTokenClassification"


def test_public_api_is_importable_from_the_package():
    import subprocess
    import sys

    import trainer
    from trainer import StepwiseDPOConfig as C
    from trainer import StepwiseDPOTrainer as T

    assert T is StepwiseDPOTrainer and C is StepwiseDPOConfig
    assert set(trainer.__all__) <= set(dir(trainer))
    # ...and importing the package alone stays light (the CLI imports it before parsing).
    code = "import sys, trainer; assert 'trl' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


@pytest.mark.parametrize("kind", ["sigmoid", "margin", "soft_label", "step_weighted"])
def test_first_error_weight_metric_is_the_weight_the_loss_applies(tiny, rows, tmp_path, kind):
    tr = _ours(tiny, rows, tmp_path, stepwise_loss=kind, step_temperature=2.0)
    with torch.no_grad():
        _loss(tr, _batch(tr))
    weight = tr._metrics["train"]["step/first_error_weight"][-1]
    if kind == "step_weighted":  # the error step (lowest score) is up-weighted on the rejected side
        assert weight > 1.0
    else:  # these losses weight every step alike
        assert weight == pytest.approx(1.0)


def test_eval_rows_without_precomputed_reference_fail_at_init(tiny, rows, tmp_path):
    filled = [dict(r, ref_chosen_step_logps=[-1.0] * len(r["chosen_steps"]),
                   ref_rejected_step_logps=[-1.0] * len(r["rejected_steps"])) for r in rows]
    tok = AutoTokenizer.from_pretrained(tiny)
    args = StepwiseDPOConfig(**_common(tmp_path, eval_strategy="steps", eval_steps=1))
    with pytest.raises(ValueError, match="the eval rows do not"):
        StepwiseDPOTrainer(AutoModelForCausalLM.from_pretrained(tiny), args=args,
                           train_dataset=Dataset.from_list(preference_rows(filled)),
                           eval_dataset=Dataset.from_list(preference_rows(rows)), processing_class=tok)


def test_pairs_whose_prompt_fills_max_length_are_dropped_with_a_warning(tiny, rows, tmp_path):
    long = dict(rows[1], prompt=rows[1]["prompt"] * 20)
    with pytest.warns(UserWarning, match="skipping pairs whose prompt"):
        tr = _ours(tiny, [rows[0], long, rows[2]], tmp_path, max_length=400)
    assert len(tr.train_dataset) == 2


def test_moe_router_aux_loss_is_added_as_trl_adds_it(tiny, rows, tmp_path):
    from transformers import MixtralConfig

    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = MixtralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
                        router_aux_loss_coef=0.5, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    losses_by_coef, aux = {}, None
    for coef in (None, 0.0):  # None: the architecture's own coefficient (0.5); 0.0: off
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        tr = _ours(tiny, rows[:2], tmp_path, model=model, per_device_train_batch_size=2, router_aux_loss_coef=coef)
        with torch.no_grad():
            losses_by_coef[coef] = _loss(tr, _batch(tr, 2)).item()
        if coef is None:
            aux = tr._metrics["train"]["aux_loss"][-1]
    assert aux is not None and aux > 0
    assert losses_by_coef[None] == pytest.approx(losses_by_coef[0.0] + 0.5 * aux, abs=1e-5)


def _moved(row):
    """The same pair as `stepdpo pairs` now writes it: shared leading steps in prefix_steps."""
    from trainer.data import shared_leading_steps

    n = shared_leading_steps(row["chosen_steps"], row["rejected_steps"])
    return dict(row, prefix_steps=list(row["prefix_steps"]) + row["chosen_steps"][:n],
                chosen_steps=row["chosen_steps"][n:], rejected_steps=row["rejected_steps"][n:],
                chosen_scores=row["chosen_scores"][n:], rejected_scores=row["rejected_scores"][n:])


@pytest.mark.parametrize("loss", losses.LOSSES)
def test_a_shared_leading_step_gets_no_gradient_under_every_loss(tiny, rows, tmp_path, loss):
    """Old pair files keep steps both sides share at the start in the completions; the trainer
    moves them into the prompt, so they carry no gradient: loss and every parameter's gradient
    equal those of the same pairs written with the shared steps as prefix (the oracle), and no
    step slot is left for them."""
    old = [r for r in rows if r["chosen_steps"][0] == r["rejected_steps"][0]][:B]
    assert len(old) == B  # best-worst pairs: a solution against its copy with one corrupted step
    grads, values = [], []
    for pairs in (old, [_moved(r) for r in old]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        tr = _ours(tiny, pairs, tmp_path, model=model, stepwise_loss=loss, step_temperature=2.0, max_length=None)
        batch = _batch(tr)
        assert batch["chosen_num_steps"].tolist() == [len(_moved(r)["chosen_steps"]) for r in old]
        value = _loss(tr, batch)
        value.backward()
        values.append(value.item())
        grads.append(torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None]))
    assert values[0] == pytest.approx(values[1], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def _reward_pair():
    # `stepdpo pairs --aggregate min`: chosen [0.7]*4 has R = 0.7, rejected [0.55] has R = 0.55;
    # re-aggregated with product the chosen side would be 0.24 < 0.55, and soft_label would train
    # toward the rejected side.
    row = gsm8k_pair_rows(1, strategy="first-error")[0]
    steps = ["a = 1", "b = 2", "c = 3", "d = 4"]
    return dict(row, chosen_steps=steps, rejected_steps=["a = 9"], chosen_scores=[0.7] * 4,
                rejected_scores=[0.55], chosen_reward=0.7, rejected_reward=0.55)


@pytest.mark.parametrize("loss", ["soft_label", "margin"])
def test_stored_rewards_train_toward_chosen_and_reaggregation_is_opt_in(tiny, tmp_path, loss):
    row = _reward_pair()
    tr = _ours(tiny, [row], tmp_path, stepwise_loss=loss, per_device_train_batch_size=1)
    batch = _batch(tr, 1)
    assert batch["chosen_rewards"].tolist() == [pytest.approx(0.7)]
    assert batch["rejected_rewards"].tolist() == [pytest.approx(0.55)]
    # d loss / d Δ < 0: a step of gradient descent raises chosen over rejected
    delta = torch.zeros(1, requires_grad=True)
    b = losses.StepBatch(rho_w=delta.view(1, 1), rho_l=torch.zeros(1, 1), mask_w=torch.ones(1, 1),
                         mask_l=torch.ones(1, 1), r_w=batch["chosen_rewards"], r_l=batch["rejected_rewards"])
    value, _ = losses.compute_loss(loss, b, tr.args)
    value.sum().backward()
    assert delta.grad.item() < 0
    again = _ours(tiny, [row], tmp_path, stepwise_loss=loss, per_device_train_batch_size=1, aggregation="product")
    assert _batch(again, 1)["chosen_rewards"].item() == pytest.approx(0.7 ** 4, rel=1e-4)  # only when asked


def test_rows_with_more_scores_than_steps_or_scores_outside_0_1_are_refused(tmp_path):
    from schemas.errors import UserError

    good = gsm8k_pair_rows(3)
    for bad, message in ((dict(good[1], chosen_scores=good[1]["chosen_scores"] + [1.0]), "chosen scores for"),
                         (dict(good[1], rejected_scores=[1.5] + good[1]["rejected_scores"][1:]),
                          "rejected score 1.5 outside [0, 1]")):
        folder = write_pairs(tmp_path / message.split()[0], [good[0], bad, good[2]])
        with pytest.raises(UserError, match=re.escape(message)) as exc:
            load_pairs(folder)
        assert bad["pair_id"] in str(exc.value)


def test_a_pairs_folder_without_a_complete_manifest_is_refused(tmp_path):
    from schemas.errors import UserError

    folder = write_pairs(tmp_path / "pairs", gsm8k_pair_rows(4), per_shard=2)
    (folder / "pairs.json").unlink()  # `stepdpo pairs` killed before its manifest
    with pytest.raises(UserError, match="no pairs.json or precompute.json manifest, so the folder is not known"):
        load_pairs(folder)
    folder = write_pairs(tmp_path / "mixed", gsm8k_pair_rows(4), per_shard=2)
    write_pairs(tmp_path / "other", gsm8k_pair_rows(2, offset=30))
    (tmp_path / "other" / "part-00000.parquet").rename(folder / "part-00007.parquet")  # a rerun's leftover
    with pytest.raises(UserError, match=r"1 shard\(s\) not listed in pairs.json \(part-00007.parquet\)"):
        has_precomputed_ref(folder)
