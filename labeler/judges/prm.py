"""`prm:MODEL`: a local process reward model scores every step of a response in ONE forward pass.

The seeds ran one forward pass per step prefix, which costs O(K) passes over a growing prefix
for K steps. A causal model's output at a position depends only on the tokens before it, so
placing a separator after every step and reading the model at each separator gives the same
numbers from a single pass (tests compare against the per-prefix computation).

Styles (the conventions of the public model cards; every string is an option so other PRMs of
the same shape work):

- ``qwen`` (Qwen2.5-Math-PRM): the chat template with a system prompt, the user turn is the
  problem, the assistant turn is the steps each followed by ``<extra_0>``; the score is class
  ``class_index`` of the softmax of the model's 2-class token head at each separator.
- ``shepherd`` (Math-Shepherd): raw text ``"{problem} {step1} ки\\n{step2} ки..."``; the score is
  P(+) of the softmax over the ``+``/``-`` logits at each tag.
- ``yesno`` (GenRM-style): a verification question after each step; the score is
  P(Yes)/(P(Yes)+P(No)) of the next token after the question.

The candidate tokens are the single token each word becomes when written after the separator
with one space (``" ки +"`` → ``▁+`` for Math-Shepherd's tokenizer, as its card uses).

torch and transformers are imported inside the functions here: `import labeler` stays light.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

from labeler.judges.base import Item, Judge, Verdict
from labeler.judges.prm_load import (
    PRM_SUFFIX,
    TOKENIZER_FILES,
    files_digest,
    local_identity,
    model_folder,
    require_finished_reward_model,
)
from schemas.errors import UserError
from schemas.ids import sha256_hex
from schemas.prm_layout import QWEN_SYSTEM, Layout, render, score_positions  # noqa: F401 - re-exported

PRM_VERSION = 2  # 2: the fingerprint names the loaded class, tokenizer and remote code
DEFAULTS: dict[str, tuple[str, str | None, str | None]] = {
    # style: (separator, positive token, negative token)
    "qwen": ("<extra_0>", None, None),
    "shepherd": (" ки", "+", "-"),
    "yesno": ("\nIs this step correct (Yes/No)?", "Yes", "No"),
}


def candidate_id(tokenizer: Any, sep: str, word: str) -> int:
    """The token id ``word`` is read as right after the separator (see the module docstring)."""
    ctx = tokenizer.encode(sep, add_special_tokens=False)
    full = tokenizer.encode(sep + " " + word, add_special_tokens=False)
    if len(full) == len(ctx) + 1 and full[: len(ctx)] == ctx:
        return full[-1]
    own = tokenizer.encode(word, add_special_tokens=False)
    if not own:
        raise UserError(f"token {word!r} encodes to nothing with this tokenizer")
    if len(own) != 1:
        raise UserError(f"token {word!r} is {len(own)} tokens with this tokenizer "
                        f"({tokenizer.convert_ids_to_tokens(own)}); the PRM reads the probability "
                        "of ONE token: pass --positive-token/--negative-token words that are one "
                        "token each")
    return own[0]


@dataclass
class Encoded:
    """One response, tokenized: ids (truncated to the limit) and each step's score position."""

    ids: list[int]
    positions: list[int | None]
    total_tokens: int
    note: str | None = None


class PRMJudge(Judge):
    """Local PRM; forwards run in a worker thread, one at a time (a lock), so the engine's event
    loop stays free while concurrent batches don't oversubscribe the device."""

    price_model = None

    def __init__(self, model: str, config: Any) -> None:
        if not model:
            raise UserError("prm needs a model: --judge prm:PATH_OR_HUB_ID")
        require_finished_reward_model(model, "prm")
        style = config.style or "qwen"
        if style not in DEFAULTS:
            raise UserError(f"unknown prm style '{style}'; choose qwen, shepherd or yesno")
        sep, pos, neg = DEFAULTS[style]
        self.model_name = model
        self.style = style
        self.sep = config.step_separator or sep
        self.positive = config.positive_token or pos
        self.negative = config.negative_token or neg
        self.class_index = int(config.class_index)
        self.name = f"prm:{model}"
        self.batch_size = max(1, int(config.prm_batch_size)) * 8  # a pool, length-sorted inside
        self.forward_batch = max(1, int(config.prm_batch_size))
        self.padding_side = "right"
        self._lock = threading.Lock()
        self._load(config)

    # -- loading ---------------------------------------------------------------------------
    def _load(self, config: Any) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

        from labeler.judges.prm_load import load_two_way_model

        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        default_dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype_name = config.dtype or default_dtype
        dtype = getattr(torch, self.dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise UserError(f"unknown dtype '{self.dtype_name}'; use bfloat16, float16 or float32")
        remote = bool(config.trust_remote_code)
        try:
            # A Qwen-style PRM is built by our own loader: its config needs no remote code either.
            raw, _ = PretrainedConfig.get_config_dict(self.model_name)
            builtin = any(str(a).endswith(PRM_SUFFIX) for a in raw.get("architectures") or [])
            code = remote and not builtin
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_name, trust_remote_code=code)
            model_config = AutoConfig.from_pretrained(self.model_name, trust_remote_code=code)
        except (OSError, ValueError) as exc:
            raise UserError(_load_error(self.model_name, exc)) from exc
        if not self.tokenizer.is_fast:
            raise UserError(f"prm needs a fast tokenizer (character offsets); '{self.model_name}' has none")
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": remote}
        if self.device.type == "cuda":
            kwargs["attn_implementation"] = "sdpa"
        archs = list(getattr(model_config, "architectures", None) or [])
        self.trust_remote_code = remote
        self.auto_map = getattr(model_config, "auto_map", None)
        try:
            if self.style == "qwen":
                loaded = load_two_way_model(self.model_name, archs, kwargs, remote, self.class_index)
                self.model, self._logits_at = loaded.model, loaded.logits_at
                self.model_class = loaded.model_class
            else:
                self.model = AutoModelForCausalLM.from_pretrained(self.model_name, **kwargs)
                self.model_class = type(self.model).__name__
        except (OSError, ValueError) as exc:
            raise UserError(_load_error(self.model_name, exc)) from exc
        self.model = self.model.to(self.device).eval()
        limits = [getattr(model_config, "max_position_embeddings", None)]
        if config.max_length:
            limits.append(int(config.max_length))
        self.max_length = min(int(x) for x in limits if x) if any(limits) else 4096
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.style == "qwen":
            if len(self.tokenizer.encode(self.sep, add_special_tokens=False)) != 1:
                raise UserError(f"separator {self.sep!r} is not one token of '{self.model_name}'; "
                                "pass --step-separator with the PRM's step token")
            self.candidates = None
        else:
            self.candidates = [candidate_id(self.tokenizer, self.sep, self.positive),
                               candidate_id(self.tokenizer, self.sep, self.negative)]
        self.commit = getattr(model_config, "_commit_hash", None) or local_identity(self.model_name)
        folder = model_folder(self.model_name)
        self.tokenizer_digest = files_digest(folder, TOKENIZER_FILES)
        self.remote_code_digest = files_digest(folder, suffix=".py") if remote else None

    def fingerprint_parts(self) -> dict[str, Any]:
        return {
            "version": PRM_VERSION, "model": self.model_name, "commit": self.commit,
            "style": self.style, "separator": self.sep, "positive": self.positive,
            "negative": self.negative, "class_index": self.class_index,
            "system": QWEN_SYSTEM if self.style == "qwen" else None,
            "max_length": self.max_length, "dtype": self.dtype_name,
            # What was actually loaded and how the text becomes tokens (#16 item 10): the same
            # name may resolve to another class with --trust-remote-code, or to other files.
            "model_class": self.model_class, "trust_remote_code": self.trust_remote_code,
            "auto_map": self.auto_map, "remote_code": self.remote_code_digest,
            "tokenizer_files": self.tokenizer_digest,
            "chat_template": sha256_hex(getattr(self.tokenizer, "chat_template", None) or "")[:16],
        }

    def estimate_tokens(self, item: Item) -> tuple[int, int]:
        text = render(self.style, self.tokenizer, item.prompt, item.steps, self.sep).text
        return len(text) // 4 + 1, 0

    # -- scoring ---------------------------------------------------------------------------
    def encode(self, item: Item) -> Encoded:
        """Tokenize a response and locate each step's score token through character offsets
        (robust to a step that itself contains the separator text)."""
        layout = render(self.style, self.tokenizer, item.prompt, list(item.steps), self.sep)
        enc = self.tokenizer(layout.text, add_special_tokens=layout.add_special_tokens)
        ids = list(enc["input_ids"])
        positions = score_positions(enc, layout.ends)
        note = None
        if len(ids) > self.max_length:
            cut = sum(p is not None and p < self.max_length for p in positions)
            note = (f"response is {len(ids)} tokens, over the limit of {self.max_length}; "
                    f"steps {cut + 1}..{len(positions)} not scored")
            positions = [p if p is not None and p < self.max_length else None for p in positions]
            total, ids = len(ids), ids[: self.max_length]
            return Encoded(ids, positions, total, note)
        return Encoded(ids, positions, len(ids), note)

    def score_encoded(self, batch: list[Encoded]) -> list[list[float | None]]:
        """One forward pass over ``batch`` (padded on :attr:`padding_side`)."""
        import torch

        width = max(len(e.ids) for e in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        offsets = []
        for b, e in enumerate(batch):
            off = width - len(e.ids) if self.padding_side == "left" else 0
            input_ids[b, off: off + len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[b, off: off + len(e.ids)] = 1
            offsets.append(off)
        # Explicit positions: left padding must not shift the rotary positions of real tokens.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        rows, cols, owner = [], [], []
        for b, e in enumerate(batch):
            for k, p in enumerate(e.positions):
                if p is not None:
                    rows.append(b)
                    cols.append(p + offsets[b])
                    owner.append((b, k))
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device),
                  "position_ids": position_ids.to(self.device)}
        with torch.inference_mode():
            r = torch.tensor(rows, device=self.device, dtype=torch.long)
            c = torch.tensor(cols, device=self.device, dtype=torch.long)
            if self.style == "qwen":
                logits = self._logits_at(inputs, r, c).float()
                probs = torch.softmax(logits, dim=-1)[:, self.class_index]
            else:
                probs = self._candidate_probs(inputs, r, c)
        values = probs.cpu().tolist()
        out: list[list[float | None]] = [[None] * len(e.positions) for e in batch]
        for (b, k), v in zip(owner, values, strict=True):
            out[b][k] = float(v)
        return out

    def _candidate_probs(self, inputs: dict[str, Any], r: Any, c: Any) -> Any:
        """P(positive) over the two candidate tokens, computing the LM head only at the score
        positions and only for the two candidate rows (the full vocabulary logits of every
        position would dwarf the rest of the pass)."""
        import torch

        decoder = getattr(self.model, "get_decoder", lambda: None)()
        head = self.model.get_output_embeddings()
        if decoder is None or head is None or not hasattr(head, "weight"):
            logits = self.model(**inputs).logits[r, c][:, self.candidates].float()
            return torch.softmax(logits, dim=-1)[:, 0]
        hidden = decoder(**inputs).last_hidden_state[r, c]
        idx = torch.tensor(self.candidates, device=hidden.device)
        bias = head.bias[idx] if getattr(head, "bias", None) is not None else None
        logits = torch.nn.functional.linear(hidden, head.weight[idx], bias).float()
        cfg = self.model.config
        if getattr(cfg, "logit_scale", None):
            logits = logits * cfg.logit_scale
        if getattr(cfg, "final_logit_softcapping", None):
            cap = cfg.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return torch.softmax(logits, dim=-1)[:, 0]

    def score_items(self, items: list[Item]) -> list[Verdict]:
        """Synchronous scoring: length-sorted batches of ``prm_batch_size`` responses."""
        encoded = [self.encode(item) for item in items]
        order = sorted(range(len(items)), key=lambda i: len(encoded[i].ids))
        scores: list[list[float | None]] = [[] for _ in items]
        with self._lock:
            for start in range(0, len(order), self.forward_batch):
                chunk = order[start: start + self.forward_batch]
                for i, s in zip(chunk, self.score_encoded([encoded[i] for i in chunk]), strict=True):
                    scores[i] = s
        verdicts = []
        for e, s in zip(encoded, scores, strict=True):
            raw: dict[str, Any] = {"style": self.style, "tokens": e.total_tokens}
            error = None
            if e.note:
                raw["truncated"] = e.note
                if all(v is None for v in s):
                    error = e.note
            verdicts.append(Verdict(scores=s, raw=json.dumps(raw), input_tokens=e.total_tokens,
                                    error=error))
        return verdicts

    async def judge(self, items: list[Item]) -> list[Verdict]:
        return await asyncio.to_thread(self.score_items, items)

    async def aclose(self) -> None:
        self.model = None


def _load_error(model: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = " (pass --trust-remote-code if you trust this repo)" if "trust_remote_code" in str(exc) else ""
    return f"cannot load PRM '{model}': {first}{hint}"


def make_prm(model: str, config: Any) -> PRMJudge:
    """Registry factory: ``prm:PATH_OR_HUB_ID`` with the prm options of JudgeConfig."""
    return PRMJudge(model, config)
