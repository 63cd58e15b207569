"""StepwiseDPOConfig: TRL's DPOConfig plus the stepwise fields, each documented for --help."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig

from schemas.aggregate import AGGREGATIONS, DEFAULT_FLOOR
from schemas.convert import DEFAULT_SEPARATOR
from trainer.losses import LOSSES, OUTCOME_LOSSES

EOS_MODES = ("auto", "always", "never")


@dataclass
class StepwiseDPOConfig(DPOConfig):
    """Everything `DPOConfig` has (``beta``, ``max_length``, ``truncation_mode``…) plus the step
    fields below. ``beta`` is the β of `sigmoid`, `step_weighted`, `margin` and `soft_label`;
    `combined` uses ``step_beta`` and ``outcome_beta`` instead."""

    stepwise_loss: str = field(
        default="step_weighted",
        metadata={
            "help": "Loss: sigmoid (plain DPO, equals TRL's), step_weighted (steps weighted by "
            "softmax of their scores), margin (ODPO-style reward offset), soft_label (label from "
            "the reward gap), combined (step_loss_weight*step_weighted + outcome_loss_weight*outcome).",
            "choices": list(LOSSES),
        },
    )
    aggregation: str = field(
        default="product",
        metadata={
            "help": "How step scores become a solution reward R for margin/soft_label "
            "(schemas.aggregate); pairs without any score fall back to the stored reward.",
            "choices": list(AGGREGATIONS),
        },
    )
    step_temperature: float = field(
        default=1.0,
        metadata={"help": "τ in a^w = K·softmax(τ q^w), a^l = K·softmax(−τ q^l); 0 gives plain DPO."},
    )
    step_beta: float = field(
        default=0.1, metadata={"help": "β of the step term of the combined loss."}
    )
    outcome_beta: float = field(
        default=0.1, metadata={"help": "β of the outcome term of the combined loss."}
    )
    step_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the step term in the combined loss."}
    )
    outcome_loss_weight: float = field(
        default=1.0, metadata={"help": "Weight of the outcome term in the combined loss."}
    )
    outcome_loss: str = field(
        default="sigmoid",
        metadata={
            "help": "Outcome term of the combined loss: sigmoid or margin.",
            "choices": list(OUTCOME_LOSSES),
        },
    )
    margin_scale: float = field(
        default=1.0, metadata={"help": "γ of the margin loss: −log σ(βΔ − γ(R^w − R^l))."}
    )
    soft_label_scale: float = field(
        default=5.0, metadata={"help": "η of the soft-label loss: p = σ(η(R^w − R^l))."}
    )
    score_floor: float = field(
        default=DEFAULT_FLOOR,
        metadata={"help": "Step scores are clipped to [floor, 1−floor] before weighting and aggregation."},
    )
    null_score: float = field(
        default=0.5,
        metadata={"help": "Score used for a step the judge left unscored (null): neutral by default."},
    )
    step_separator: str = field(
        default=DEFAULT_SEPARATOR,
        metadata={"help": "Text between steps; must match the one the pairs were written with."},
    )
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "Render the problem with the tokenizer's chat template (a user turn plus the "
            "generation prompt); prefix steps and completions are the assistant's text. Use it for "
            "chat/instruct models; off, the prompt is plain text, as TRL does for non-conversational data."
        },
    )
    add_eos: str = field(
        default="auto",
        metadata={
            "help": "Append EOS to both completions of a pair: auto (not when both are single "
            "steps, e.g. first-error pairs with --continuation step, so Step-DPO does not teach "
            "stopping after one step; yes for completions that run to the end), always, never.",
            "choices": list(EOS_MODES),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        for name, value, choices in (
            ("stepwise_loss", self.stepwise_loss, LOSSES),
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("outcome_loss", self.outcome_loss, OUTCOME_LOSSES),
            ("add_eos", self.add_eos, EOS_MODES),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        # TRL's own loss options that StepwiseDPOTrainer's losses do not read: refuse them rather
        # than train silently with another loss than the one asked for.
        ignored = {
            "loss_type": (list(self.loss_type) if isinstance(self.loss_type, (list, tuple)) else [self.loss_type],
                          ["sigmoid"]),
            "loss_weights": (self.loss_weights, None),
            "ld_alpha": (self.ld_alpha, None),
            "label_smoothing": (self.label_smoothing, 0.0),
            "use_weighting": (self.use_weighting, False),
        }
        for name, (value, default) in ignored.items():
            if value != default:
                raise ValueError(
                    f"{name}={value!r} is a TRL DPOTrainer option that StepwiseDPOTrainer does not use; choose "
                    f"the loss with stepwise_loss ({', '.join(LOSSES)}) and leave {name} at its default"
                )
        if self.use_liger_kernel:
            # Liger swaps the model's forward (and TRL routes such runs past its own loss code):
            # the per-step log-probs would not be the ones the stepwise losses are defined on.
            raise ValueError("use_liger_kernel is not supported by StepwiseDPOTrainer (it replaces the forward "
                             "that computes per-step log-probs); leave it off")
        if not 0.0 <= self.score_floor < 0.5:
            raise ValueError(f"score_floor must be in [0, 0.5), got {self.score_floor}")
