"""Stepwise DPO losses as pure tensor functions (DESIGN.md §5).

Every loss reads per-step policy-minus-reference log-ratios ρ_k, never the scores alone: the
scores only weight or offset the log-ratios, so the policy always receives a gradient (the
classic bug of public stepwise-DPO code is a loss built from the fixed scores). Padded step
slots are excluded by an explicit mask, never by a score value: a step scored 0 is a real step.

Shapes: ``rho_*``, ``q_*`` and ``mask_*`` are ``[B, K]`` (K = most steps in the batch),
``r_*`` are ``[B]``. Each function returns ``(loss per example [B], metrics)``; the metrics are
detached tensors of shape ``[B]`` (or ``[B, K]`` for weights) for the trainer to reduce and log.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("sigmoid", "step_weighted", "margin", "soft_label", "combined")
OUTCOME_LOSSES = ("sigmoid", "margin")


@dataclass
class StepBatch:
    """The per-step quantities one loss call needs.

    ``seq_w``/``seq_l`` may carry the per-sequence log-ratio summed over tokens in one pass (as
    TRL sums it); when absent the sum over steps is used. Both are the same number up to float
    rounding, and using TRL's order keeps `sigmoid` bit-comparable with TRL's own loss.
    """

    rho_w: torch.Tensor
    rho_l: torch.Tensor
    mask_w: torch.Tensor
    mask_l: torch.Tensor
    q_w: torch.Tensor | None = None
    q_l: torch.Tensor | None = None
    r_w: torch.Tensor | None = None
    r_l: torch.Tensor | None = None
    seq_w: torch.Tensor | None = None
    seq_l: torch.Tensor | None = None

    def delta(self) -> torch.Tensor:
        """Δ = Σ_k ρ^w_k − Σ_k ρ^l_k."""
        w = self.seq_w if self.seq_w is not None else masked_sum(self.rho_w, self.mask_w)
        l_ = self.seq_l if self.seq_l is not None else masked_sum(self.rho_l, self.mask_l)
        return w - l_

    def rewards(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.r_w is None or self.r_l is None:
            raise ValueError("this loss needs aggregated rewards (chosen_reward / rejected_reward)")
        return self.r_w, self.r_l

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.q_w is None or self.q_l is None:
            raise ValueError("this loss needs step scores (chosen_scores / rejected_scores)")
        return self.q_w, self.q_l


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask.to(x.dtype)).sum(dim=-1)


def step_weights(q: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """a = K·softmax(τ q) over the valid steps of each row (K = that row's number of steps).

    The softmax runs over steps, not tokens, so a long step does not outweigh a short one.
    Padded slots get weight 0 whatever their q; τ = 0 gives exactly 1 for every valid step.
    """
    mask = mask.bool()
    logits = (tau * q).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # a row with no valid step
    k = mask.sum(dim=-1, keepdim=True).to(weights.dtype)
    return weights * k


def _metrics(loss_logits: torch.Tensor, beta: float, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"logits": loss_logits.detach(), "delta": (beta * delta).detach()}


def sigmoid(b: StepBatch, *, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain DPO: −log σ(β Δ)."""
    delta = b.delta()
    logits = beta * delta
    return -F.logsigmoid(logits), _metrics(logits, beta, delta)


def step_weighted(
    b: StepBatch, *, beta: float, tau: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """−log σ(β (Σ_k a^w_k ρ^w_k − Σ_k a^l_k ρ^l_k)), a^w = K·softmax(τ q^w), a^l = K·softmax(−τ q^l).

    Chosen steps the judge trusts and rejected steps it distrusts (the error) carry the signal.
    """
    q_w, q_l = b.scores()
    a_w = step_weights(q_w, b.mask_w, tau)
    a_l = step_weights(q_l, b.mask_l, -tau)
    delta = (a_w * b.rho_w).sum(-1) - (a_l * b.rho_l).sum(-1)
    logits = beta * delta
    metrics = _metrics(logits, beta, delta)
    metrics["weights_w"] = a_w.detach()
    metrics["weights_l"] = a_l.detach()
    return -F.logsigmoid(logits), metrics


def margin(
    b: StepBatch, *, beta: float, gamma: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """−log σ(β Δ − γ (R^w − R^l)): a pair judged far apart must be separated further (ODPO)."""
    r_w, r_l = b.rewards()
    delta = b.delta()
    logits = beta * delta - gamma * (r_w - r_l).to(delta.dtype)
    return -F.logsigmoid(logits), _metrics(logits, beta, delta)


def soft_label(
    b: StepBatch, *, beta: float, eta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """p = σ(η (R^w − R^l)); −p log σ(βΔ) − (1−p) log σ(−βΔ): near-ties are trusted less."""
    r_w, r_l = b.rewards()
    delta = b.delta()
    logits = beta * delta
    p = torch.sigmoid(eta * (r_w - r_l).to(delta.dtype))
    loss = -p * F.logsigmoid(logits) - (1 - p) * F.logsigmoid(-logits)
    metrics = _metrics(logits, beta, delta)
    metrics["label"] = p.detach()
    return loss, metrics


def combined(
    b: StepBatch,
    *,
    step_beta: float,
    outcome_beta: float,
    tau: float,
    step_loss_weight: float,
    outcome_loss_weight: float,
    outcome: str = "sigmoid",
    gamma: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """step_loss_weight·step_weighted(step_beta) + outcome_loss_weight·(sigmoid|margin)(outcome_beta)."""
    step_loss, step_m = step_weighted(b, beta=step_beta, tau=tau)
    if outcome == "sigmoid":
        out_loss, out_m = sigmoid(b, beta=outcome_beta)
    elif outcome == "margin":
        out_loss, out_m = margin(b, beta=outcome_beta, gamma=gamma)
    else:
        raise ValueError(f"outcome loss must be one of {OUTCOME_LOSSES}, got {outcome!r}")
    loss = step_loss_weight * step_loss + outcome_loss_weight * out_loss
    metrics = dict(step_m)
    metrics["step_loss"] = step_loss.detach()
    metrics["outcome_loss"] = out_loss.detach()
    metrics["outcome_logits"] = out_m["logits"]
    return loss, metrics


def compute_loss(kind: str, b: StepBatch, cfg) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dispatch on ``kind`` with the hyper-parameters of a StepwiseDPOConfig-like ``cfg``."""
    if kind == "sigmoid":
        return sigmoid(b, beta=cfg.beta)
    if kind == "step_weighted":
        return step_weighted(b, beta=cfg.beta, tau=cfg.step_temperature)
    if kind == "margin":
        return margin(b, beta=cfg.beta, gamma=cfg.margin_scale)
    if kind == "soft_label":
        return soft_label(b, beta=cfg.beta, eta=cfg.soft_label_scale)
    if kind == "combined":
        return combined(
            b,
            step_beta=cfg.step_beta,
            outcome_beta=cfg.outcome_beta,
            tau=cfg.step_temperature,
            step_loss_weight=cfg.step_loss_weight,
            outcome_loss_weight=cfg.outcome_loss_weight,
            outcome=cfg.outcome_loss,
            gamma=cfg.margin_scale,
        )
    raise ValueError(f"unknown stepwise loss {kind!r}; choose one of {', '.join(LOSSES)}")
