"""Teacher-forced scoring that reads as generation reads: the prompt first (one
call, with a cache), then the continuation one token per call (docs/metrics.md).

For a model whose edits are weights (ft, MEMIT) this equals EasyEdit's single
teacher-forced pass over prompt + target; for wrapper methods it is what they
answer: Larimar's scope detector sees the prompt, not the target, and WISE's
key router keeps the route its prompt chose. `memedit eval`
(commands/evaluate.py) and every benchmark score through here.
"""

from __future__ import annotations

import re

import torch

from memedit_cli.lm.cache import cache_kwargs, cache_of
from memedit_cli.lm.progress import bar


def token_scores(preds: list[torch.Tensor], targets: list[torch.Tensor]) -> list[float]:
    """Per example: the fraction of target tokens whose prediction equals the target token."""
    return [int((p == t).sum()) / len(t) for p, t in zip(preds, targets)]


def agreement(preds: list[torch.Tensor], base: list[torch.Tensor]) -> list[float]:
    """Per example: the fraction of positions where the edited model predicts what the base model did."""
    return [int((p == b).sum()) / len(b) for p, b in zip(preds, base)]


def continuation_tokens(tok, texts: list[str]) -> list[torch.Tensor]:
    """` text` tokenized as it follows a prompt (the leading space, no special tokens)."""
    return [torch.tensor(tok(" " + t, add_special_tokens=False)["input_ids"], dtype=torch.long) for t in texts]


def predict(model, tok, prompts: list[str], conts: list[torch.Tensor], batch: int = 16, desc: str | None = None,
            reset=None, free: bool = False):
    """Argmax predictions (L_i,) for each continuation token, teacher-forced, reading as generation reads.

    `reset()` starts each batch as new sequences (`methods.reset` for the state's methods).
    With `free`, each step is fed the model's own prediction instead of the continuation:
    greedy generation of len(conts[i]) tokens (only the lengths of `conts` are used)."""
    from memedit_cli.lm.models import input_device

    device = input_device(model)
    # Rows of one batch have prompts of the same token length: no padding, so a wrapper that
    # routes on every position of a row (WISE: the mean or max over positions) sees what it
    # sees when the prompt is asked alone, as `ask` does.
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=True)["input_ids"]] if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    batches = []
    for i in order:
        if batches and len(batches[-1]) < batch and lengths[batches[-1][0]] == lengths[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    out: list = [None] * len(prompts)
    side = tok.padding_side
    tok.padding_side = "left"  # every row's last prompt token in the last column
    try:
        for rows in bar(batches, desc=desc, unit="batch"):
            got = _predict_batch(model, tok, [prompts[i] for i in rows], [conts[i] for i in rows], device, reset, free)
            for i, p in zip(rows, got):
                out[i] = p
    finally:
        tok.padding_side = side
    return out


def _predict_batch(model, tok, prompts, conts, device, reset, free):
    if reset is not None:
        reset()  # new sequences: wrappers drop the previous batch's per-sequence state
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    L = max(len(c) for c in conts)
    # (B, L) the continuation tokens, padded with the pad id where a row's continuation is shorter
    feed = torch.full((len(conts), L), tok.pad_token_id or 0, dtype=torch.long)
    for r, c in enumerate(conts):
        feed[r, :len(c)] = c
    feed = feed.to(device)
    preds = []
    with torch.no_grad():
        step = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=True)
        for t in range(L):
            preds.append(step.logits[:, -1].argmax(-1))
            if t == L - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
            nxt = preds[-1][:, None] if free else feed[:, t:t + 1]  # (B, 1)
            step = model(input_ids=nxt, attention_mask=mask, position_ids=pos,
                         **cache_kwargs(model, cache_of(step)), use_cache=True)
    P = torch.stack(preds, 1).cpu()  # (B, L)
    return [P[r, :len(c)] for r, c in enumerate(conts)]


def greedy_tokens(model, tok, prompts: list[str], lengths: list[int], desc: str | None = None,
                  reset=None) -> list[list[int]]:
    """Greedy continuations of up to lengths[i] tokens, cut after an end-of-text token."""
    preds = predict(model, tok, prompts, [torch.zeros(n, dtype=torch.long) for n in lengths], desc=desc,
                    reset=reset, free=True)
    out = []
    for p in preds:
        ids = p.tolist()
        if tok.eos_token_id in ids:
            ids = ids[:ids.index(tok.eos_token_id)]
        out.append(ids)
    return out


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped: the unit the generation scores compare (docs/metrics.md)."""
    return re.findall(r"\w+", text.lower())


def contains(answer: str, target: str) -> bool:
    """Whether the target's words appear in the answer, in order and next to each other."""
    a, t = words(answer), words(target)
    if not t:  # a target of punctuation only: its text must appear as written
        return target.strip() in answer
    return any(a[i:i + len(t)] == t for i in range(len(a) - len(t) + 1))
