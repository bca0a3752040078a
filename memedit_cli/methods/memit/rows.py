"""Token rows for MEMIT: each fact's prompt in every context template (with or
without its target), and its "{subject} is a" KL prompt, with the position of
the last subject token in each row."""

from __future__ import annotations

from dataclasses import dataclass

from memedit_cli.lm.tokens import subject_last


@dataclass
class Rows:
    input_ids: object  # (B, T) long, right-padded
    attention_mask: object  # (B, T)
    fact: object  # (B,) which fact each row belongs to
    lookup: object  # (B,) position of the last subject token
    labels: object  # (B, T): the next target token at positions that predict one, -100 elsewhere
    kl: object  # (B,) bool: the row is a KL prompt


def build(tok, facts, templates, device, with_target: bool = True, with_kl: bool = True) -> Rows:
    import torch

    ids, lookups, owners, label_rows, kl_flags = [], [], [], [], []
    for i, f in enumerate(facts):
        target = tok(" " + f.target_new, add_special_tokens=False)["input_ids"] if with_target else []
        start = f.prompt.index(f.subject)
        for template in templates:
            text = template.replace("{}", f.prompt)
            offset = template.index("{}")
            p = tok(text)["input_ids"]
            row = p + target
            labels = [-100] * len(row)
            for j in range(len(p), len(row)):
                labels[j - 1] = row[j]
            ids.append(row)
            label_rows.append(labels)
            lookups.append(subject_last(tok, text, offset + start + len(f.subject)))
            owners.append(i)
            kl_flags.append(False)
        if with_kl:
            text = f"{f.subject} is a"
            row = tok(text)["input_ids"]
            ids.append(row)
            label_rows.append([-100] * len(row))
            lookups.append(subject_last(tok, text, len(f.subject)))
            owners.append(i)
            kl_flags.append(True)
    width = max(len(r) for r in ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    B = len(ids)
    input_ids = torch.full((B, width), pad, dtype=torch.long)
    attn = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), -100, dtype=torch.long)
    for b, (row, lab) in enumerate(zip(ids, label_rows)):
        input_ids[b, : len(row)] = torch.tensor(row)
        attn[b, : len(row)] = 1
        labels[b, : len(lab)] = torch.tensor(lab)
    return Rows(input_ids.to(device), attn.to(device), torch.tensor(owners, device=device),
                torch.tensor(lookups, device=device), labels.to(device), torch.tensor(kl_flags, device=device))


def left_cut(rows: Rows, idx, through_lookup: bool = False):
    """Rows `idx` laid out so that every row's last subject token sits in one column c.

    Positions before a row's subject token never change while z is optimized,
    so they go to a KV cache once (upper.Upper, start=c); only the columns
    c.. are run at each step. Left-padding the part before the lookup and
    right-padding the rest cuts each row at its own subject token instead of
    the bucket's earliest one. Returns (input_ids, attention_mask,
    position_ids, labels), each (b, c + S) with S the longest remainder, and
    c. position_ids keep every real token's original position, so rotary and
    learned position embeddings see the same positions as the right-padded row.
    `through_lookup`: each row ends at its subject token (S = 1), for reads at
    that token only (the model is causal: the tokens after it cannot change them).
    """
    import torch

    lookup = rows.lookup[idx]  # (b,)
    length = rows.attention_mask[idx].sum(1)  # (b,)
    if through_lookup:
        length = lookup + 1
    c, S = int(lookup.max()), int((length - lookup).max())
    b = len(idx)
    input_ids = torch.zeros((b, c + S), dtype=torch.long, device=lookup.device)  # filler ids: masked out
    attn = torch.zeros((b, c + S), dtype=rows.attention_mask.dtype, device=lookup.device)
    pos = torch.zeros((b, c + S), dtype=torch.long, device=lookup.device)
    labels = torch.full((b, c + S), -100, dtype=torch.long, device=lookup.device)
    for j, g in enumerate(idx.tolist()):
        shift = c - int(lookup[j])  # columns of left padding
        n = int(length[j])
        input_ids[j, shift:shift + n] = rows.input_ids[g, :n]
        attn[j, shift:shift + n] = 1
        pos[j, shift:shift + n] = torch.arange(n, device=lookup.device)
        labels[j, shift:shift + n] = rows.labels[g, :n]
    return input_ids, attn, pos, labels, c
