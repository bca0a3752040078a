"""Keys and current outputs for MEMIT's per-layer update.

k_l(fact): the input of block l's FFN output projection at the last subject
token, averaged over the context templates (prompt without target).
h_L(fact): block L's output at the last subject token of the bare prompt.

`KeyReader` reads them for each layer of the band in turn, as the band's
updates go in. Three things keep that cheap: each row is cut after its last
subject token (nothing after it reaches the reads: the model is causal) and
rows are grouped by length; h_L is read on the bare prompts only (one row a
fact, not one per template); and after block l's update the next read
resumes at block l, from its input kept by the previous one (lm/lower.py):
nothing below an updated block changes.
"""

from __future__ import annotations

from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.lower import Lower
from memedit_cli.lm.nethook import capture
from memedit_cli.methods.memit import rows as rows_mod

CHUNK_ROWS = 256  # rows per forward: bounds activation memory for batches of thousands of facts


def key_rows(tok, facts, templates, device):
    """The rows keys are read from (prompts without targets); one build serves every layer."""
    return rows_mod.build(tok, facts, templates, device, with_target=False, with_kl=False)


class KeyReader:
    """For one batch and the band `layers` (increasing, top = layers[-1] unless given): `read(i)` gives
    (keys (n, d_in) at layers[i], current h (n, d) at block top), called for i = 0, 1, ... in turn with
    layers[i - 1]'s update added to the model in between; `values()` gives NAS's (v₀, h) at block top on
    the model as it was at read(0). Each fact's bare prompt is its first row ("{}" comes first)."""

    def __init__(self, model, rows, layers, top: int | None = None):
        import torch

        self.model, self.arch, self.layers = model, arch_for(model.config), tuple(layers)
        self.top = self.layers[-1] if top is None else top
        self.fact, self.n = rows.fact, int(rows.fact.max()) + 1
        self.next = 0
        bare = _bare(rows, self.n)
        proj0, block, out_top = self._proj(0), self.arch.layer(self.top), self.arch.mlp_out_at(self.top)
        # template rows (every row, the bare ones too): keys; they need to go no higher than the band's top
        self.key_runs, self.key_order = [], torch.argsort(rows.lookup, stable=True)
        keys = []
        for idx in self.key_order.split(CHUNK_ROWS):
            with torch.no_grad(), capture(model, inputs=[proj0]) as seen:
                run = _lower(model, rows, idx, self.layers[-1], self.layers[:-1])
            keys.append(seen[f"in:{proj0}"][:, -1].double())
            self.key_runs.append(run)
        # bare rows: h at block top, and the FFN output there (NAS's v₀)
        self.h_runs, h, v0 = [], [], []
        for idx in bare.split(CHUNK_ROWS):
            with torch.no_grad(), capture(model, outputs=[block, out_top]) as seen:
                run = _lower(model, rows, idx, self.top, self.layers[:-1])
            h.append(seen[f"out:{block}"][:, -1].double())
            v0.append(seen[f"out:{out_top}"][:, -1].double())
            self.h_runs.append(run)
        self._first = (self._per_fact(keys), torch.cat(h))
        self._values = (torch.cat(v0), torch.cat(h))

    def _proj(self, i: int) -> str:
        return self.arch.mlp_out_at(self.layers[i])

    def _per_fact(self, chunks):
        """(n, ·): the mean of each fact's rows, from per-chunk values in key_order."""
        import torch

        values = torch.empty_like(torch.cat(chunks))
        values[self.key_order] = torch.cat(chunks)
        out = torch.zeros(self.n, values.shape[1], dtype=values.dtype, device=values.device)
        out.index_add_(0, self.fact, values)
        return out / torch.bincount(self.fact, minlength=self.n)[:, None]

    def values(self):
        """(v₀ (n, d): block top's FFN output, h (n, d): block top's output), bare prompts, before any update."""
        return self._values

    def read(self, i: int):
        import torch

        if i != self.next:
            raise ValueError(f"KeyReader: read({i}) after read({self.next - 1}); the layers go in turn")
        self.next += 1
        if i == 0:
            return self._first
        start, proj = self.layers[i - 1], self._proj(i)  # block layers[i-1] has just been updated
        block = self.arch.layer(self.top)
        with torch.no_grad(), capture(self.model, inputs=[proj]) as seen:
            keys = []
            for run in self.key_runs:
                run.rerun(start, self.layers[i])
                keys.append(seen[f"in:{proj}"][:, -1].double())
        with torch.no_grad(), capture(self.model, outputs=[block]) as seen:
            h = []
            for run in self.h_runs:
                run.rerun(start, self.top)
                h.append(seen[f"out:{block}"][:, -1].double())
        return self._per_fact(keys), torch.cat(h)


def _lower(model, rows, idx, top: int, keep):
    """A Lower over rows `idx`, each cut after its last subject token and left-padded so that the token
    sits in the last column (position ids keep every token's own position)."""
    input_ids, attn, pos, _, _ = rows_mod.left_cut(rows, idx, through_lookup=True)
    return Lower(model, input_ids, attn, top, keep, position_ids=pos)


def keys_and_current(model, tok, facts, templates, layer: int, z_layer: int, device, rows=None):
    """(keys (n, d_in) at `layer`, current h (n, d) at block z_layer) on the model as it is now."""
    rows = key_rows(tok, facts, templates, device) if rows is None else rows
    return KeyReader(model, rows, (layer,), z_layer).read(0)


def values_and_current(model, tok, facts, templates, z_layer: int, device, rows=None):
    """(v₀ (n, d): block L's FFN output, h (n, d): block L's output), both at the last subject token of
    the bare prompt, on the model as it is now (NAS's value vector is v₀ + δ)."""
    rows = key_rows(tok, facts, templates, device) if rows is None else rows
    return KeyReader(model, rows, (z_layer,)).values()


def _bare(rows, n: int):
    """(n,): each fact's first row, its bare prompt ("{}")."""
    import torch

    bare = torch.zeros(n, dtype=torch.long, device=rows.fact.device)
    for b in reversed(range(rows.fact.shape[0])):
        bare[rows.fact[b]] = b
    return bare
