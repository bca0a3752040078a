"""Larimar's linear episodic memory, written and erased by exact least squares.

An episode (a fact) is encoded to z ∈ R^C. The memory M (K × C) holds all
written episodes as the ridge least-squares solution

    M = argmin over M of  Σ_i ‖Z_i − W_i M‖² + λ ‖M‖²

where W_i (n_i × K) are the episodes' addressing weights. Addressing goes
through a fixed reference memory M_ref (K × C, drawn from a seed), W = Z M_ref⁺,
not through M itself: a write's W can then be recomputed at forget time from
the episode alone, whatever was written since.

The solution is kept as the pair (Cov, M) with Cov = λI + Σ WᵢᵀWᵢ (K × K), and
updated per write (α = +1) or forget (α = −1), the paper's sequential rule:

    Cov ← Cov + α WᵀW
    M   ← M + α Cov⁻¹ Wᵀ (Z − W M)

Both keep Cov·M = Σ α WᵢᵀZᵢ, so after any sequence of writes and forgets M is
the least-squares memory of the episodes still written: forgetting needs no
replay of the others. λ > 0 keeps Cov invertible. Everything is float64 on
the CPU generator, so a state does not depend on the device or the order of
operations beyond rounding.
"""

from __future__ import annotations

import functools

import torch


def reference_memory(K: int, C: int, seed: int) -> torch.Tensor:
    """(K, C) float64 M_ref, rows ~ N(0, I/C), drawn on the CPU so every device gets the same one."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(K, C, generator=gen, dtype=torch.float64) / C ** 0.5


@functools.lru_cache(maxsize=4)
def reference_pinv(K: int, C: int, seed: int) -> torch.Tensor:
    """(C, K) float64 M_ref⁺, once per process and size: its SVD is most of the cost of materializing a
    state (every `apply` of one fact to a 1,000-episode state paid it again). Read only."""
    return torch.linalg.pinv(reference_memory(K, C, seed))


class EpisodicMemory:
    """The memory M (K × C) and its key covariance Cov (K × K), float64."""

    def __init__(self, K: int, C: int, ridge: float = 1.0, seed: int = 0):
        if K < 1 or C < 1:
            raise ValueError(f"memory sizes must be >= 1, got K={K}, C={C}")
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0 (it keeps the covariance invertible), got {ridge}")
        self.K, self.C, self.ridge, self.seed = K, C, float(ridge), seed
        self.ref_pinv = reference_pinv(K, C, seed)  # (C, K), shared: never changed in place
        self.M = torch.zeros(K, C, dtype=torch.float64)
        self._cov = None  # (K, K), made when first needed: `of` does not need it
        self._gram = torch.zeros(C, C, dtype=torch.float64)  # Σ ZᵢᵀZᵢ while _cov is None

    @classmethod
    def of(cls, Z: torch.Tensor, K: int, ridge: float = 1.0, seed: int = 0) -> "EpisodicMemory":
        """The memory holding episodes Z (n, C): the same least-squares M that writing them gives, solved
        in the C-dimensional space (O(nC² + KC²), no K × K system), as a state is materialized.

        With P = M_ref⁺ (C, K) and G = ZᵀZ, W = ZP and Cov = λI + PᵀGP, so by the push-through
        identity M = Cov⁻¹WᵀZ = Cov⁻¹PᵀG = Pᵀ(λI + GPPᵀ)⁻¹G.
        """
        mem = cls(K, Z.shape[1] if Z.dim() == 2 else 0, ridge, seed)
        Z = mem._check(Z)
        G = Z.T @ Z  # (C, C)
        P = mem.ref_pinv
        M = P.T @ torch.linalg.solve(mem.ridge * torch.eye(mem.C, dtype=torch.float64) + G @ (P @ P.T), G)
        if not torch.isfinite(M).all():
            raise ValueError("the memory is not finite")
        mem.M, mem._gram = M, G
        return mem

    @property
    def cov(self) -> torch.Tensor:
        """(K, K) Cov = λI + Σ WᵢᵀWᵢ."""
        if self._cov is None:
            P = self.ref_pinv
            self._cov = self.ridge * torch.eye(self.K, dtype=torch.float64) + P.T @ self._gram @ P
        return self._cov

    def address(self, Z: torch.Tensor) -> torch.Tensor:
        """(n, K) addressing weights W = Z M_ref⁺ of episodes Z (n, C)."""
        Z = self._check(Z)
        return Z @ self.ref_pinv

    def write(self, Z: torch.Tensor) -> None:
        """Write episodes Z (n, C)."""
        self._update(Z, +1.0)

    def forget(self, Z: torch.Tensor) -> None:
        """Erase episodes Z (n, C) written earlier (exactly those encodings)."""
        self._update(Z, -1.0)

    def read(self, Zq: torch.Tensor) -> torch.Tensor:
        """(n, C) readouts z_r = W M with W = Z_q M⁺: each query projected onto what the memory holds."""
        Zq = self._check(Zq)
        # rtol as LarimarDecoder's readout: M has rank ≤ min(n, C) < K; directions below it are noise
        return (Zq @ torch.linalg.pinv(self.M, rtol=1e-6)) @ self.M

    def _update(self, Z, alpha: float) -> None:
        Z = self._check(Z)
        W = Z @ self.ref_pinv  # (n, K)
        cov = self.cov + alpha * (W.T @ W)
        M = self.M + alpha * torch.linalg.solve(cov, W.T @ (Z - W @ self.M))
        if not (torch.isfinite(cov).all() and torch.isfinite(M).all()):
            raise ValueError("the memory update is not finite; nothing was changed")
        self._cov, self.M = cov, M

    def _check(self, Z) -> torch.Tensor:
        Z = torch.as_tensor(Z).to(torch.float64).cpu()
        if Z.dim() != 2 or Z.shape[1] != self.C:
            raise ValueError(f"episodes must be (n, {self.C}), got {tuple(Z.shape)}")
        return Z
