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
    arch = arch_for(model.config)
    proj, block = arch.mlp_out_at(layer), arch.layer(z_layer)
    rows = key_rows(tok, facts, templates, device) if rows is None else rows
    k_rows, h_rows = _at_lookup(model, rows, f"in:{proj}", f"out:{block}", stop=block)
    keys = _per_fact(k_rows, rows, len(facts))  # averaged over the templates
    return keys, h_rows[_bare(rows, len(facts))]


def values_and_current(model, tok, facts, templates, z_layer: int, device, rows=None):
    """(v₀ (n, d): block L's FFN output, h (n, d): block L's output), both at the last subject token of
    the bare prompt, on the model as it is now (NAS's value vector is v₀ + δ)."""
    arch = arch_for(model.config)
    proj, block = arch.mlp_out_at(z_layer), arch.layer(z_layer)
    rows = key_rows(tok, facts, templates, device) if rows is None else rows
    v_rows, h_rows = _at_lookup(model, rows, f"out:{proj}", f"out:{block}", stop=block)
    bare = _bare(rows, len(facts))
    return v_rows[bare], h_rows[bare]


def _at_lookup(model, rows, *what: str, stop: str):
    """For each of `what` ("in:MODULE" / "out:MODULE"), its (B, ·) float64 values at each row's lookup,
    from forwards of CHUNK_ROWS rows that stop after module `stop` (no upper blocks, no LM head)."""
    import torch

    inputs = [w[3:] for w in what if w.startswith("in:")]
    outputs = [w[4:] for w in what if w.startswith("out:")]
    got: dict = {w: [] for w in what}
    B = rows.input_ids.shape[0]
    with (torch.no_grad(), capture(model, inputs=inputs, outputs=outputs) as seen,
          stop_after(model.get_submodule(stop))):
        for i in range(0, B, CHUNK_ROWS):
            sl = slice(i, i + CHUNK_ROWS)
            try:
                model(input_ids=rows.input_ids[sl], attention_mask=rows.attention_mask[sl], use_cache=False)
            except StopForward:
                pass
            at = (torch.arange(len(rows.lookup[sl]), device=rows.lookup.device), rows.lookup[sl])
            for w in what:
                got[w].append(seen[w][at].double())
    return [torch.cat(got[w]) for w in what]


def _per_fact(values, rows, n: int):
    """(n, ·): the mean of each fact's rows."""
    import torch

    out = torch.zeros(n, values.shape[1], dtype=values.dtype, device=values.device).index_add(0, rows.fact, values)
    return out / torch.bincount(rows.fact, minlength=n)[:, None]


def _bare(rows, n: int):
    """(n,): each fact's first row, its bare prompt ("{}")."""
    import torch

    bare = torch.zeros(n, dtype=torch.long, device=rows.fact.device)
    for b in reversed(range(rows.fact.shape[0])):
        bare[rows.fact[b]] = b
    return bare
