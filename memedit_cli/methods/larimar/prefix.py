"""Experimental `mode=prefix`: the memory readout as a key/value prefix, by a trained adapter.

The paper conditions its decoder on the readout z_r by projecting it to one
key/value prefix per layer, and trains the decoder to read it. memedit keeps
the decoder frozen and trains only the projection (`PrefixAdapter`, a linear
map C -> layers x (k, v) x kv_heads x m x head_dim) on the paper's
reconstruction objective: write a batch of sentences into a fresh memory,
read each back, and maximize the likelihood of the sentence after the prefix
made from its readout. `memedit larimar-train --corpus FILE` trains it and
keeps it in the per-user cache, keyed by the base model; docs/methods/larimar.md
says what it reached (it stays experimental).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from memedit_cli.errors import HparamsError, UserError
from memedit_cli.lm.cache import cache_kwargs
from memedit_cli.methods.larimar.modeling_memedit_larimar import PrefixAdapter, kv_shape, layer_devices


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300  # Adam steps
    lr: float = 1e-3
    batch: int = 8  # sentences per step, written together into one memory
    prefix_tokens: int = 1  # m: prefix positions per layer (the paper: 1)
    memory_size: int = 64  # K of the memory each batch is written into and read back from
    max_tokens: int = 48  # sentences are cut to this many tokens
    seed: int = 0
    encoder: str = "auto"  # as Larimar's hparam: the adapter only fits edits that use the same encoder
    encoder_layer: int = -1

    def check(self) -> str | None:
        for name in ("steps", "batch", "prefix_tokens", "memory_size", "max_tokens"):
            if getattr(self, name) < 1:
                return f"{name} must be >= 1, got {getattr(self, name)}"
        if not self.lr > 0:
            return f"lr must be > 0, got {self.lr}"
        return None


def read_corpus(path: str) -> list[str]:
    """Sentences: one per non-empty line, or the "text" field of each JSONL line."""
    p = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the corpus {path}: {e}") from None
    if p.suffix == ".jsonl":
        try:
            lines = [str(json.loads(ln)["text"]).strip() for ln in lines]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: each JSONL line needs a \"text\" field ({e})") from None
    lines = [ln for ln in lines if ln]
    if len(lines) < 2:
        raise UserError(f"{path}: the corpus needs at least 2 sentences, found {len(lines)}")
    return lines


def adapters_dir(cache_dir: Path, model_key: str) -> Path:
    return cache_dir / "larimar" / hashlib.sha256(model_key.encode()).hexdigest()[:16]


def train(model, tok, encoder, texts: list[str], s: TrainSettings, progress=None) -> tuple[dict, list[float]]:
    """Train a PrefixAdapter with `model` frozen; returns its tensors and the loss of each step."""
    from memedit_cli.lm.models import input_device
    from memedit_cli.methods.larimar.memory import EpisodicMemory

    device = input_device(model)
    gen = torch.Generator().manual_seed(s.seed)
    Z = encoder.encode(texts).double()  # (N, C), fixed: the encoder is not trained
    torch.manual_seed(s.seed)
    adapter = PrefixAdapter(Z.shape[1], *kv_shape(model.config), s.prefix_tokens).to(device)
    opt = torch.optim.Adam(adapter.parameters(), lr=s.lr)
    losses = []
    steps = range(s.steps) if progress is None else progress(range(s.steps))
    for _ in steps:
        idx = torch.randint(len(texts), (min(s.batch, len(texts)),), generator=gen)
        memory = EpisodicMemory(s.memory_size, Z.shape[1])
        memory.write(Z[idx])
        zr = memory.read(Z[idx]).float().to(device)  # (B, C): what the memory gives back for each sentence
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                  max_length=s.max_tokens).to(device)
        logits = forward_with_prefix(model, adapter, zr, enc["input_ids"], enc["attention_mask"])
        labels = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 labels.reshape(-1), ignore_index=-100)
        if not torch.isfinite(loss):
            raise UserError("larimar-train: the loss is not finite; nothing was saved. Try a smaller --lr")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    tensors = {f"adapter.{k}": v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    return {**tensors, "adapter.m": torch.tensor(s.prefix_tokens)}, losses


def forward_with_prefix(model, adapter, zr, input_ids, attention_mask):
    """(B, T, V) logits of `input_ids` read after the prefix made from readouts zr (B, C)."""
    from transformers import DynamicCache

    m = adapter.m
    cache = DynamicCache(config=model.config)
    devices = layer_devices(model)
    for layer, (k, v) in enumerate(adapter(zr)):
        cache.update(k.to(devices[layer], model.dtype), v.to(devices[layer], model.dtype), layer)
    full = torch.cat([torch.ones_like(attention_mask[:, :m]), attention_mask], 1)
    pos = (full.cumsum(-1) - 1).clamp(min=0)[:, m:]
    return model(input_ids=input_ids, attention_mask=full, position_ids=pos, **cache_kwargs(model, cache)).logits


def _candidates(cache_dirs, model_key: str) -> list[Path]:
    found = [p for d in cache_dirs for p in adapters_dir(Path(d), model_key).glob("*.safetensors")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_adapter(cache_dirs, model_key: str, adapter_id: str, encoder: str, encoder_layer: int) -> str:
    """The id of the adapter to use: `adapter_id`, or the latest trained for this base model."""
    found = _candidates(cache_dirs, model_key)
    if adapter_id:
        found = [p for p in found if p.stem == adapter_id]
    if not found:
        which = f"adapter {adapter_id!r}" if adapter_id else "an adapter"
        raise HparamsError(f"mode=prefix needs {which} trained for this base model: "
                           "run `memedit larimar-train --corpus FILE` first")
    try:
        meta = json.loads(found[0].with_suffix(".json").read_text())
    except (OSError, ValueError):
        raise HparamsError(f"adapter {found[0].stem} has no readable record ({found[0].with_suffix('.json')}); "
                           "train it again with `memedit larimar-train`") from None
    if (meta["encoder"], meta["encoder_layer"]) != (encoder, encoder_layer):
        raise HparamsError(f"adapter {found[0].stem} was trained on encoder={meta['encoder']}, encoder_layer="
                           f"{meta['encoder_layer']}, not {encoder}, {encoder_layer}; apply with those settings "
                           "or train another adapter (larimar-train --set encoder=...)")
    return found[0].stem


def load_adapter(cache_dirs, model_key: str, adapter_id: str) -> dict:
    from safetensors.torch import load_file

    for p in _candidates(cache_dirs, model_key):
        if p.stem == adapter_id:
            return load_file(str(p))
    raise UserError(f"adapter {adapter_id} is no longer in the cache; train it again with `memedit larimar-train`")


def save_adapter(cache_dir: Path, model_key: str, tensors: dict, meta: dict) -> dict:
    """Write an adapter (its tensors, then its record) into `cache_dir`; returns the record with id and path."""
    from safetensors.torch import save

    from memedit_cli.store.fileio import write_atomic

    data = save(tensors)
    adapter_id = hashlib.sha256(data).hexdigest()[:16]
    folder = adapters_dir(cache_dir, model_key)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{adapter_id}.safetensors", data)
    record = {"id": adapter_id, **meta}
    write_atomic(folder / f"{adapter_id}.json", (json.dumps(record, indent=2) + "\n").encode())
    return {**record, "path": str(folder / f"{adapter_id}.safetensors")}
