"""`memedit export --merged OUT_DIR`: the current state as a plain Hugging Face folder."""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path

from memedit_cli import methods
from memedit_cli.errors import UserError
from memedit_cli.store.fileio import crash_point


def export_merged(repo, out_dir: str, force: bool = False) -> dict:
    from memedit_cli.states import state_at

    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another OUT_DIR")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out} is not empty; choose an empty or new OUT_DIR, "
                            "or pass --force to replace an earlier export")
        if not (out / "memedit.json").is_file():
            raise UserError(f"{out} is not empty and is not an earlier memedit export; --force only replaces those")
    if (out / ".memedit").exists() or out == repo.root.parent:
        raise UserError(f"{out} holds a memedit repository; export somewhere else")
    head = repo.head()
    segments = repo.segments_at(head)
    model, tok = state_at(repo, head)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        auto_map = {}
        for name in sorted({s["method"] for s in segments}):
            extra = methods.get(name).export_extras(model, tmp)
            if extra:
                clash = sorted(set(auto_map) & set(extra.get("auto_map", {})))
                if clash:
                    raise UserError(f"this state holds edits of methods whose exports need different modeling "
                                    f"files ({', '.join(sorted({s['method'] for s in segments}))}); forget the "
                                    "edits of all but one of them before exporting")
                auto_map.update(extra.get("auto_map", {}))
        if auto_map:
            model.config.auto_map = auto_map
        keep = {}
        if auto_map and "save_original_format" in inspect.signature(model.save_pretrained).parameters:
            # a shipped modeling class is custom code, which transformers 5 loads without its renames of
            # old checkpoint names (GPT-NeoX's embed_out -> lm_head): save the names the model has in memory
            keep["save_original_format"] = False
        model.save_pretrained(tmp, safe_serialization=True, **keep)
        tok.save_pretrained(tmp)
        provenance = {
            "revision": head or "base",
            "base_model": repo.config["model"],
            "facts": list(repo.facts_at(head)),
            "methods": sorted({s["method"] for s in segments}),
            # wrapper modules (WISE, Larimar) load only through the shipped modeling file; without
            # trust_remote_code transformers builds the stock model and silently drops them
            "trust_remote_code": bool(auto_map),
        }
        (tmp / "memedit.json").write_text(json.dumps(provenance, indent=2) + "\n")
        crash_point()
        if out.exists():
            shutil.rmtree(out)
        crash_point()
        os.replace(tmp, out)
        crash_point()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), **provenance}
