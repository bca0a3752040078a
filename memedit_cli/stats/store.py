"""The statistics on disk, the one place their layout is spelled:

    CACHE/stats/MODEL_KEY/SPEC_KEY/MODULE.safetensors    the mean k kᵀ ("mom2") and the token count
    CACHE/stats/MODEL_KEY/SPEC_KEY/partial.safetensors   resumable running sums (see compute.py)

CACHE is a repository's `.memedit/cache` or the per-user cache; every file is
written to each cache dir so repositories of one model share them. A spec is
anything with `key()` and `tokens` (corpus.CorpusSpec).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from memedit_cli.stats.dist import all_reduce
from memedit_cli.store.fileio import write_atomic

CHECKPOINT_MIN_S = 20.0
# the sampling scheme of samples.py, part of spec keys (v1: samples cached, then a second pass over rows of them)
SAMPLES_ID = "model-samples-v2"


def stats_dir(cache_dir: Path, model_key: str, spec) -> Path:
    """The folder of one model's statistics over one corpus spec."""
    return Path(cache_dir) / "stats" / model_key / spec.key()


def module_file(spec_dir: Path, name: str) -> Path:
    return Path(spec_dir) / f"{name}.safetensors"


def partial_file(spec_dir: Path) -> Path:
    return Path(spec_dir) / "partial.safetensors"


def mom2_bytes(mom2: torch.Tensor, spec, name: str) -> bytes:
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
    """partial.safetensors: the sums and counts over global units [0, rows) (rows of the corpus, or
    batches of samples), written by rank 0."""
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


def find_partial(spec_dirs: list[Path], spec, missing: list[str]) -> dict | None:
    """A checkpoint of this spec covering every missing module, to resume from (first found)."""
    from safetensors import safe_open

    for sd in spec_dirs:
        path = partial_file(sd)
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

