"""Keys and current outputs for MEMIT's per-layer update.

k_l(fact): the input of block l's FFN output projection at the last subject
token, averaged over the context templates (prompt without target).
h_L(fact): block L's output at the last subject token of the bare prompt.
"""

from __future__ import annotations

from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.nethook import StopForward, capture, stop_after
from memedit_cli.methods.memit import rows as rows_mod

CHUNK_ROWS = 256  # rows per forward: bounds activation memory for batches of thousands of facts


def key_rows(tok, facts, templates, device):
    """The rows keys are read from (prompts without targets); one build serves every layer."""
    return rows_mod.build(tok, facts, templates, device, with_target=False, with_kl=False)


def keys_and_current(model, tok, facts, templates, layer: int, z_layer: int, device, rows=None):
    """Returns (keys (n, d_in), current h (n, d)) on the model as it is now; `rows` from key_rows, or built here."""
    import torch

    arch = arch_for(model.config)
    proj, block = arch.mlp_out_at(layer), arch.layer(z_layer)
    rows = key_rows(tok, facts, templates, device) if rows is None else rows
    n = len(facts)
    B = rows.input_ids.shape[0]
    k_rows, h_rows = [], []
    # nothing above block L is needed: the forward stops there (no upper blocks, no LM head)
    with (torch.no_grad(), capture(model, inputs=[proj], outputs=[block]) as seen,
          stop_after(model.get_submodule(block))):
        for i in range(0, B, CHUNK_ROWS):
            sl = slice(i, i + CHUNK_ROWS)
            try:
                model(input_ids=rows.input_ids[sl], attention_mask=rows.attention_mask[sl], use_cache=False)
            except StopForward:
                pass
            at = (torch.arange(len(rows.lookup[sl]), device=device), rows.lookup[sl])
            k_rows.append(seen[f"in:{proj}"][at].double())
            h_rows.append(seen[f"out:{block}"][at].double())
    k_rows, h_rows = torch.cat(k_rows), torch.cat(h_rows)  # (B, d_in), (B, d) at each row's lookup
    keys = torch.zeros(n, k_rows.shape[1], dtype=torch.float64, device=device).index_add(0, rows.fact, k_rows)
    keys /= torch.bincount(rows.fact, minlength=n)[:, None]
    bare = torch.zeros(n, dtype=torch.long, device=device)
    for b in reversed(range(B)):  # each fact's first row is its bare prompt ("{}")
        bare[rows.fact[b]] = b
    current = h_rows[bare]
    return keys, current
