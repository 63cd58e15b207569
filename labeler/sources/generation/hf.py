"""``hf:PATH_OR_ID``: sample a local transformers causal LM, in batches.

Prompts of a batch are left-padded (so every row's new tokens start at the same column) and go
through one ``model.generate`` call; on CUDA the model runs in bfloat16 with SDPA attention, on
CPU in float32. torch and transformers are imported only when this backend is built, so the rest
of the labeler never needs them. Generation runs in a worker thread, one batch at a time, so the
engine's event loop keeps writing shards and the progress line meanwhile.

Sampling is seeded per batch from the first request's seed (``--seed`` and the task key): a
rerun that regenerates the same batch draws the same samples. A row is ``finish_reason=stop``
when the model emitted its EOS token, ``length`` when it hit ``--max-new-tokens``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

from labeler.sources.generation.base import Generation, Generator, GenRequest, Sampling
from schemas.errors import UserError


def model_identity(name: str, config: Any) -> str:
    """The hub commit of a downloaded model, or a hash of a local folder's config and weights
    listing (names and sizes), so retrained weights in the same folder miss the cache."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    path = Path(name)
    if not path.is_dir():
        return "unknown"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


class HFGenerator(Generator):
    price_model = None

    def __init__(self, model: str, *, batch_size: int = 16, device: str | None = None,
                 dtype: str | None = None, trust_remote_code: bool = False) -> None:
        if not model:
            raise UserError("hf needs a model: --generator hf:PATH_OR_HUB_ID")
        try:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise UserError(f"generator 'hf' needs {exc.name}: pip install 'stepwise-dpo[local]'") from exc
        self.name = f"hf:{model}"
        self.model_name = model
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype_name = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        torch_dtype = getattr(torch, self.dtype_name, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise UserError(f"unknown dtype '{self.dtype_name}'; use bfloat16, float16 or float32")
        if model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
            raise UserError(f"hf:{model}: no such model folder")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
            kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
            if self.device.type == "cuda":
                kwargs["attn_implementation"] = "sdpa"
            self.model = AutoModelForCausalLM.from_pretrained(model, **kwargs).to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load model '{model}': {str(exc).splitlines()[0][:300]} (a local folder "
                            "or a hub id; offline, only what is in the hub cache)") from None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_id = self.tokenizer.eos_token_id
        self.identity = model_identity(model, config)
        self._lock = threading.Lock()

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"model": self.model_name, "identity": self.identity, "dtype": self.dtype_name,
                "chat_template": hashlib.sha256(str(self.tokenizer.chat_template or "").encode()).hexdigest()[:16]}

    def render(self, request: GenRequest) -> str:
        """The exact text fed to the model: raw prompt, or the model's chat template, then the prefill."""
        if not request.chat:
            return request.prompt + request.prefill
        if not self.tokenizer.chat_template:
            raise UserError(f"model '{self.model_name}' has no chat template; use --template step-dpo or plain")
        messages = ([{"role": "system", "content": request.system}] if request.system else []) + \
            [{"role": "user", "content": request.prompt}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + request.prefill

    def estimate_tokens(self, request: GenRequest, sampling: Sampling) -> tuple[int, int]:
        # From characters, not the tokenizer: a fast tokenizer's padding settings are shared state,
        # and the worker thread may be mid-call with padding on.
        return len(self.render(request)) // 4 + 1, sampling.max_new_tokens

    def _generate_sync(self, requests: list[GenRequest], sampling: Sampling) -> list[Generation]:
        import torch

        texts = [self.render(r) for r in requests]
        with self._lock, torch.inference_mode():
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            torch.manual_seed(requests[0].seed)
            sample = sampling.temperature > 0
            kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": sample,
                                      "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.eos_id}
            if sample:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            out = self.model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, n_in in zip(out[:, width:].tolist(), prompt_tokens, strict=True):
            stop = self.eos_id is not None and self.eos_id in row
            new = row[:row.index(self.eos_id)] if stop else [t for t in row if t != self.tokenizer.pad_token_id]
            results.append(Generation(text=self.tokenizer.decode(new, skip_special_tokens=True),
                                      finish_reason="stop" if stop else "length",
                                      input_tokens=int(n_in), output_tokens=len(new) + (1 if stop else 0)))
        return results

    async def generate(self, requests: list[GenRequest], sampling: Sampling) -> list[Generation]:
        return await asyncio.to_thread(self._generate_sync, requests, sampling)

    async def aclose(self) -> None:
        self.model = None  # type: ignore[assignment]


def make_hf(model: str, options: Any) -> HFGenerator:
    return HFGenerator(model, batch_size=options.batch_size, device=options.device, dtype=options.dtype,
                       trust_remote_code=options.trust_remote_code)
