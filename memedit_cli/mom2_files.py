"""The statistics on disk: one safetensors file per module (the mean k kᵀ and the
token count), written to every cache dir, and the resumable partial sums."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from memedit_cli.dist import all_reduce
from memedit_cli.fileio import write_atomic

if TYPE_CHECKING:  # stats.py imports this module
    from memedit_cli.stats import CorpusSpec

CHECKPOINT_MIN_S = 20.0


def mom2_bytes(mom2: torch.Tensor, spec: CorpusSpec, name: str) -> bytes:
    from safetensors.torch import save

    return save({"mom2": mom2.contiguous(), "count": torch.tensor(spec.tokens, dtype=torch.int64)},
                metadata={"format": "memedit-mom2-v1", "module": name, "corpus": spec.key()})


def load_mom2(path: Path, tokens: int) -> torch.Tensor | None:
    """The cached mean, or None when absent, unreadable, or not over `tokens` tokens (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        t = load_file(str(path))
        mom2, count = t["mom2"], int(t["count"])
    except Exception:
        return None
    if mom2.dtype != torch.float64 or mom2.dim() != 2 or mom2.shape[0] != mom2.shape[1] or count != tokens:
        return None
    return mom2


def save_everywhere(paths: list[Path], data: bytes) -> None:
    """Atomic writes to each path; a cache dir that cannot be written is reported, not fatal."""
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except OSError as e:
            print(f"memedit: warning: cannot write {path}: {e.strerror}", file=sys.stderr)


def checkpoint(path: Path, sums, counts, rows: int, spec, rank: int, world: int) -> None:
    """partial.safetensors: the sums and counts over global rows [0, rows), written by rank 0."""
    from safetensors.torch import save

    tensors = {}
    for name, s in sums.items():
        if world > 1:
            s = s.clone()
            all_reduce(s)
        tensors[f"sum.{name}"] = s.cpu()
    c = torch.tensor([counts[n] for n in sums], dtype=torch.float64)
    if world > 1:
        all_reduce(c)
    for name, v in zip(sums, c.tolist()):
        tensors[f"count.{name}"] = torch.tensor(int(v), dtype=torch.int64)
    tensors["rows"] = torch.tensor(rows, dtype=torch.int64)
    if rank == 0:
        data = save(tensors, metadata={"format": "memedit-mom2-partial-v1", "corpus": spec.key(),
                                       "modules": json.dumps(list(sums))})
        save_everywhere([path], data)


def find_partial(spec_dirs: list[Path], spec: CorpusSpec, missing: list[str]) -> dict | None:
    """A checkpoint of this spec covering every missing module, to resume from (first found)."""
    from safetensors import safe_open

    for sd in spec_dirs:
        path = sd / "partial.safetensors"
        if not path.is_file():
            continue
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                modules = json.loads(meta.get("modules", "[]"))
                rows = int(f.get_tensor("rows"))
        except Exception:
            continue
        if meta.get("corpus") == spec.key() and set(missing) <= set(modules) and 0 < rows:
            return {"path": str(path), "rows": rows, "modules": modules}
    return None


def load_partial(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)
