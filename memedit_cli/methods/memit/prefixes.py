"""MEMIT's context templates: the bare prompt plus a few short generated prefixes.

z is optimized over "{prefix}. {prompt}" for several prefixes so the edit does
not depend on the prompt starting the text. MEMIT samples them from the model
(top-k 5) from the seeds below. memedit generates them once per model (seeded,
cached in the repository's cache) and records the strings in each apply's
hyperparameters, so a replay never regenerates them.
"""

from __future__ import annotations

import json
from pathlib import Path

SEEDS = ("The", "Therefore", "Because", "I", "You")


def generate(model, tok, n: int, length: int, seed: int = 0) -> tuple[str, ...]:
    import torch

    from memedit_cli.models import input_device

    if n == 0:
        return ("{}",)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(n):
        ids = tok(SEEDS[i % len(SEEDS)], return_tensors="pt")["input_ids"].to(input_device(model))
        with torch.no_grad():
            for _ in range(length):
                logits = model(input_ids=ids).logits[0, -1].float().cpu()
                top = torch.topk(logits, 5)
                pick = top.indices[torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)]
                ids = torch.cat([ids, pick.view(1, 1).to(ids.device)], dim=1)
        text = tok.decode(ids[0], skip_special_tokens=True)
        out.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return ("{}", *out)


def cached(model, tok, n: int, length: int, cache_dir: Path, model_key: str) -> tuple[str, ...]:
    """The templates for this model, generated on first use and kept in `cache_dir`."""
    path = Path(cache_dir) / "memit" / f"context-templates-{model_key[:16]}-{n}x{length}.json"
    if path.is_file():
        return tuple(json.loads(path.read_text()))
    from memedit_cli.fileio import write_atomic

    templates = generate(model, tok, n, length)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(list(templates), ensure_ascii=False).encode())
    return templates
