"""Turning facts into token batches: `prompt + " " + target` with the target positions marked."""

from __future__ import annotations

from memedit_cli.errors import UserError


def context_length(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def subject_last(tok, text: str, subject_end: int) -> int:
    """Index of the last token of the subject that ends at character `subject_end` of `text`."""
    return len(tok(text[:subject_end])["input_ids"]) - 1


def subject_first(tok, text: str, subject_start: int) -> int:
    """Index of the first token of the subject that starts at character `subject_start` of `text`: how
    many tokens the whole text and the text before the subject have in common. Not the length of the
    latter: it ends in the space before the subject, which a BPE tokenizer may make a token of its own
    ("... by " -> "Ġby", "Ġ" where the whole text has "Ġby", "ĠUn")."""
    before, full = tok(text[:subject_start])["input_ids"], tok(text)["input_ids"]
    n = 0
    while n < min(len(before), len(full)) and before[n] == full[n]:
        n += 1
    return n


def check_fit(tok, facts, max_len: int | None) -> None:
    """Refuse, before any computation, a fact whose prompt + target exceeds the context."""
    for f in facts:
        target = tok(" " + f.target_new, add_special_tokens=False)["input_ids"]
        if not target:
            raise UserError(f"fact {f.id}: target {f.target_new!r} tokenizes to nothing; "
                            "give a target with text the model can say")
        n = len(tok(f.prompt)["input_ids"]) + len(target)
        if max_len is not None and n > max_len:
            raise UserError(f"fact {f.id}: prompt and target are {n} tokens, "
                            f"longer than the model's context of {max_len}; shorten them")


def prompt_target_batch(tok, prompts: list[str], targets: list[str], device):
    """Right-padded batch for teacher forcing.

    Returns input_ids and attention_mask (B, T), and labels (B, T) holding the
    next token at each position that predicts a target token, -100 elsewhere:
    labels[b, t] = input_ids[b, t + 1] when token t + 1 belongs to the target.
    The target is tokenized on its own (with its leading space) and appended,
    so its token boundaries never depend on the prompt.
    """
    import torch

    rows, masks = [], []
    for prompt, target in zip(prompts, targets):
        p = tok(prompt)["input_ids"]
        t = tok(" " + target, add_special_tokens=False)["input_ids"]
        if not t:
            raise UserError(f"target {target!r} tokenizes to nothing; give a non-empty target")
        rows.append(p + t)
        masks.append([False] * len(p) + [True] * len(t))
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for b, (r, m) in enumerate(zip(rows, masks)):
        ids[b, : len(r)] = torch.tensor(r)
        attn[b, : len(r)] = 1
        for i in range(1, len(r)):
            if m[i]:
                labels[b, i - 1] = r[i]
    return ids.to(device), attn.to(device), labels.to(device)


def target_nll(logits, labels):
    """Mean over facts of the mean negative log-likelihood of each fact's target tokens.

    logits (B, T, V), labels (B, T) with -100 where not scored -> scalar.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    per_fact = -(picked * mask).sum(1) / mask.sum(1)
    return per_fact.mean()
