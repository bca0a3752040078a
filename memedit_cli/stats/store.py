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
# the sampling scheme of samples.py, part of spec keys (v1: samples cached, then a second pass over rows of them;
# v2: keys summed while sampling, tokens drawn by torch.multinomial; v3: by the inverse CDF, samples.draw)
SAMPLES_ID = "model-samples-v3"


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


def has_mom2(path: Path, tokens: int) -> bool:
    """Whether `path` holds a square float64 mean over `tokens` tokens, from its header and count alone
    (at d_in = 14,336 the matrix is 1.6 GB: a second cache dir's copy is checked, not read)."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            part = f.get_slice("mom2")
            shape, dtype, count = part.get_shape(), part.get_dtype(), int(f.get_tensor("count"))
    except Exception:
        return False
    return dtype == "F64" and len(shape) == 2 and shape[0] == shape[1] and count == tokens


def load_mom2(path: Path, tokens: int) -> torch.Tensor | None:
    """The cached mean, or None when absent, unreadable, or not over `tokens` tokens (then it is recomputed)."""
    if not has_mom2(path, tokens):
        return None
    try:
        from safetensors.torch import load_file

        return load_file(str(path))["mom2"]
    except Exception:
        return None


def save_everywhere(paths: list[Path], data, source: Path | None = None) -> None:
    """Atomic writes to each path; a cache dir that cannot be written is reported, not fatal.

    `data`: the bytes, or a function making them (called only if a copy must be written). They are
    written once; every other path is a hard link to that file (or to `source`, a file that holds them
    already) where the file system allows it, a copy where not. The files are only ever replaced
    whole, never changed in place, so linked names cannot disagree.
    """
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if source is None or not _link(source, path):
                if callable(data):
                    data = data()
                write_atomic(path, data)
                source = path
        except OSError as e:
            print(f"memedit: warning: cannot write {path}: {e.strerror}", file=sys.stderr)


def _link(source: Path, path: Path) -> bool:
    """`path` becomes a hard link to `source`, atomically (temp name, then rename); False where linking fails."""
    import os

    tmp = path.with_name(f".{path.name}.link-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


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

