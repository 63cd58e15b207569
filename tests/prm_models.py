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


QWEN_PRM_ARCH = "Qwen2ForProcessRewardModel"
# The released repo's remote code starts like this; transformers 5 has no such module, so a
# loader that ran it would fail: the tests prove ours never does.
RELEASED_REMOTE_CODE = "from transformers.modeling_attn_mask_utils import AttentionMaskConverter\n"
RELEASED_REMOTE_CONFIG = "raise ImportError('remote config code ran')\n"


def build_released_qwen_prm(out: Path, seed: int = 0, hidden: int = 64, shards: int = 2) -> Path:
    """A tiny checkpoint in exactly the Qwen2.5-Math-PRM release layout: config.json with
    architectures ["Qwen2ForProcessRewardModel"] and an ``auto_map`` to remote code, weights
    ``model.*`` (a Qwen2Model) and ``score.0.*`` / ``score.2.*`` (Linear(h,h) → ReLU →
    Linear(h,2)) in sharded safetensors with an index, no ``lm_head``."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    from trainer.tiny_model import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(extra_tokens=["<extra_0>", "<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    base = Qwen2Model(config)
    score = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))
    tensors = {f"model.{k}": v.contiguous() for k, v in base.state_dict().items()}
    tensors.update({f"score.{k}": v.contiguous() for k, v in score.state_dict().items()})
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {k: tensors[k] for k in names[i::shards]}
        save_file(chunk, str(out / part), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, part))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = config.to_dict()
    cfg["architectures"] = [QWEN_PRM_ARCH]
    cfg["auto_map"] = {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                       "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "modeling_qwen2_rm.py").write_text(RELEASED_REMOTE_CODE)
    (out / "configuration_qwen2_rm.py").write_text(RELEASED_REMOTE_CONFIG)
    return out


def official_qwen_prm_scores(folder: Path, prompt: str, steps: list[str]) -> list[float]:
    """The Qwen2.5-Math-PRM model card's computation, with the released module layout rebuilt
    by hand (``model`` + ``score``, loaded strictly from every shard): chat template with the
    system prompt, steps joined by ``<extra_0>``, softmax over the 2 labels of ``score`` at
    every position, class 1 read where the token is ``<extra_0>``."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    class Released(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.model = Qwen2Model(config)
            h = config.hidden_size
            self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))

        def forward(self, input_ids):
            return (self.score(self.model(input_ids=input_ids).last_hidden_state),)

    tok = AutoTokenizer.from_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    model = Released(Qwen2Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "auto_map")}))
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    model.load_state_dict(state, strict=True)
    model.eval()
    messages = [
        {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = tok.encode(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=input_ids)[0]
    step_sep_id = tok.encode("<extra_0>")[0]
    token_masks = input_ids == step_sep_id
    probabilities = torch.softmax(logits, dim=-1) * token_masks.unsqueeze(-1)
    sample = probabilities[0]
    return sample[sample != 0].view(-1, 2)[:, 1].tolist()
