"""The stepwise losses as pure functions: oracles, τ = 0, gradients, 0-scores, weight monotonicity."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from trainer import losses  # noqa: E402
from trainer.losses import StepBatch, step_weights  # noqa: E402


def _batch(requires_grad: bool = True, seed: int = 0) -> StepBatch:
    g = torch.Generator().manual_seed(seed)
    rho_w = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
    rho_l = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
    mask_w = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    mask_l = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    q_w = torch.rand(3, 4, generator=g, dtype=torch.float64)
    q_l = torch.rand(3, 4, generator=g, dtype=torch.float64)
    return StepBatch(rho_w, rho_l, mask_w, mask_l, q_w, q_l,
                     r_w=torch.tensor([0.9, 0.8, 1.0], dtype=torch.float64),
                     r_l=torch.tensor([0.1, 0.7, 0.0], dtype=torch.float64))


CFG = SimpleNamespace(beta=0.3, step_temperature=2.0, margin_scale=0.5, soft_label_scale=4.0,
                      step_beta=0.2, outcome_beta=0.4, step_loss_weight=0.7, outcome_loss_weight=0.3,
                      outcome_loss="margin")


def _delta(b: StepBatch, i: int) -> float:
    w = sum(float(b.rho_w[i, k]) for k in range(4) if b.mask_w[i, k])
    l_ = sum(float(b.rho_l[i, k]) for k in range(4) if b.mask_l[i, k])
    return w - l_


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_sigmoid_matches_hand_formula():
    b = _batch(requires_grad=False)
    loss, _ = losses.sigmoid(b, beta=0.3)
    for i in range(3):
        assert float(loss[i]) == pytest.approx(-_logsig(0.3 * _delta(b, i)), abs=1e-12)


def test_step_weights_formula_and_padding():
    q = torch.tensor([[0.0, 1.0, 0.5, 0.9]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    a = step_weights(q, mask, tau=2.0)
    e = [math.exp(2.0 * x) for x in (0.0, 1.0, 0.5)]
    expect = [3 * x / sum(e) for x in e] + [0.0]
    assert a[0].tolist() == pytest.approx(expect, abs=1e-12)
    assert float(a.sum()) == pytest.approx(3.0)  # K·softmax sums to K


def test_step_weighted_matches_hand_formula():
    b = _batch(requires_grad=False)
    loss, m = losses.step_weighted(b, beta=0.3, tau=2.0)
    for i in range(3):
        valid_w = [k for k in range(4) if b.mask_w[i, k]]
        valid_l = [k for k in range(4) if b.mask_l[i, k]]
        ew = {k: math.exp(2.0 * float(b.q_w[i, k])) for k in valid_w}
        el = {k: math.exp(-2.0 * float(b.q_l[i, k])) for k in valid_l}
        sw = sum(len(valid_w) * ew[k] / sum(ew.values()) * float(b.rho_w[i, k]) for k in valid_w)
        sl = sum(len(valid_l) * el[k] / sum(el.values()) * float(b.rho_l[i, k]) for k in valid_l)
        assert float(loss[i]) == pytest.approx(-_logsig(0.3 * (sw - sl)), abs=1e-12)
    assert m["weights_w"].shape == (3, 4)


def test_step_weighted_tau_zero_equals_sigmoid():
    b = _batch()
    a, _ = losses.step_weighted(b, beta=0.3, tau=0.0)
    s, _ = losses.sigmoid(b, beta=0.3)
    assert torch.allclose(a, s, atol=1e-12, rtol=0)
    b32 = _batch()
    b32.rho_w, b32.rho_l = b32.rho_w.float(), b32.rho_l.float()
    a, _ = losses.step_weighted(b32, beta=0.1, tau=0.0)
    s, _ = losses.sigmoid(b32, beta=0.1)
    assert (a - s).abs().max().item() <= 1e-6


def test_margin_and_soft_label_formulas():
    b = _batch(requires_grad=False)
    m, _ = losses.margin(b, beta=0.3, gamma=0.5)
    s, _ = losses.soft_label(b, beta=0.3, eta=4.0)
    for i in range(3):
        d = _delta(b, i)
        gap = float(b.r_w[i] - b.r_l[i])
        assert float(m[i]) == pytest.approx(-_logsig(0.3 * d - 0.5 * gap), abs=1e-12)
        p = 1 / (1 + math.exp(-4.0 * gap))
        assert float(s[i]) == pytest.approx(-p * _logsig(0.3 * d) - (1 - p) * _logsig(-0.3 * d), abs=1e-12)


def test_combined_is_the_weighted_sum_of_its_terms():
    b = _batch()
    c, _ = losses.combined(b, step_beta=0.2, outcome_beta=0.4, tau=2.0, step_loss_weight=0.7,
                           outcome_loss_weight=0.3, outcome="margin", gamma=0.5)
    sw, _ = losses.step_weighted(b, beta=0.2, tau=2.0)
    mg, _ = losses.margin(b, beta=0.4, gamma=0.5)
    assert torch.allclose(c, 0.7 * sw + 0.3 * mg, atol=1e-12)


@pytest.mark.parametrize("kind", losses.LOSSES)
def test_every_loss_gives_the_policy_a_gradient(kind):
    b = _batch()
    loss, _ = losses.compute_loss(kind, b, CFG)
    loss.mean().backward()
    for g, mask in ((b.rho_w.grad, b.mask_w), (b.rho_l.grad, b.mask_l)):
        assert g is not None
        assert (g[mask] != 0).all(), f"{kind}: a real step got no gradient"
        assert (g[~mask] == 0).all(), f"{kind}: a padded slot got a gradient"


def test_a_step_scored_zero_still_counts():
    """Score 0 is a real (bad) step: it keeps a non-zero weight and gradient; only the mask pads."""
    rho_w = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    rho_l = torch.tensor([[0.5, -1.0, 0.2]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    b = StepBatch(rho_w, rho_l, mask, mask, q_w=torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64),
                  q_l=torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64))
    loss, m = losses.step_weighted(b, beta=1.0, tau=1.0)
    loss.sum().backward()
    assert m["weights_w"][0, 2] > 0 and m["weights_l"][0, 1] > 0
    assert rho_w.grad[0, 2] != 0 and rho_l.grad[0, 1] != 0 and rho_l.grad[0, 2] != 0
    # K counts all three steps: weights sum to 3, not to the number of non-zero scores
    assert float(m["weights_w"].sum()) == pytest.approx(3.0)
    # and the zero-scored rejected steps (the errors) weigh more than the correct one
    assert m["weights_l"][0, 1] > m["weights_l"][0, 0]


def test_raising_a_chosen_steps_score_raises_its_weight():
    mask = torch.ones(1, 4, dtype=torch.bool)
    q = torch.tensor([[0.2, 0.5, 0.7, 0.9]], dtype=torch.float64)
    before = step_weights(q, mask, tau=3.0)[0, 1]
    q2 = q.clone()
    q2[0, 1] = 0.8
    after = step_weights(q2, mask, tau=3.0)[0, 1]
    assert after > before


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown stepwise loss 'nope'"):
        losses.compute_loss("nope", _batch(), CFG)
