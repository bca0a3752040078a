"""`memedit ask PROMPT`: the current state's greedy continuation."""

from __future__ import annotations

from memedit_cli import methods


def ask(repo, prompt: str, max_new_tokens: int) -> str:
    from memedit_cli.lm.generate import greedy
    from memedit_cli.states import state_at

    head = repo.head()
    segments = repo.segments_at(head)
    model, tok = state_at(repo, head)
    return greedy(model, tok, prompt, max_new_tokens, lambda: methods.reset(model, segments))
