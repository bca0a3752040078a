"""Content-addressed tensor objects: `.memedit/objects/ab/cdef….safetensors`.

An object's name is the sha256 of its file bytes, so a changed byte is caught
on every read. Files are safetensors (never pickle) and made read-only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from memedit_cli.errors import DamagedRepository, UserError
from memedit_cli.fileio import fsync_dir, write_atomic

HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class ObjectStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, h: str) -> Path:
        if not HASH_RE.match(h):
            raise DamagedRepository(f"invalid object name {h!r} in the log; run `memedit fsck`")
        return self.root / h[:2] / f"{h[2:]}.safetensors"

    def put(self, tensors: dict) -> str:
        """Store a dict of tensors; return its hash. Refuses NaN/Inf before writing anything."""
        import torch
        from safetensors.torch import save

        clean = {}
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                raise UserError(f"the edit produced NaN or Inf values in {name!r}; nothing was written. "
                                "Lower the learning rate or the number of steps and try again")
            # safetensors wants detached, contiguous CPU tensors
            clean[name] = t.detach().to("cpu").contiguous()
        data = save(clean)
        h = hashlib.sha256(data).hexdigest()
        path = self.path(h)
        if not path.exists():
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True)
                fsync_dir(self.root)  # the new fan-out folder survives a crash too
            write_atomic(path, data, mode=0o444)
        return h

    def read_bytes(self, h: str) -> bytes:
        path = self.path(h)
        if path.is_symlink():
            raise DamagedRepository(f"object {h[:12]} is a symbolic link ({path}); objects must be plain files. Run `memedit fsck`")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DamagedRepository(f"object {h[:12]} is missing ({path}); run `memedit fsck`") from None
        if hashlib.sha256(data).hexdigest() != h:
            raise DamagedRepository(f"object {h[:12]} is damaged: its content does not match its hash ({path}); run `memedit fsck`")
        return data

    def get(self, h: str) -> dict:
        from safetensors.torch import load

        return load(self.read_bytes(h))

    def problem(self, h: str) -> str | None:
        """None when the object is present and intact, else what is wrong (for fsck)."""
        try:
            self.read_bytes(h)
        except DamagedRepository as e:
            return str(e).split("; run")[0].split(". Run")[0]
        return None

    def all_hashes(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.parent.name + p.name.split(".")[0] for p in self.root.glob("??/*.safetensors"))
