"""`memedit larimar-train`: train the adapter behind Larimar's experimental `mode=prefix`."""

from __future__ import annotations

from memedit_cli import methods


def larimar_train(repo, corpus: str, overrides: dict, progress=None) -> dict:
    """Train on the repository's base model; the adapter goes to the per-user cache. Returns its record."""
    from memedit_cli.lm import models
    from memedit_cli.replay import method_env

    def load():
        model, tok = models.load(repo.config)
        return model, tok, method_env(repo, model, tok, [])

    return methods.get("larimar").train_adapter(load, corpus, overrides, progress)
