"""MEMIT's context templates: the bare prompt plus a few short generated prefixes.

z is optimized over "{prefix}. {prompt}" for several prefixes so the edit does
not depend on the prompt starting the text. MEMIT samples them from the model
(top-k 5) from the seeds below. memedit generates them once per model (seeded,
cached in the repository's and the per-user cache) and records the strings in each apply's
hyperparameters, so a replay never regenerates them.
"""

from __future__ import annotations

from memedit_cli.lm.base_values import cached_json
from memedit_cli.lm.cache import cache_kwargs, cache_of

SEEDS = ("The", "Therefore", "Because", "I", "You")


def generate(model, tok, n: int, length: int, seed: int = 0) -> tuple[str, ...]:
    import torch

    from memedit_cli.lm.models import input_device

    if n == 0:
        return ("{}",)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(n):
        ids = tok(SEEDS[i % len(SEEDS)], return_tensors="pt")["input_ids"].to(input_device(model))
        step, past = ids, None
        with torch.no_grad():
            for _ in range(length):  # one new token per forward, over the KV cache
                res = model(input_ids=step, **cache_kwargs(model, past), use_cache=True)
                past = cache_of(res)
                top = torch.topk(res.logits[0, -1].float().cpu(), 5)
                pick = top.indices[torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)]
                step = pick.view(1, 1).to(ids.device)
                ids = torch.cat([ids, step], dim=1)
        text = tok.decode(ids[0], skip_special_tokens=True)
        out.append(text.replace("{", " ").replace("}", " ") + ". {}")
    return ("{}", *out)


def cached(load, n: int, length: int, cache_dirs, model_key: str) -> tuple[str, ...]:
    """The templates for this model, generated on first use and kept in every dir of `cache_dirs`
    (the repository's cache, then the per-user cache shared by repositories). `load()` gives the
    (model, tok) to generate them with, called only on a miss: on an edited state that is a second
    copy of the base weights, which a cache hit never loads."""
    name = f"context-templates-{model_key[:16]}-{n}x{length}.json"  # under memit/, where they were first kept
    return tuple(cached_json("memit", name, lambda: list(generate(*load(), n, length)), cache_dirs))

