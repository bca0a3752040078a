"""Greedy generation from a (possibly edited) model."""

from __future__ import annotations

from memedit_cli.errors import UserError


def greedy(model, tok, prompt: str, max_new_tokens: int, reset=None) -> str:
    """The greedy continuation of `prompt` (without the prompt).

    `reset()` is called first: a new sequence starts (replay's `methods.reset`
    for the state's methods: WISE's key routers drop the previous routes).
    """
    import torch

    from memedit_cli.lm.models import input_device

    if reset is not None:
        reset()
    enc = tok(prompt, return_tensors="pt").to(input_device(model))
    if enc["input_ids"].shape[1] == 0:
        raise UserError("the prompt is empty (it has no tokens); give the text to continue")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
