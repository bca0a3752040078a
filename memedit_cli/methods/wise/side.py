"""The side memory: a wrapper module around one FFN output projection.

`WISELayer` keeps the base layer (the main memory W, untouched) and a list of
side memories, each a delta M_i = W'_i − W with a routing threshold ε_i. For
an input x whose FFN activation (the projection's input) is a(x) (B, T, d_in),
memory i's routing score is

    Δ_i(x) = mean over the T positions of ‖a(x)_t M_iᵀ‖₂          (B,)

(WISE's ‖a(x)(W'−W)‖; with `route_reduce=max`, the max over positions).
A row uses W + M_i where Δ_i > ε_i (retrieve: the memory with the largest
Δ_i among those above their own ε_i), else W alone. With `router=keys` the
choice is made earlier in the same forward pass by a `KeyRouter` (router.py)
from the edits' keys, and Δ_i and ε_i are not used.
Routing is per row and per forward call, over every position of the call, as
EasyEdit does: score a batch of different lengths row by row (padding counts),
and in cached generation each new token is routed on its own (a KeyRouter,
instead, keeps the route its prompt chose).

The memories are rebuilt from the shards (one per apply batch, see
wise_main.py) by `rebuild`, never edited in place. They are registered
buffers (`memory_0`, ... or, when fewer than half the entries are nonzero,
`memory_0_index` and `memory_0_values`), so `save_pretrained` writes them
next to `base.weight` and the exported modeling file loads them back by name.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from memedit_cli.arch import extra_output


class WISELayer(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        # per shard, in order: "index" (int64 (nnz,), flat, its mask's entries), "values" (float32 (nnz,)),
        # "scores", and with router=keys "keys" and "key_tau"; kept sparse, densified only to merge
        self.shards: list[dict] = []
        self.nnz: list[int] = []  # per memory: -1 stored dense (memory_i), else its nonzeros (memory_i_index/_values)
        self._router = (None,)  # the KeyRouter of router=keys (a tuple: not a submodule)
        self.eps: list[float] = []
        self.edits: list[int] = []  # edits per memory
        self.variant = "merge"
        self.reduce = "mean"  # Δ over a row's positions: "mean" (WISE) or "max"
        self.bypass = False  # True while editing: the main memory only
        self.last_route = None  # (B,) long: the memory each row of the last call used, -1 for the main memory

    @property
    def memories(self) -> list:
        return [self.memory(i) for i in range(len(self.eps))]

    def memory(self, i: int) -> torch.Tensor:
        """Memory i as a dense matrix in the base layout (built from its nonzeros when stored sparse)."""
        if self.nnz[i] < 0:
            return getattr(self, f"memory_{i}")
        w = self.base.weight
        flat = torch.zeros(w.numel(), dtype=w.dtype, device=w.device)
        return flat.index_copy_(0, getattr(self, f"memory_{i}_index").long(), getattr(self, f"memory_{i}_values"))\
            .view(w.shape)

    def rebuild(self, hp) -> None:
        """Side memories from the shards: merge, one TIES merge of all; retrieve, one per `merge_freq` edits."""
        from memedit_cli.methods.wise.merge import ties

        groups, count = [[]], 0
        for shard in self.shards:
            if hp.variant == "retrieve" and count >= hp.merge_freq:
                groups.append([])
                count = 0
            groups[-1].append(shard)
            count += len(shard["scores"])
        for i, n in enumerate(self.nnz):
            for suffix in ([""] if n < 0 else ["_index", "_values"]):
                delattr(self, f"memory_{i}{suffix}")
        w = self.base.weight
        self.eps, self.edits, self.nnz, self.variant, self.reduce = [], [], [], hp.variant, hp.route_reduce
        for i, group in enumerate(g for g in groups if g):
            if len(group) == 1:  # one shard is the memory, untrimmed: keep it sparse
                index, values = group[0]["index"], group[0]["values"]
            else:
                merged = ties([_dense(s, w.shape) for s in group], hp.densities).flatten()
                index = merged.nonzero().squeeze(1)
                values = merged[index]
            if 2 * len(index) < w.numel():  # an int32 index and a value per nonzero are smaller than dense
                self.register_buffer(f"memory_{i}_index", index.to(device=w.device, dtype=torch.int32))
                self.register_buffer(f"memory_{i}_values", values.to(device=w.device, dtype=w.dtype))
                self.nnz.append(len(index))
            else:
                dense = torch.zeros(w.numel(), dtype=torch.float32).index_copy_(0, index, values.float())
                self.register_buffer(f"memory_{i}", dense.view(w.shape).to(device=w.device, dtype=w.dtype))
                self.nnz.append(-1)
            self.eps.append(hp.act_ratio * float(torch.cat([s["scores"] for s in group]).min()))
            self.edits.append(sum(len(s["scores"]) for s in group))
        router = self._router[0]
        if router is not None:
            router.rebuild([[(s["keys"], s["key_tau"]) for s in g] for g in groups if g])

    def scores(self, x) -> torch.Tensor:
        """(n_memories, B) routing scores Δ_i for an activation x (B, T, d_in)."""
        return self._score([extra_output(self.base, x, d) for d in self.memories])

    def _score(self, extra):
        """[(B, T, d_out)] per memory -> (n, B): the mean (or max) over positions of ‖a_t M_iᵀ‖."""
        norms = [e.norm(dim=-1) for e in extra]
        return torch.stack([n.amax(-1) if self.reduce == "max" else n.mean(-1) for n in norms])

    def forward(self, x):
        out = self.base(x)
        if self.bypass or not self.eps:
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
                    add[rows] = extra_output(self.base, xb[rows], self.memory(i)).to(add.dtype)
        else:
            extra = [extra_output(self.base, xb, d) for d in self.memories]  # each (B, T, d_out)
            score = self._score(extra)  # (n, B)
            eps = torch.tensor(self.eps, device=score.device, dtype=score.dtype)[:, None]  # (n, 1)
            above = score > eps
            pick = torch.where(above, score, torch.full_like(score, -1.0)).argmax(0)  # (B,)
            routed = above.any(0)  # (B,)
            route = torch.where(routed, pick, torch.full_like(pick, -1))
            chosen = torch.stack(extra)[pick, torch.arange(xb.shape[0], device=xb.device)]  # (B, T, d_out)
            add = chosen * routed[:, None, None].to(chosen.dtype)
        self.last_route = route
        return out + (add[0] if squeeze else add)


def _dense(shard: dict, shape) -> torch.Tensor:
    """A shard's delta D as a dense float32 matrix (base layout)."""
    flat = torch.zeros(int(torch.tensor(shape).prod()), dtype=torch.float32)
    return flat.index_copy_(0, shard["index"], shard["values"]).view(tuple(shape))


@contextlib.contextmanager
def main_memory_only(layer):
    """Inside the block, a WISELayer (if it is one) answers with its base layer only."""
    if not isinstance(layer, WISELayer):
        yield
        return
    before, layer.bypass = layer.bypass, True
    try:
        yield
    finally:
        layer.bypass = before
