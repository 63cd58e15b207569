"""Tiny PRMs for tests and the benchmark, built offline with trainer/tiny_model.py.

One per style: a Qwen2 with a 2-class token head and a ChatML template for ``qwen``; causal LMs
for ``shepherd`` (the ``ки`` tag added as a token) and ``yesno`` (Yes/No added as tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.tiny_model import build_tiny_model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "gsm8k" / "test_sample.jsonl"


def build_prm(out: Path, style: str, seed: int = 0) -> Path:
    """A tiny PRM folder for ``style`` (deterministic for a given seed)."""
    if style == "qwen":
        path = build_tiny_model(out, arch="qwen2", token_classes=2, seed=seed,
                                extra_tokens=["<extra_0>", "<|im_start|>", "<|im_end|>"])
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        tok.chat_template = CHATML
        tok.save_pretrained(path)
        return path
    if style == "shepherd":
        return build_tiny_model(out, arch="llama", extra_tokens=["ки"], seed=seed)
    if style == "yesno":
        return build_tiny_model(out, arch="qwen2", extra_tokens=["Yes", "No"], seed=seed)
    raise ValueError(style)


def gsm8k_sample(n: int, path: Path = SAMPLE) -> list[tuple[str, list[str]]]:
    """(question, steps) of the first ``n`` GSM8K rows: steps are the answer lines before '####'."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out.append((row["question"], row["answer"].split("\n")[:-1]))
            if len(out) == n:
                break
    return out
