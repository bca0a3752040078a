"""The method registry. A method plugs in by adding a line here and a module
that defines a `Method` subclass (see base.py). Names resolve lazily so that
listing them does not import torch."""

from __future__ import annotations

import difflib
import importlib

from memedit_cli.errors import UserError

# name -> "module:Class"
REGISTRY = {
    "ft": "memedit_cli.methods.ft:FT",
    "memit": "memedit_cli.methods.memit:MEMIT",
    "wise": "memedit_cli.methods.wise:WISE",
    "larimar": "memedit_cli.methods.larimar:Larimar",
}


# What `memedit methods` says of each: the paper, and where memedit's defaults differ from it (the
# per-model defaults are measured; docs/methods/<name>.md has the runs that chose them).
SUMMARY = {
    "ft": "fine-tuning one FFN projection under an L-inf bound (FT-L, the ROME paper's baseline); "
          "docs/methods/ft.md",
    "memit": "MEMIT (arXiv 2210.07229): a least-squares update of several FFN projections per batch, each "
             "batch solved against C₀ alone as in the paper. Differs from the paper: C₀ from 20 × d_in tokens "
             "sampled from the model itself (the paper: 100,000 Wikipedia documents; --set mom2_corpus=FILE "
             "for a corpus), λ scaled to the key width. For long sequences: --set update=sequential (the "
             "earlier batches' keys in the solve), --set update=alphaedit (AlphaEdit, arXiv 2410.02355), "
             "--set norm_anchor=true (NAS, arXiv 2602.02543). On SmolLM2-135M no rule measured holds 1,000 "
             "edits (CounterFact at T = 1000: the best, sequential + NAS at λ 2,100, Rel .69 / Loc .59; Loc "
             "at most .76, where Rel falls to .39; against .92 / .89 at T = 100); "
             "docs/methods/memit.md",
    "wise": "WISE (arXiv 2405.14768): side memories beside one FFN projection, routed per input. "
            "On SmolLM2-135M the defaults differ from the paper: routing by subject keys (router=keys) "
            "instead of the activation score, one memory per edit holding the columns of its most active "
            "input features (mask=topk) instead of random masks merged by TIES; the paper's settings: "
            "--set router=activation --set mask=random --set variant=merge --set save_freq=500; "
            "docs/methods/wise.md",
    "larimar": "Larimar (arXiv 2403.11901): an episodic memory written and forgotten in closed form. Differs "
               "from the paper: no decoder trained to read the memory exists, so the default (mode=context) "
               "retrieves the nearest written fact and puts its text before the prompt; the memory readout "
               "chooses what the nearest neighbour chooses. In scope only when the prompt names a written "
               "subject and asks its relation (scope=subject; the paper's similarity detector: --set "
               "scope=similarity); docs/methods/larimar.md",
}

# `memedit apply`'s default --method: the best mean of Rel, Gen, Loc and their generation-based
# scores at T = 100 over CounterFact and ZsRE in the lifelong benchmark (docs/lifelong.md, "The
# default method"; tests/test_cli.py checks this against docs/lifelong.json).
DEFAULT = "wise"


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str):
    if name not in REGISTRY:
        near = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"unknown method {name!r}{hint}; available: {', '.join(names())}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def of(segments: list[dict]) -> list:
    """The methods of `segments`, each once, in the order they first appear."""
    return [get(name) for name in dict.fromkeys(seg["method"] for seg in segments)]


def reset(model, segments: list[dict]) -> None:
    """A new sequence starts: every method attached to `model` drops its per-sequence state."""
    for method in of(segments):
        method.reset(model)


def settle(model, segments: list[dict]) -> None:
    """The methods of `segments`, just attached to `model`, build what depends on all their segments."""
    for method in of(segments):
        method.settle(model)
