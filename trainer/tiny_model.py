"""Build a tiny, randomly initialised causal LM plus a BPE tokenizer, fully offline.

Tests, the demo and the benchmark need a real `from_pretrained`-loadable model folder without
touching the Hub. Training a byte-level BPE on the bundled GSM8K sample keeps the vocabulary
small (fast forward passes) while still splitting math text the way real tokenizers do, so the
step-token alignment is exercised on realistic merges rather than on characters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

DEFAULT_TEXT = Path(__file__).resolve().parent.parent / "data" / "gsm8k" / "test_sample.jsonl"
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
ARCHS = ("llama", "qwen2")


def _sample_lines(path: Path) -> Iterator[str]:
    """Yield question and answer text from a GSM8K-style JSONL (or plain lines of any text)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield line
                continue
            if isinstance(row, dict):
                for key in ("question", "answer", "problem", "solution", "text"):
                    if isinstance(row.get(key), str):
                        yield row[key]
            elif isinstance(row, str):
                yield row


def build_tokenizer(
    vocab_text: Iterable[str] | str | Path | None = None,
    extra_tokens: Sequence[str] = (),
    vocab_size: int = 1024,
):
    """Train a byte-level BPE (any string round-trips, so no <unk> ever appears in a step)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_text is None:
        if not DEFAULT_TEXT.is_file():  # an installed wheel: the sample ships inside `stepdpo`
            raise ValueError(f"no default tokenizer text at {DEFAULT_TEXT} (not a checkout): pass vocab_text, "
                             "e.g. stepdpo.bundled.bundled_file('gsm8k/test_sample.jsonl')")
        texts: Iterable[str] = list(_sample_lines(DEFAULT_TEXT))
    elif isinstance(vocab_text, (str, Path)) and Path(vocab_text).is_file():
        texts = list(_sample_lines(Path(vocab_text)))
    elif isinstance(vocab_text, str):
        texts = [vocab_text]
    else:
        texts = list(vocab_text)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS, UNK, *extra_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        model_max_length=2048,
    )
    return fast


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "llama",
    vocab_text: Iterable[str] | str | Path | None = None,
    extra_tokens: Sequence[str] = (),
    hidden: int = 64,
    layers: int = 2,
    token_classes: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny model + tokenizer to `out_dir` and return the folder.

    `token_classes=2` builds an `AutoModelForTokenClassification` head instead (a stand-in PRM).
    Same seed and text give identical weights and vocabulary, so tests can compare runs.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForTokenClassification,
        LlamaConfig,
        Qwen2Config,
    )

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_text, extra_tokens)
    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    if token_classes:
        config.num_labels = int(token_classes)
        model = AutoModelForTokenClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-model"))
