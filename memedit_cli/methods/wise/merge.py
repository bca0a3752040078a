"""TIES merging (Yadav et al., arXiv 2306.01708) of WISE shards into one side memory.

Each shard is a task vector τ_i = W'_i − W (the delta, in the layer's weight
layout). TIES: trim each τ_i to its top `density` fraction of entries by
magnitude (counted among the entries the shard may change, its nonzeros: a
WISE shard changes only its mask, ρ = 20% of W, so a density counted over all
of W's entries would keep every one of them and trim nothing), elect each
entry's sign as the sign of the sum of the trimmed vectors, and average the
trimmed entries that agree with it (entries that no shard kept stay 0). One
shard is returned unchanged: there is nothing to merge, and trimming it would
only remove half of its edits.
"""

from __future__ import annotations


def trim(tau, density: float):
    """τ with all but its `density` fraction of largest-magnitude nonzero entries set to 0."""
    import torch

    nonzero = tau.abs().flatten()
    nonzero = nonzero[nonzero > 0].float()  # (nnz,)
    k = int(round(density * len(nonzero)))
    if k >= len(nonzero):
        return tau
    if k <= 0:
        return torch.zeros_like(tau)
    cut = torch.kthvalue(nonzero, len(nonzero) - k).values  # the (nnz−k)-th smallest: keep what is above it
    return torch.where(tau.abs() > cut, tau, torch.zeros_like(tau))


def ties(taus: list, density: float):
    """The TIES merge of task vectors `taus` (each the same shape)."""
    import torch

    if len(taus) == 1:
        return taus[0]
    trimmed = torch.stack([trim(t.float(), density) for t in taus])  # (k, *shape)
    sign = torch.sign(trimmed.sum(0))  # elected sign per entry
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)  # (k, *shape)
    count = agree.sum(0).clamp(min=1)
    return (trimmed * agree).sum(0) / count
