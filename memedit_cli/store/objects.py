"""Content-addressed tensor objects: `.memedit/objects/ab/cdef….safetensors`.

An object's name is the sha256 of its file bytes, so a changed byte is caught
on every read. Files are safetensors (never pickle) and made read-only. The
store keeps bytes; turning tensors into them is replay.py's (the store never
imports torch, so `log`, `status` and `fsck` start fast).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from memedit_cli.errors import DamagedRepository
from memedit_cli.store.fileio import fsync_dir, write_atomic

HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class ObjectStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, h: str) -> Path:
        if not HASH_RE.match(h):
            raise DamagedRepository(f"invalid object name {h!r} in the log")
        return self.root / h[:2] / f"{h[2:]}.safetensors"

    def put(self, data: bytes) -> str:
        """Store a safetensors file's bytes (replay.py encodes them); return its hash."""
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
            raise DamagedRepository(f"object {h[:12]} is a symbolic link ({path}); objects must be plain files")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DamagedRepository(f"object {h[:12]} is missing ({path})") from None
        if hashlib.sha256(data).hexdigest() != h:
            raise DamagedRepository(f"object {h[:12]} is damaged: its content does not match its hash ({path})")
        return data

    def problem(self, h: str) -> str | None:
        """None when the object is present and intact, else what is wrong (for fsck)."""
        try:
            self.read_bytes(h)
        except DamagedRepository as e:
            return e.detail
        return None

    def all_hashes(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.parent.name + p.name.split(".")[0] for p in self.root.glob("??/*.safetensors"))
