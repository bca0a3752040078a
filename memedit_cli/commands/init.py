"""`memedit init`: create `.memedit/` for a base model."""

from __future__ import annotations

from memedit_cli import FORMAT_VERSION
from memedit_cli.errors import UserError
from memedit_cli.store.repo import Repo, find_workdir


def init(directory, model: str | None, dtype: str, device: str, trust_remote_code: bool) -> Repo:
    """A new repository in `directory` (or $MEMEDIT_DIR, or the current directory) for `model`."""
    from memedit_cli.lm import models

    workdir = find_workdir(directory)
    if (workdir / ".memedit").exists():
        raise UserError(f"{workdir / '.memedit'} already exists; this directory already holds a memedit repository")
    if not workdir.is_dir():
        raise UserError(f"{workdir} is not a directory")
    entry = models.describe(model, trust_remote_code)
    return Repo.create(workdir, {"format_version": FORMAT_VERSION, "model": entry, "dtype": dtype, "device": device})
