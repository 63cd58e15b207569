"""Loading a local PRM for `prm:` and deciding, at load time, whether it can give scores at all.

Three model shapes give a per-token 2-way output that ``--style qwen`` reads:

- ``*ForProcessRewardModel`` (Qwen2.5-Math-PRM and what ``stepdpo train-rm`` saves): a base
  model saved as ``model.*`` plus ``score`` = Linear(h, h) → ReLU → Linear(h, 2). We build it
  ourselves from the backbone's own transformers class and the ``score.*`` tensors, as vLLM
  and SGLang do, so no remote code runs: the released remote code imports
  ``transformers.modeling_attn_mask_utils``, which transformers 5 no longer has.
- ``*ForTokenClassification`` with ``num_labels == 2``.
- with ``--trust-remote-code``, whatever the repo's code builds, checked by one probe forward.

Anything else (a base model, a causal LM) is refused with a hint: softmaxing the hidden units of
a bare ``Qwen2Model`` would give numbers that look like scores and get cached as such.

torch and transformers are imported inside the functions: `import labeler` stays light.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import UserError
from schemas.folders import require_complete
from schemas.ids import sha256_hex

PRM_SUFFIX = "ForProcessRewardModel"
TOKEN_CLASSIFICATION_SUFFIX = "ForTokenClassification"
# Files whose content changes what a tokenizer produces (any that exist are hashed).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json")


@dataclass
class LoadedHead:
    """A model that maps (input_ids, attention_mask, position_ids) and score positions (rows,
    cols) to 2-way logits there; ``model_class`` names what was built, for the fingerprint."""

    model: Any
    logits_at: Callable[[dict[str, Any], Any, Any], Any]
    model_class: str


# What `stepdpo train-rm` writes into its --output_dir: ``complete: false`` from its start, the
# finished record at its end. (labeler may not import stepdpo or trainer, so the name lives here.)
REWARD_MODEL_MANIFEST = "reward_model.json"


def require_finished_reward_model(name: str, judge: str) -> None:
    """Refuse, before loading, a local folder that a killed (or still running) `stepdpo
    train-rm` left: its weights may be half-trained or half-written. A folder without the
    manifest (a hub model, one saved by another tool) is not ours to judge: accepted."""
    path = Path(name)
    if path.is_dir():
        require_complete(path, REWARD_MODEL_MANIFEST, required=False,
                         fix=f"rerun `stepdpo train-rm ... --output_dir {path}` to the end before judging with "
                             f"{judge}:{name}")


def model_folder(name: str) -> Path | None:
    """The local folder holding ``name``'s files: the path itself, or its hub cache snapshot."""
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from transformers.utils import cached_file

        found = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False)
    except Exception:  # offline and not cached: the commit hash identifies it instead
        return None
    return Path(found).parent if found else None


def files_digest(folder: Path | None, names: tuple[str, ...] = (), suffix: str | None = None) -> str | None:
    """sha256 of the named files (or every ``suffix`` file) of ``folder`` that exist."""
    if folder is None:
        return None
    paths = sorted(folder.glob(f"*{suffix}")) if suffix else [folder / n for n in names]
    found = {p.name: p.read_bytes().hex() for p in paths if p.is_file()}
    return sha256_hex(found)[:16] if found else None


def local_identity(model: str) -> str | None:
    """For a local folder (no hub commit): a hash of its config and its weight files' names,
    sizes and modification times, so retrained weights saved into the same folder don't hit
    the cached scores of the old ones (a copied folder only costs a re-scoring)."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    config = folder / "config.json"
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
                   if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    return sha256_hex({"config": config.read_text(encoding="utf-8") if config.exists() else None,
                       "weights": files})[:16]


def _weight_tensors(folder: Path, prefix: str) -> dict[str, Any]:
    """Tensors whose names start with ``prefix`` from a checkpoint folder (single or sharded
    safetensors; a ``.bin`` is read with ``weights_only=True``, never unpickling code)."""
    import torch
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = sorted(folder.glob("*.safetensors"))
    out: dict[str, Any] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = fh.get_tensor(key)
    if not files:
        for f in sorted(folder.glob("*.bin")):
            state = torch.load(f, map_location="cpu", weights_only=True)
            out.update({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return out


def build_score_head(tensors: dict[str, Any], name: str) -> Any:
    """``score`` = Linear(h, h) → ReLU → Linear(h, n) from its saved tensors (``0.*``, ``2.*``)."""
    import torch

    need = {"0.weight", "2.weight"}
    if not need <= set(tensors):
        found = ", ".join(sorted(tensors)) or "none"
        raise UserError(f"'{name}' says it is a process reward model but has no `score` head "
                        f"weights (score.0.weight, score.2.weight; found: {found})")
    inner, hidden = tensors["0.weight"].shape
    labels = tensors["2.weight"].shape[0]
    head = torch.nn.Sequential(
        torch.nn.Linear(hidden, inner, bias="0.bias" in tensors), torch.nn.ReLU(),
        torch.nn.Linear(inner, labels, bias="2.bias" in tensors))
    head.load_state_dict(tensors)
    return head


def _refuse(name: str, archs: list[str], why: str) -> UserError:
    return UserError(
        f"'{name}' ({', '.join(archs) or 'no architectures in config.json'}) {why}: --style qwen "
        f"reads a 2-way step head, as in Qwen2.5-Math-PRM (architectures *{PRM_SUFFIX} with a "
        f"`score` head, what `stepdpo train-rm` saves) or a *{TOKEN_CLASSIFICATION_SUFFIX} model "
        "with 2 labels; a causal LM is scored with --style shepherd or yesno")


def load_two_way_model(name: str, archs: list[str], kwargs: dict[str, Any], remote: bool,
                       class_index: int) -> LoadedHead:
    """Load ``name`` for ``--style qwen``, refusing a model without a 2-way head (see module)."""
    import torch
    from transformers import AutoModel, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    def check_width(width: int) -> None:
        if width != 2 or not 0 <= class_index < width:
            raise _refuse(name, archs, f"has a {width}-way head, not a 2-way one")

    if any(a.endswith(PRM_SUFFIX) for a in archs):
        folder = model_folder(name)
        if folder is None:
            raise UserError(f"cannot find the files of '{name}' (download it first)")
        head = build_score_head(_weight_tensors(folder, "score."), name)
        check_width(head[2].out_features)
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the score.* tensors are "unexpected" to the base model
        try:
            backbone = AutoModel.from_pretrained(name, **{**kwargs, "trust_remote_code": False})
        finally:
            hf_logging.set_verbosity(level)
        head = head.to(dtype=kwargs["dtype"])
        holder = torch.nn.ModuleDict({"model": backbone, "score": head})

        def builtin(inputs: dict[str, Any], r: Any, c: Any) -> Any:
            hidden = holder["model"](**inputs).last_hidden_state[r, c]
            return holder["score"](hidden)

        return LoadedHead(holder, builtin, f"{type(backbone).__name__}+score")
    if any(a.endswith(TOKEN_CLASSIFICATION_SUFFIX) for a in archs):
        model = AutoModelForTokenClassification.from_pretrained(name, **kwargs)
        check_width(int(model.config.num_labels))
    elif remote:
        model = AutoModel.from_pretrained(name, **kwargs)
        with torch.inference_mode():
            probe = model(input_ids=torch.zeros((1, 1), dtype=torch.long))[0]
        check_width(int(probe.shape[-1]))
    else:
        raise _refuse(name, archs, "has no 2-way head")

    def plain(inputs: dict[str, Any], r: Any, c: Any) -> Any:
        return model(**inputs)[0][r, c]

    return LoadedHead(model, plain, type(model).__name__)

