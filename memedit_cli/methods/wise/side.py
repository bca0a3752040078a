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
buffers (`memory_0`, ...), so `save_pretrained` writes them next to
`base.weight` and the exported modeling file loads them back by name.
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
        self.shards: list[dict] = []  # per shard, in order: its stored tensors with "delta" (D float32, base layout)
        self._router = (None,)  # the KeyRouter of router=keys (a tuple: not a submodule)
        self.eps: list[float] = []
        self.edits: list[int] = []  # edits per memory
        self.variant = "merge"
        self.reduce = "mean"  # Δ over a row's positions: "mean" (WISE) or "max"
        self.bypass = False  # True while editing: the main memory only
        self.last_route = None  # (B,) long: the memory each row of the last call used, -1 for the main memory

    @property
    def memories(self) -> list:
        return [getattr(self, f"memory_{i}") for i in range(len(self.eps))]

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
        for i in range(len(self.eps)):
            delattr(self, f"memory_{i}")
        w = self.base.weight
        self.eps, self.edits, self.variant, self.reduce = [], [], hp.variant, hp.route_reduce
        for i, group in enumerate(g for g in groups if g):
            merged = ties([s["delta"] for s in group], hp.densities)
            self.register_buffer(f"memory_{i}", merged.to(device=w.device, dtype=w.dtype))
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
                    add[rows] = extra_output(self.base, xb[rows], getattr(self, f"memory_{i}")).to(add.dtype)
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
