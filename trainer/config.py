"""StepwiseDPOConfig: TRL's DPOConfig plus the stepwise fields, each documented for --help."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig

from schemas.aggregate import AGGREGATIONS, DEFAULT_FLOOR
from schemas.convert import DEFAULT_SEPARATOR
from trainer.losses import LOSSES, OUTCOME_LOSSES
from trainer.packing import PACKING_MODES

EOS_MODES = ("auto", "always", "never")


def resolve_checkpointing(args: object) -> None:
    """Move TRL's checkpointing default onto transformers' new name, before
    ``TrainingArguments.__post_init__`` runs.

    TRL's configs (`DPOConfig`, `SFTConfig`) default the deprecated ``gradient_checkpointing``
    to True, so transformers 5 printed a FutureWarning on every `train` and `sft` run. A config
    that declares ``gradient_checkpointing`` with default None calls this first: an explicit
    old-name value (``--gradient_checkpointing false``) still counts, else TRL's default (on)
    goes to ``activation_checkpointing``, and the old names are cleared, so nothing warns.
    """
    if getattr(args, "activation_checkpointing", None) is None:
        old = getattr(args, "gradient_checkpointing", None)
        args.activation_checkpointing = True if old is None else old  # type: ignore[attr-defined]
    if getattr(args, "gradient_checkpointing_kwargs", None) is not None and \
            getattr(args, "activation_checkpointing_kwargs", None) is None:
        args.activation_checkpointing_kwargs = args.gradient_checkpointing_kwargs  # type: ignore[attr-defined]
    args.gradient_checkpointing = args.gradient_checkpointing_kwargs = None  # type: ignore[attr-defined]


@dataclass
class StepwiseDPOConfig(DPOConfig):
    """Everything `DPOConfig` has (``beta``, ``max_length``, ``truncation_mode``…) plus the step
    fields below. ``beta`` is the β of `sigmoid`, `step_weighted`, `margin` and `soft_label`;
    `combined` uses ``step_beta`` and ``outcome_beta`` instead."""

    loss_type: list[str] | None = field(
        default=None,
        metadata={
            "help": "The loss, as TRL names the option: one of sigmoid, step_weighted, margin, soft_label, "
            "combined (the same as --stepwise_loss, which it sets). TRL's other DPO losses (ipo, hinge, …) "
            "are not implemented for steps and are refused.",
        },
    )
    stepwise_loss: str = field(
        default="step_weighted",
        metadata={
            "help": "Loss: sigmoid (plain DPO, equals TRL's), step_weighted (steps weighted by "
            "softmax of their scores), margin (ODPO-style reward offset), soft_label (label from "
            "the reward gap), combined (step_loss_weight*step_weighted + outcome_loss_weight*outcome).",
            "choices": list(LOSSES),
        },
    )
    aggregation: str | None = field(
        default=None,
        metadata={
            "help": "margin/soft_label use the rewards `stepdpo pairs` stored (chosen_reward, "
            "rejected_reward, aggregated with its --aggregate) unless this is set: then R is "
            "re-aggregated from the step scores with it (schemas.aggregate), which `stepdpo train` "
            "allows only when it is the aggregation recorded in pairs.json.",
            "choices": list(AGGREGATIONS),
        },
    )
    step_temperature: float = field(
        default=1.0,
        metadata={"help": "τ in a^w = K·softmax(τ q^w), a^l = K·softmax(−τ q^l), scores q in [0, 1]: "
                  "two steps' weights differ by at most a factor e^τ, so τ = 1 caps the ratio at e ≈ 2.7 "
                  "and a 10× emphasis needs τ ≥ 2.3; τ = 0 weights every step 1 (plain DPO for step_weighted; "
                  "`combined` at τ = 0 is then twice DPO)."},
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
    packing: str = field(
        default="auto",
        metadata={
            "help": "How a batch of pairs is laid out for the forward pass (trainer/packing.py): none "
            "(TRL's padded [chosen; rejected] rows), padding_free (sequences packed into rows of up to "
            "max_length tokens, no padding), prefix_shared (also one copy of each pair's prompt + "
            "prefix, the two completions attending it but not each other). Same losses, gradients and "
            "metrics. auto: the fastest the model's attention implementation supports "
            "(prefix_shared for sdpa/eager/flex_attention, padding_free for FlashAttention).",
            "choices": list(PACKING_MODES),
        },
    )

    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Old name of --activation_checkpointing (transformers 5): recompute activations in the "
                  "backward pass to save memory. On unless set false (TRL's default)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "DDP's find_unused_parameters: every parameter gets a gradient in a DPO step, so the "
                  "extra graph walk is off by default (True for models with branches unused per batch)."},
    )

    def __post_init__(self):
        resolve_checkpointing(self)  # TRL's default on the deprecated name warned on every run
        self._resolve_loss_type()
        if self.max_length is not None and self.max_length == 0:
            self.max_length = None  # 0 = no limit, as `stepdpo precompute-ref --max-length 0`
        for name, value, low, strict in (
            ("per_device_train_batch_size", self.per_device_train_batch_size, 1, False),
            ("per_device_eval_batch_size", self.per_device_eval_batch_size, 1, False),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps, 1, False),
            ("learning_rate", self.learning_rate, 0.0, False),
            ("beta", self.beta, 0.0, True),
            ("max_length", self.max_length if self.max_length is not None else 0, 0, False),
            ("step_temperature", self.step_temperature, 0.0, False),
        ):
            if value < low or (strict and value == low):
                raise ValueError(f"{name} must be {'>' if strict else '≥'} {low:g}, got {value:g}")
        super().__post_init__()
        for name, value, choices in (
            ("stepwise_loss", self.stepwise_loss, LOSSES),
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("outcome_loss", self.outcome_loss, OUTCOME_LOSSES),
            ("add_eos", self.add_eos, EOS_MODES),
            ("packing", self.packing, PACKING_MODES),
        ):
            if value not in choices and not (name == "aggregation" and value is None):
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        # TRL's own loss options that StepwiseDPOTrainer's losses do not read: refuse them rather
        # than train silently with another loss than the one asked for.
        ignored = {
            "loss_weights": (self.loss_weights, None),
            "f_divergence_type": (getattr(self.f_divergence_type, "value", self.f_divergence_type), "reverse_kl"),
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

    def _resolve_loss_type(self) -> None:
        """``loss_type`` (TRL's name) and ``stepwise_loss`` end up naming the same stepwise loss."""
        given = self.loss_type
        if given is None:
            self.loss_type = [self.stepwise_loss]
            return
        names = [given] if isinstance(given, str) else list(given)
        if len(names) != 1 or names[0] not in LOSSES:
            theirs = ", ".join(n for n in names if n not in LOSSES) or " + ".join(names)
            raise ValueError(f"loss_type {theirs} is a TRL DPOTrainer loss that StepwiseDPOTrainer does not use "
                             f"(not implemented for steps); choose one of {', '.join(LOSSES)}")
        default = type(self).__dataclass_fields__["stepwise_loss"].default
        if self.stepwise_loss not in (default, names[0]):
            raise ValueError(f"loss_type {names[0]} and stepwise_loss {self.stepwise_loss} disagree; give one")
        self.stepwise_loss = names[0]
        self.loss_type = [names[0]]
