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
KEEP_BYTES = 2 << 30  # kept block inputs of one batch at most (KeyReader); beyond, each read starts from the embeddings


def key_rows(tok, facts, templates, device):
    """The rows keys are read from (prompts without targets); one build serves every layer."""
    return rows_mod.build(tok, facts, templates, device, with_target=False, with_kl=False)


class KeyReader:
    """For one batch and the band `layers` (increasing, top = layers[-1] unless given): `read(i)` gives
    (keys (n, d_in) at layers[i], or None with keys=False, current h (n, d) at block top), called for
    i = 0, 1, ... in turn with layers[i - 1]'s update added to the model in between; `values()` gives
    NAS's (v₀, h) at block top on the model as it was at read(0). Each fact's bare prompt is its first
    row ("{}" comes first).

    Resuming keeps every chunk's input at each band block but the last between reads: rows × tokens × d
    × (|R| − 1) values; for 100 facts (700 rows of ~20 tokens) at d = 4,096 in bf16 and a band of 5,
    0.46 GB, for the 10,000 of the MEMIT paper's largest batch 46 GB. Above KEEP_BYTES each read runs
    from the embeddings instead, one chunk at a time, as before."""

    def __init__(self, model, rows, layers, top: int | None = None, keys: bool = True):
        import torch

        self.model, self.rows, self.arch, self.layers = model, rows, arch_for(model.config), tuple(layers)
        self.top = self.layers[-1] if top is None else top
        self.fact, self.n = rows.fact, int(rows.fact.max()) + 1
        self.next = 0
        # template rows (every row, the bare ones too), grouped by length: the keys; none with keys=False
        # (the caller has them stored: only h and v₀ are read, on the bare rows)
        self.key_order = torch.argsort(rows.lookup, stable=True)
        self.key_chunks = list(self.key_order.split(CHUNK_ROWS)) if keys else []
        self.h_chunks = list(_bare(rows, self.n).split(CHUNK_ROWS))  # bare rows: h at block top, NAS's v₀
        keep = self.layers[:-1]
        fits = _kept_bytes(model, rows, self.key_chunks + self.h_chunks, len(keep)) <= KEEP_BYTES
        self.keep = keep if keep and fits else ()
        block, out_top = self.arch.layer(self.top), self.arch.mlp_out_at(self.top)
        keys_in, self.key_runs = None, None
        if keys:  # resuming needs the block arguments up to the band's top: then the template rows go there too
            (keys_in,), self.key_runs = self._pass(self.key_chunks, self.layers[-1] if self.keep else self.layers[0],
                                                   f"in:{self._proj(0)}")
        (h, v0), self.h_runs = self._pass(self.h_chunks, self.top, f"out:{block}", f"out:{out_top}")
        self._first = (None if keys_in is None else self._per_fact(keys_in), h)
        self._values = (v0, h)

    def _proj(self, i: int) -> str:
        return self.arch.mlp_out_at(self.layers[i])

    def _pass(self, chunks, stop: int, *what: str, start: int = 0, runs=None):
        """Each of `what` ("in:MODULE" / "out:MODULE") at every row's last column, the chunks' rows in
        order, from blocks start..stop of the kept `runs`, or of new ones run from the embeddings (kept
        when resuming). Returns ([(B, ·) float64 per `what`], the runs)."""
        import torch

        got: list = [[] for _ in what]
        made = []
        inputs, outputs = [w[3:] for w in what if w.startswith("in:")], [w[4:] for w in what if w.startswith("out:")]
        with torch.no_grad(), capture(self.model, inputs=inputs, outputs=outputs) as seen:
            for j, idx in enumerate(chunks):
                if runs is None:
                    run = _lower(self.model, self.rows, idx, stop, self.keep)
                    if self.keep:
                        made.append(run)
                else:
                    runs[j].rerun(start, stop)
                for values, w in zip(got, what):
                    values.append(seen[w][:, -1].double())
        return [torch.cat(values) for values in got], (made if runs is None else runs)

    def _per_fact(self, values):
        """(n, ·): the mean of each fact's rows, from values (B, ·) in key_order."""
        import torch

        order, fact = self.key_order.to(values.device), self.fact.to(values.device)  # layers may be on other GPUs
        values = torch.empty_like(values).index_copy_(0, order, values)
        out = torch.zeros(self.n, values.shape[1], dtype=values.dtype, device=values.device)
        out.index_add_(0, fact, values)
        return out / torch.bincount(fact, minlength=self.n)[:, None]

    def values(self):
        """(v₀ (n, d): block top's FFN output, h (n, d): block top's output), bare prompts, before any update."""
        return self._values

    def read(self, i: int):
        if i != self.next:
            raise ValueError(f"KeyReader: read({i}) after read({self.next - 1}); the layers go in turn")
        self.next += 1
        if i == 0:
            return self._first
        # block layers[i-1] has just been updated: resume there, or run from the embeddings
        start, runs = (self.layers[i - 1], True) if self.keep else (0, False)
        keys = None
        if self.key_chunks:
            (keys,), _ = self._pass(self.key_chunks, self.layers[i], f"in:{self._proj(i)}", start=start,
                                    runs=self.key_runs if runs else None)
        (h,), _ = self._pass(self.h_chunks, self.top, f"out:{self.arch.layer(self.top)}", start=start,
                             runs=self.h_runs if runs else None)
        return (None if keys is None else self._per_fact(keys)), h


def _kept_bytes(model, rows, chunks, blocks: int) -> int:
    """The bytes of `blocks` kept block inputs over `chunks` (rows cut after their subject token)."""
    per = model.get_input_embeddings().embedding_dim * next(model.parameters()).element_size() * blocks
    return sum(len(idx) * (int(rows.lookup[idx].max()) + 1) for idx in chunks) * per


def _lower(model, rows, idx, top: int, keep):
    """A Lower over rows `idx`, each cut after its last subject token and left-padded so that the token
    sits in the last column (position ids keep every token's own position)."""
    input_ids, attn, pos, _, _ = rows_mod.left_cut(rows, idx, through_lookup=True)
    return Lower(model, input_ids, attn, top, keep, position_ids=pos)


def _bare(rows, n: int):
    """(n,): each fact's first row, its bare prompt ("{}")."""
    import torch

    bare = torch.zeros(n, dtype=torch.long, device=rows.fact.device)
    for b in reversed(range(rows.fact.shape[0])):
        bare[rows.fact[b]] = b
    return bare
