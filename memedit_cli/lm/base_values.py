"""Small values computed once on the unedited model and kept as JSON in the caches.

MEMIT's and WISE's context templates and WISE's output norm are each a function of
the base model alone; on an edited state computing one means loading a second copy
of the base weights, so each is computed on its first use and kept in every cache
dir (the repository's, then the per-user cache shared by repositories). What an
apply uses is also recorded in its hyperparameters, so a replay never needs them.
"""

from __future__ import annotations

import json
from pathlib import Path


def cached_json(folder: str, name: str, make, cache_dirs):
    """`make()` (a JSON value) kept as <folder>/<name> in every dir of `cache_dirs` that lacks it;
    the first dir that has it answers, and `make` runs only when none does."""
    from memedit_cli.store.fileio import write_atomic

    paths = [Path(d) / folder / name for d in cache_dirs]
    found = next((p for p in paths if p.is_file()), None)
    value = json.loads(found.read_text()) if found else make()
    data = json.dumps(value, ensure_ascii=False).encode()
    for path in paths:
        if not path.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
            except OSError:  # a read-only shared cache is not an error: what it holds is in the log
                pass
    return value
