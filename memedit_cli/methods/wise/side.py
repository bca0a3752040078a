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

from memedit_cli.methods.wise import modeling_memedit_wise as modeling


class WISELayer(modeling.WISELayer):
    """The exported WISELayer (routing and adding the memories), plus its shards and how memories are rebuilt."""

    def __init__(self, base: nn.Module):
        super().__init__(base)
        # per shard, in order: "index" (int64 (nnz,), flat, its mask's entries), "values" (float32 (nnz,)),
        # "scores", and with router=keys "keys" and "key_tau"; kept sparse, densified only to merge
        self.shards: list[dict] = []
        self.nnz: list[int] = []  # per memory: -1 stored dense (memory_i), else its nonzeros (memory_i_index/_values)
        self.edits: list[int] = []  # edits per memory
        self.bypass = False  # True while editing: the main memory only
        self.unsettled = None  # the hparams of the last shard attached since the memories were rebuilt
        self._built: list[tuple] = []  # per memory, the ids of the shards it was built from (rebuild keeps those)
        self._act_ratio = self._densities = None  # what the kept memories were built with
        self.act_name = None  # the model's activation function (config.hidden_act), for route_distance=activated

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
        groups = [g for g in groups if g]
        keys = [tuple(id(s) for s in g) for g in groups]  # a memory whose shards are the same is kept as it is
        same = 0
        while same < min(len(keys), len(self._built)) and keys[same] == self._built[same]:
            same += 1
        if (hp.act_ratio, hp.densities) != (self._act_ratio, self._densities):
            same = 0
        for i, n in enumerate(self.nnz[same:], same):
            for suffix in ([""] if n < 0 else ["_index", "_values"]):
                delattr(self, f"memory_{i}{suffix}")
        w = self.base.weight
        self.eps, self.edits, self.nnz = self.eps[:same], self.edits[:same], self.nnz[:same]
        self.variant, self.reduce = hp.variant, hp.route_reduce
        self.act = self.act_name if hp.route_distance == "activated" else None
        self._act_ratio, self._densities = hp.act_ratio, hp.densities
        self._built = keys
        for i, group in enumerate(groups[same:], same):
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
            router.rebuild(groups, hp)

    def scores(self, x) -> torch.Tensor:
        """(n_memories, B) routing scores Δ_i for an activation x (B, T, d_in)."""
        return self._score([self._extra(x, d) for d in self.memories], self.base(x))

    def forward(self, x):
        return self.base(x) if self.bypass else super().forward(x)


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
