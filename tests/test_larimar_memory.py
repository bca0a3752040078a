"""Larimar's episodic memory: exact sequential write and forget (memedit_cli/methods/larimar/memory.py)."""

from __future__ import annotations

import pytest
import torch

from memedit_cli.methods.larimar.memory import EpisodicMemory, reference_memory


def episodes(n: int, C: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_write_then_forget_returns_the_memory_to_its_earlier_value():
    mem = EpisodicMemory(K=16, C=24, ridge=0.5)
    mem.write(episodes(5, seed=1))
    M, cov = mem.M.clone(), mem.cov.clone()
    z = episodes(2, seed=2)
    mem.write(z)
    assert not torch.allclose(mem.M, M)
    mem.forget(z)
    assert torch.allclose(mem.M, M, atol=1e-10) and torch.allclose(mem.cov, cov, atol=1e-10)


def test_forgetting_an_earlier_write_equals_never_writing_it():
    a, b, c = episodes(3, seed=1), episodes(4, seed=2), episodes(2, seed=3)
    mem = EpisodicMemory(K=16, C=24, ridge=0.5)
    for z in (a, b, c):
        mem.write(z)
    mem.forget(b)  # b was written before c: no replay of c needed
    fresh = EpisodicMemory(K=16, C=24, ridge=0.5)
    fresh.write(a)
    fresh.write(c)
    assert torch.allclose(mem.M, fresh.M, atol=1e-9) and torch.allclose(mem.cov, fresh.cov, atol=1e-9)


def test_sequential_writes_give_the_batch_ridge_solution():
    Z = episodes(7)
    mem = EpisodicMemory(K=16, C=24, ridge=0.5)
    for row in Z:
        mem.write(row[None])
    W = mem.address(Z)
    batch = torch.linalg.solve(0.5 * torch.eye(16, dtype=torch.float64) + W.T @ W, W.T @ Z)
    assert torch.allclose(mem.M, batch, atol=1e-10)


def test_the_memory_solved_at_once_equals_the_sequential_writes():
    # materialize solves M from all episodes in C dimensions; the paper's rule writes them one by one
    Z = episodes(40)
    mem = EpisodicMemory(K=16, C=24, ridge=0.5, seed=2)
    for row in Z:
        mem.write(row[None])
    once = EpisodicMemory.of(Z, K=16, ridge=0.5, seed=2)
    assert torch.allclose(once.M, mem.M, atol=1e-9) and torch.allclose(once.cov, mem.cov, atol=1e-9)
    assert not torch.allclose(EpisodicMemory.of(Z[:-1], K=16, ridge=0.5, seed=2).M, mem.M, atol=1e-6)
    once.forget(Z[5:6])  # the sequential rule goes on from it
    fresh = EpisodicMemory.of(torch.cat([Z[:5], Z[6:]]), K=16, ridge=0.5, seed=2)
    assert torch.allclose(once.M, fresh.M, atol=1e-8)


def test_written_episodes_read_back_and_others_do_not():
    Z = episodes(6)
    mem = EpisodicMemory(K=16, C=24, ridge=1e-6)  # fewer episodes than slots: near exact recall
    mem.write(Z)
    assert torch.allclose(mem.read(Z), Z, atol=1e-4)
    other = episodes(1, seed=9)
    assert (mem.read(other) - other).norm() > 0.3 * other.norm()  # not in the memory's span


def test_the_reference_memory_is_fixed_by_its_seed():
    assert torch.equal(reference_memory(8, 4, seed=3), reference_memory(8, 4, seed=3))
    assert not torch.equal(reference_memory(8, 4, seed=3), reference_memory(8, 4, seed=4))


def test_bad_input_is_refused_and_leaves_the_memory_unchanged():
    mem = EpisodicMemory(K=8, C=4)
    mem.write(episodes(2, C=4))
    M = mem.M.clone()
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        mem.write(episodes(2, C=5))
    with pytest.raises(ValueError, match="not finite"):
        mem.write(torch.tensor([[float("nan"), 0.0, 0.0, 0.0]]))
    assert torch.equal(mem.M, M)
    with pytest.raises(ValueError, match="ridge"):
        EpisodicMemory(K=8, C=4, ridge=0.0)


def test_the_scope_measure_is_the_nearest_episodes_cosine():
    from memedit_cli.methods.larimar.modeling_memedit_larimar import nearest

    written = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    queries = torch.tensor([[2.0, 0.1, 0.0],  # cos 0.998 to episode 0
                            [0.6, 0.8, 0.0],  # cos 0.8 to episode 1, 0.6 to episode 0
                            [0.0, 0.0, 1.0]])  # orthogonal to both
    sim, which = nearest(queries, written)
    assert which.tolist() == [0, 1, 0] and torch.allclose(sim, torch.tensor([2 / 4.01 ** 0.5, 0.8, 0.0]))
    sim, which = nearest(queries, written[:0])  # nothing written: nothing in scope at any threshold
    assert which.tolist() == [-1, -1, -1] and (sim == float("-inf")).all()
