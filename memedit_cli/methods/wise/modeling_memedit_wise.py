"""WISE side memories for a Hugging Face causal LM exported by memedit.

This file is copied into `memedit export --merged` folders and loaded with

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

by people who need not have memedit installed, so it imports only torch and
transformers. It mirrors memedit_cli/methods/wise/side.py's `WISELayer.forward`
(keep the two in step).

`config.memedit_wise` names each wrapped projection, relative to the model:

    {"model.layers.27.mlp.down_proj": {"eps": [ε_0, ...], "variant": "merge",
                                       "memories": k, "shape": [d_out, d_in], "nnz": [-1, n_1, ...],
                                       "router": {"module": "model.layers.3.mlp.down_proj",
                                                  "keys": [n_0, ...], "relation": M}}}

`WISE<Stock>` (made from transformers' `<Stock>` class on first use, below)
builds the stock model, then replaces every listed module by
a `WISELayer` holding the original module as `base` and k zero buffers
`memory_0..memory_{k-1}` of `shape`, so the checkpoint's `<name>.base.weight`
and `<name>.memory_i` load into them by name. A memory whose "nnz" is n ≥ 0
is stored sparse instead, as `<name>.memory_i_index` (int32, flat indices
into `shape`) and `<name>.memory_i_values` (n each): one edit's shard changes
only a fraction ρ of the entries. With a "router" entry (memedit's
`router=keys`), the named earlier projection is wrapped by a `KeyRouter`
holding the edit keys of all memories (`keys`, (N, d_in), memory by memory in
the order of "keys", which gives each memory's count) and their thresholds
(`tau`, (N,)), and the WISELayer takes its routes from it.

memedit_cli builds on `KeyRouter` and `WISELayer` from this file (router.py and
side.py add how they are rebuilt from shards), so memedit and the export route
and add the memories with one piece of code.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D


class KeyRouter(nn.Module):
    """An early FFN output projection, unchanged, that decides which side memory each row uses.

    Memory i holds one key k_j per edit (the projection's input a at the edit's last
    subject token) and a threshold τ_j per key. For a row, memory i's margin is

        max over positions t and the memory's keys j of  cos(a_t, k_j) − τ_j

    With a relation gate ("relation": M in the config, memedit's `key_relation`), key j
    also holds the edit prompt's words outside its subject (rows of `rel_keys`, (M, d_in),
    `rel_owner` naming each row's key) and a threshold ρ_j (`rel_tau`); its margin is then
    the smaller of the one above and

        mean over key j's word rows r of (max over positions t of cos(a_t, r)) − ρ_j

    (how much of the edit's relation the row asks about), so a prompt naming the edited
    subject about another relation stays in the main memory. The row uses the memory
    with the largest margin above 0, else the main memory
    (`route`, (B,), −1 for the main memory). A call of one position that continues the
    previous call's rows (cached generation) keeps the running max of the margins, so
    an answer's later tokens use the memory its prompt chose; a call of several
    positions, or `reset()`, starts new sequences.
    """

    def __init__(self, base: nn.Module, counts, relation: int | None = None):
        super().__init__()
        self.base = base
        w = base.weight
        d_in = w.shape[0] if isinstance(base, Conv1D) else w.shape[1]
        n = sum(int(c) for c in counts)
        # all memories' keys in one matrix, so routing is one matmul however many memories there are;
        # zeros until loaded or rebuilt, on w's device/dtype (meta while loading)
        self.register_buffer("keys", torch.zeros(n, d_in, dtype=w.dtype, device=w.device))  # (N, d_in)
        self.register_buffer("tau", torch.zeros(n, dtype=w.dtype, device=w.device))  # (N,)
        self.set_relation(relation, n, d_in, w)
        self.set_counts(counts)
        self.route = None  # (B,) long: the memory each row uses, -1 for the main memory
        self._margin = None  # (n_memories, B): the running max for cached generation
        self._units = {}  # buffer name -> (the buffer, its version, what _derived made of it)

    def set_counts(self, counts) -> None:
        """Keys per memory, in order: the memory each row of `keys` belongs to."""
        self.counts = [int(c) for c in counts]
        # (N,) long, a plain tensor (not a buffer: from_pretrained builds buffers on the meta device)
        self.owner = torch.repeat_interleave(torch.arange(len(self.counts), device="cpu"),
                                             torch.tensor(self.counts, dtype=torch.long, device="cpu"))

    def set_relation(self, m: int | None, n: int, d_in: int, w) -> None:
        """The relation gate's buffers for m word rows of n keys (None: no gate)."""
        for name in ("rel_keys", "rel_owner", "rel_tau"):
            if hasattr(self, name):
                delattr(self, name)
        self.relation = m is not None
        if self.relation:
            self.register_buffer("rel_keys", torch.zeros(m, d_in, dtype=w.dtype, device=w.device))  # (M, d_in)
            self.register_buffer("rel_owner", torch.zeros(m, dtype=torch.int32, device=w.device))  # (M,)
            self.register_buffer("rel_tau", torch.zeros(n, dtype=w.dtype, device=w.device))  # (N,)

    def reset(self) -> None:
        self._margin = None

    def _unit(self, name: str) -> torch.Tensor:
        """Buffer `name`'s rows as float32 unit vectors, normalized once, not at every call: at a thousand
        edits the relation rows are ~10⁴ × d_in, and normalizing them per generated token cost about as much
        as the matmul itself."""
        return self._derived(name, lambda t: nn.functional.normalize(t.float(), dim=-1))

    def _derived(self, name: str, make) -> torch.Tensor:
        """make(buffer `name`), kept until the buffer changes: a rebuild, a load or `.to()` gives a new
        tensor or a new version, and then it is made anew. One derived tensor per buffer."""
        t = getattr(self, name)
        hit = self._units.get(name)
        if hit is None or hit[0] is not t or hit[1] != t._version:
            hit = (t, t._version, make(t))
            self._units[name] = hit
        return hit[2]

    def _relation_margin(self, a, keys) -> torch.Tensor:
        """(B, C): for the keys `keys` ((C,) long), the mean over each key's word rows of their best cosine to
        a (B, T, d_in, unit rows) − ρ; +inf for a key without word rows (no gate)."""
        owner = self._derived("rel_owner", torch.Tensor.long)  # (M,) int64, on the buffers' device (the input's)
        slot = torch.full((self.keys.shape[0],), -1, dtype=torch.long, device=a.device)
        slot[keys] = torch.arange(len(keys), device=a.device)  # key j -> its column among `keys`, or -1
        mine = slot[owner]  # (M,)
        take = (mine >= 0).nonzero().squeeze(1)  # the word rows of these keys only
        rows = (a @ self._unit("rel_keys")[take].T).amax(1)  # (B, m)
        total = rows.new_zeros(rows.shape[0], len(keys)).index_add_(1, mine[take], rows)  # (B, C)
        count = rows.new_zeros(len(keys)).index_add_(0, mine[take], torch.ones_like(rows[0]))
        score = torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("inf")))
        return score - self.rel_tau.float()[keys]

    def margins(self, x) -> torch.Tensor:
        """(n_memories, B) margins for the projection input x (B, T, d_in): exact where above 0, and at
        most 0 where the exact margin is (which is all routing asks of them)."""
        a = nn.functional.normalize(x.float(), dim=-1)
        per_key = (a @ self._unit("keys").T - self.tau.float()).amax(1)  # (B, N): the best position per key
        if self.relation:
            # the gate only lowers a key's margin (a min), so it is computed for the keys above 0 alone,
            # a handful, instead of all ~10 word rows of every edit per generated token
            keys = (per_key > 0).any(0).nonzero().squeeze(1)  # (C,)
            if len(keys):
                per_key[:, keys] = torch.minimum(per_key[:, keys], self._relation_margin(a, keys))
        if self.owner.device != per_key.device:
            self.owner = self.owner.to(per_key.device)
        B, owner = per_key.shape[0], self.owner
        per_memory = per_key.new_full((B, len(self.counts)), float("-inf"))
        return per_memory.scatter_reduce(1, owner.expand(B, -1), per_key, "amax").T

    def forward(self, x):
        out = self.base(x)
        if not self.counts:
            return out
        xb = x[None] if x.dim() == 2 else x  # (B, T, d_in)
        margin = self.margins(xb)
        prev = self._margin
        if prev is not None and xb.shape[1] == 1 and prev.shape[1] == xb.shape[0]:
            margin = torch.maximum(margin, prev)  # the next token of the same rows
        self._margin = margin
        best, pick = margin.max(0)
        self.route = torch.where(best > 0, pick, torch.full_like(pick, -1))
        return out


class WISELayer(nn.Module):
    """The base projection W plus side memories M_i = W'_i − W, one picked per batch row.

    Memory i's routing score for a row is the mean (or, with "reduce": "max",
    the max) over its T positions of ‖a_t M_iᵀ‖₂, a_t the projection's input (with
    "act": σ, of ‖σ(o_t + a_t M_iᵀ) − σ(o_t)‖₂, o_t the base projection's output). A row uses W + M_i for the memory
    with the largest score among those above their ε_i, else W alone. Routing
    is per row and per call, so in cached generation each new token is routed
    on its own (as in memedit and EasyEdit). With a KeyRouter the route is the
    router's, which keeps the prompt's route while generating.
    """

    def __init__(self, base: nn.Module, eps=(), variant: str = "merge", shape=None, reduce: str = "mean", router=None,
                 nnz=None, act: str | None = None):
        super().__init__()
        self.base = base
        # None: a memory's score is ‖a_t M_iᵀ‖; an activation's name (config.hidden_act): ‖σ(o + a_t M_iᵀ) − σ(o)‖,
        # o the base output at t (memedit's route_distance=activated, EasyEdit's distance)
        self.act = act
        self._router = (router,)  # a KeyRouter in an earlier block, or None; a tuple: not a submodule
        self.reduce = reduce  # the score over a row's positions: "mean" (WISE) or "max"
        self.eps = [float(e) for e in eps]
        self.variant = variant  # informational: both variants route the same way at inference
        self.last_route = None  # (B,) long: the memory each row of the last call used, -1 for W alone
        w = base.weight
        if shape is not None and list(w.shape) != list(shape):
            raise ValueError(f"memedit_wise: memory shape {list(shape)} does not match the base weight {list(w.shape)}")
        self.shape = list(w.shape)
        self.nnz = list(nnz or [-1] * len(self.eps))
        for i, n in enumerate(self.nnz):
            # zeros until the checkpoint's tensors are loaded into them; w's device/dtype (meta while loading)
            if n < 0:  # dense: (d_out, d_in) in the base layout
                self.register_buffer(f"memory_{i}", torch.zeros(w.shape, dtype=w.dtype, device=w.device))
            else:  # sparse: the n nonzero entries, by flat index into the base layout
                self.register_buffer(f"memory_{i}_index", torch.zeros(n, dtype=torch.int32, device=w.device))
                self.register_buffer(f"memory_{i}_values", torch.zeros(n, dtype=w.dtype, device=w.device))

    def memory(self, i: int) -> torch.Tensor:
        """Memory i as a dense matrix in the base layout (built from its nonzeros when stored sparse)."""
        dense = getattr(self, f"memory_{i}", None)
        if dense is not None:
            return dense
        values = getattr(self, f"memory_{i}_values")
        flat = torch.zeros(self.shape[0] * self.shape[1], dtype=values.dtype, device=values.device)
        return flat.index_copy_(0, getattr(self, f"memory_{i}_index").long(), values).view(self.shape)

    @property
    def memories(self) -> list:
        return [self.memory(i) for i in range(len(self.eps))]

    def _extra(self, x, delta):
        # GPT-2's Conv1D stores weights as (d_in, d_out), nn.Linear as (d_out, d_in)
        return x @ delta if isinstance(self.base, Conv1D) else x @ delta.T

    def _apply(self, x, i: int):
        """x (B, T, d_in) through memory i alone, (B, T, d_out): a dense memory by one matmul, a sparse one
        from its nonzeros without building the dense matrix (an edit's memory is a few of its columns)."""
        if getattr(self, f"memory_{i}", None) is not None:
            return self._extra(x, self.memory(i))
        index = getattr(self, f"memory_{i}_index").long()
        values = getattr(self, f"memory_{i}_values")
        d0, d1 = self.shape  # the base layout: (d_out, d_in) for nn.Linear, (d_in, d_out) for Conv1D
        if isinstance(self.base, Conv1D):
            col, row = index // d1, index % d1
            d_out = d1
        else:
            row, col = index // d1, index % d1
            d_out = d0
        out = x.new_zeros(*x.shape[:-1], d_out)
        return out.index_add_(-1, row, x[..., col] * values.to(x.dtype))

    def _score(self, extra, out=None):
        """[(B, T, d_out)] per memory -> (n, B): the mean (or max) over positions of ‖a_t M_iᵀ‖, or with
        `act` of ‖σ(out + a_t M_iᵀ) − σ(out)‖ (out (B, T, d_out): the base layer's output)."""
        if self.act is not None:
            sigma = ACT2FN[self.act]
            extra = [sigma(out + e) - sigma(out) for e in extra]
        norms = [e.norm(dim=-1) for e in extra]  # each (B, T)
        return torch.stack([n.amax(-1) if self.reduce == "max" else n.mean(-1) for n in norms])

    def forward(self, x):
        out = self.base(x)
        if not self.eps:
            return out
        squeeze = x.dim() == 2  # (T, d_in) without a batch dimension
        xb = x[None] if squeeze else x  # (B, T, d_in)
        router = self._router[0]
        if router is not None:  # chosen earlier in this forward pass, from the edits' keys: only those memories run
            route = router.route.to(xb.device)  # (B,)
            add = torch.zeros(*xb.shape[:2], out.shape[-1], dtype=out.dtype, device=out.device)  # (B, T, d_out)
            for i in route.unique().tolist():
                if i >= 0:
                    rows = route == i
                    add[rows] = self._apply(xb[rows], i).to(add.dtype)
        else:
            extra = [self._extra(xb, d) for d in self.memories]  # each (B, T, d_out)
            score = self._score(extra, out[None] if squeeze else out)  # (n, B)
            eps = torch.tensor(self.eps, device=score.device, dtype=score.dtype)[:, None]  # (n, 1)
            above = score > eps
            pick = torch.where(above, score, torch.full_like(score, -1.0)).argmax(0)  # (B,)
            routed = above.any(0)  # (B,)
            route = torch.where(routed, pick, torch.full_like(pick, -1))
            chosen = torch.stack(extra)[pick, torch.arange(xb.shape[0], device=xb.device)]  # (B, T, d_out)
            add = chosen * routed[:, None, None].to(chosen.dtype)
        self.last_route = route
        return out + (add[0] if squeeze else add)


def attach_side_memories(model: nn.Module, config) -> None:
    """Wrap each module named in `config.memedit_wise` (none: the model stays the stock one)."""
    for name, spec in (getattr(config, "memedit_wise", None) or {}).items():
        if len(spec["eps"]) != spec["memories"]:
            raise ValueError(f"memedit_wise[{name!r}]: {spec['memories']} memories but {len(spec['eps'])} thresholds")
        router = None
        if spec.get("router"):
            keys = spec["router"]["keys"]
            if len(keys) != spec["memories"]:
                raise ValueError(f"memedit_wise[{name!r}]: {spec['memories']} memories but {len(keys)} key sets")
            router = KeyRouter(model.get_submodule(spec["router"]["module"]), keys, spec["router"].get("relation"))
            replace_module(model, spec["router"]["module"], router)
        layer = WISELayer(model.get_submodule(name), spec["eps"], spec["variant"], spec["shape"],
                          spec.get("reduce", "mean"), router, spec.get("nnz"), spec.get("act"))
        replace_module(model, name, layer)


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


class _Routed:
    """A new sequence (no cached positions yet) resets every KeyRouter's running margins."""

    def forward(self, *args, **kwargs):
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.24 names it cache
        if past is None or (hasattr(past, "get_seq_length") and past.get_seq_length() == 0):
            for m in self.modules():
                if isinstance(m, KeyRouter):
                    m.reset()
        return super().forward(*args, **kwargs)


# `WISE<Stock>`, e.g. WISELlamaForCausalLM, is made on first use from transformers' own `<Stock>` class
# (an export's auto_map names it): the stock __init__ (which ends in post_init), then the wrappers. Only
# parameter names under the wrapped projections change (`.weight` -> `.base.weight`); tied weights
# (lm_head and the embeddings) are untouched.
PREFIX = "WISE"


def __getattr__(name):
    import transformers

    stock = getattr(transformers, name[len(PREFIX):], None) if name.startswith(PREFIX) else None
    if not (isinstance(stock, type) and hasattr(stock, "from_pretrained")):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __init__(self, config):
        stock.__init__(self, config)
        attach_side_memories(self, config)

    cls = globals()[name] = type(name, (_Routed, stock), {"__init__": __init__, "__module__": __name__})
    return cls
