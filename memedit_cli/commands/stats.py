"""`memedit stats`: a method's work ahead of `apply` (MEMIT's key statistics C₀), cached."""

from __future__ import annotations

from memedit_cli import hparams as hparams_mod
from memedit_cli import methods


def stats(repo, method_name: str, overrides: dict) -> str:
    """Run `method_name`'s precompute on the base model with `overrides`; returns its summary line."""
    from memedit_cli.lm import models
    from memedit_cli.replay import method_env

    method = methods.get(method_name)
    hparams_mod.resolve(method.hparams_class(), overrides)  # bad settings fail before the model loads
    model, tok = models.load(repo.config)
    hp = hparams_mod.resolve(method.default_hparams(model), overrides)
    return method.precompute(hp, method_env(repo, model, tok, []), model)
