"""Larimar's scope detector: is a query about a written episode at all?

The paper's external detector (ESD): 1-nearest-neighbour cosine similarity
of the query's sentence embedding to the written episodes' embeddings, in
scope when it reaches a threshold (≈ 0.7 in the paper). Out of scope, the
memory is not used and the model answers exactly as the base model.
"""

from __future__ import annotations

import torch


def nearest(queries: torch.Tensor, episodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each query (n, C) to its nearest episode (m, C), and that episode's index.

    Returns (sim (n,), index (n,)); with no episodes, sim is -inf and index -1.
    """
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    if len(episodes) == 0:
        return torch.full((len(q),), float("-inf")), torch.full((len(q),), -1, dtype=torch.long)
    sim = q @ torch.nn.functional.normalize(episodes.float(), dim=-1).T  # (n, m)
    best, index = sim.max(1)
    return best, index


def in_scope(queries, episodes, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) bool: the nearest episode is at least `threshold` similar; (n,) the episode, -1 when out of scope."""
    sim, index = nearest(queries, episodes)
    hit = sim >= threshold
    return hit, torch.where(hit, index, torch.full_like(index, -1))
