"""Greedy generation from a (possibly edited) model."""

from __future__ import annotations

from memedit_cli.errors import UserError


def greedy(model, tok, prompt: str, max_new_tokens: int) -> str:
    """The greedy continuation of `prompt` (without the prompt)."""
    import torch

    from memedit_cli.methods.wise import router
    from memedit_cli.models import input_device

    router.reset(model)  # a new sequence: WISE key routers drop the previous one's routes
    enc = tok(prompt, return_tensors="pt").to(input_device(model))
    if enc["input_ids"].shape[1] == 0:
        raise UserError("the prompt is empty (it has no tokens); give the text to continue")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
