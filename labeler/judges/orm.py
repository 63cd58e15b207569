"""`orm:DIR`: a local outcome reward model — one score per solution, written on its last step.

An ORM (`stepdpo train-rm --kind outcome`, or any 2-label ``*ForSequenceClassification``) reads
problem + solution in the qwen chat layout of `schemas.prm_layout` (steps closed by newlines, the
same text the trainer built) and gives P(class 1) at the last token. Steps before the last get
null: the model said nothing about them, and `pairs`/aggregations skip nulls. A model without a
2-way classification head is refused at load.

torch and transformers are imported inside the functions: `import labeler` stays light.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from labeler.judges.base import Item, Judge, Verdict
from labeler.judges.prm_load import (
    TOKENIZER_FILES,
    files_digest,
    local_identity,
    model_folder,
    require_finished_reward_model,
)
from schemas.errors import UserError
from schemas.ids import sha256_hex
from schemas.prm_layout import render

ORM_VERSION = 1


class ORMJudge(Judge):
    """Local sequence classifier; forwards in a worker thread, one at a time."""

    price_model = None

    def __init__(self, model: str, config: Any) -> None:
        if not model:
            raise UserError("orm needs a model: --judge orm:PATH_OR_HUB_ID")
        require_finished_reward_model(model, "orm")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_name, self.name = model, f"orm:{model}"
        self.class_index = int(config.class_index)
        self.forward_batch = max(1, int(config.prm_batch_size))
        self.batch_size = self.forward_batch * 8
        self._lock = threading.Lock()
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype_name = config.dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        dtype = getattr(torch, self.dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise UserError(f"unknown dtype '{self.dtype_name}'; use bfloat16, float16 or float32")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=dtype)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load ORM '{model}': {first}") from exc
        labels = int(self.model.config.num_labels)
        if labels != 2 or not 0 <= self.class_index < 2:
            raise UserError(f"'{model}' has a {labels}-way classification head; orm: reads a 2-way one "
                            "(what `stepdpo train-rm --kind outcome` saves)")
        self.model = self.model.to(self.device).eval()
        self.pad_id = self.model.config.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.max_length = int(config.max_length or getattr(self.model.config, "max_position_embeddings", 4096))
        folder = model_folder(model)
        self.identity = {"tokenizer_files": files_digest(folder, TOKENIZER_FILES),
                         "model_class": type(self.model).__name__,
                         "chat_template": sha256_hex(getattr(self.tokenizer, "chat_template", None) or "")[:16],
                         "commit": getattr(self.model.config, "_commit_hash", None) or local_identity(model)}

    def fingerprint_parts(self) -> dict[str, Any]:
        return {"version": ORM_VERSION, "model": self.model_name, "class_index": self.class_index,
                "dtype": self.dtype_name, "max_length": self.max_length, **self.identity}

    def encode(self, item: Item) -> list[int]:
        layout = render("qwen", self.tokenizer, item.prompt, list(item.steps), "\n")
        return list(self.tokenizer(layout.text, add_special_tokens=layout.add_special_tokens)["input_ids"])

    def score_items(self, items: list[Item]) -> list[Verdict]:
        import torch

        encoded = [self.encode(it) for it in items]
        probs: list[float | None] = [None] * len(items)
        order = [i for i in sorted(range(len(items)), key=lambda i: len(encoded[i]))
                 if len(encoded[i]) <= self.max_length and items[i].steps]
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.forward_batch):
                chunk = order[start: start + self.forward_batch]
                width = max(len(encoded[i]) for i in chunk)
                ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for b, i in enumerate(chunk):
                    ids[b, : len(encoded[i])] = torch.tensor(encoded[i])
                    mask[b, : len(encoded[i])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for i, p in zip(chunk, torch.softmax(logits.float(), -1)[:, self.class_index].tolist(), strict=True):
                    probs[i] = float(p)
        verdicts = []
        for item, ids, p in zip(items, encoded, probs, strict=True):
            raw = json.dumps({"tokens": len(ids), "outcome": p})
            scores: list[float | None] = [None] * len(item.steps)
            error = None
            if p is None:
                error = ("no steps" if not item.steps else
                         f"response is {len(ids)} tokens, over the limit of {self.max_length}")
            else:
                scores[-1] = p
            verdicts.append(Verdict(scores=scores, raw=raw, input_tokens=len(ids), error=error))
        return verdicts

    async def judge(self, items: list[Item]) -> list[Verdict]:
        return await asyncio.to_thread(self.score_items, items)

    async def aclose(self) -> None:
        self.model = None


def make_orm(model: str, config: Any) -> ORMJudge:
    """Registry factory: ``orm:PATH_OR_HUB_ID`` (uses the prm options --device, --dtype,
    --prm-batch-size, --max-length, --class-index)."""
    return ORMJudge(model, config)
