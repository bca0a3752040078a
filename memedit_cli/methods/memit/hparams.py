"""MEMIT hyperparameters, with per-architecture defaults.

Names follow kmeng01/memit's `MEMITHyperParams` where the meaning is the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MEMITHparams:
    # the band R of blocks whose FFN output projection is edited; (): the architecture default
    layers: tuple[int, ...] = ()
    # target vectors z: a residual δ at the last subject token of block max(R)
    v_num_grad_steps: int = 25  # Adam steps at most (MEMIT: 20–25)
    v_lr: float = 0.5  # Adam learning rate on δ (MEMIT: 0.5)
    v_weight_decay: float = 0.5  # weight decay on ‖δ‖ / ‖h‖² (MEMIT)
    clamp_norm_factor: float = 0.75  # ‖δ‖ ≤ this · ‖h‖ (MEMIT: 0.75)
    kl_factor: float = 0.0625  # weight of the KL term on "{subject} is a" (MEMIT)
    v_stop_loss: float = 0.05  # a fact's δ stops once its loss is below this (MEMIT: 5e-2)
    n_context_templates: int = 5  # generated prefixes, besides the bare prompt (MEMIT: 5 of 10 tokens)
    context_template_length: int = 5  # tokens per generated prefix (MEMIT: 10; 5 keeps rows short, see docs)
    context_templates: tuple[str, ...] = ()  # (): generated once per model (cached), then recorded here
    # the closed-form update ΔW = R Kᵀ (λ C₀ + K Kᵀ)⁻¹, per layer of R
    mom2_update_weight: float = 0.0  # λ; 0: the architecture default, scaled to the key dimension
    mom2_corpus: str = ""  # text corpus for C₀ (plain text or JSONL); "": text sampled from the model itself
    mom2_n_tokens: int = 0  # tokens of corpus behind C₀; 0: 10 × d_in (FastMEMIT; docs/methods/memit.md: the sweep)
    null_space: bool = False  # AlphaEdit: project updates onto the null space of C₀ (sequential robustness)
    null_space_threshold: float = 1.0  # eigenvalues of C₀ below this fraction of the mean count as null (docs: sweep)
    null_space_l2: float = 1.0  # AlphaEdit's α: ridge term of the projected solve (docs: sweep)
    # run only the blocks above max(R) while optimizing z (False: the full model, for comparison)
    z_fast_path: bool = True

    def check(self) -> str | None:
        if any(layer < 0 for layer in self.layers):
            return f"layers must be >= 0, got {list(self.layers)}"
        if list(self.layers) != sorted(set(self.layers)):
            return f"layers must be increasing without repeats, got {list(self.layers)}"
        for name in ("v_lr", "clamp_norm_factor", "context_template_length"):
            if getattr(self, name) <= 0:
                return f"{name} must be > 0, got {getattr(self, name)}"
        for name in ("v_weight_decay", "kl_factor", "v_stop_loss", "mom2_update_weight", "n_context_templates",
                     "null_space_threshold", "null_space_l2"):
            if getattr(self, name) < 0:
                return f"{name} must be >= 0, got {getattr(self, name)}"
        if self.v_num_grad_steps < 1:
            return f"v_num_grad_steps must be >= 1, got {self.v_num_grad_steps}"
        if self.mom2_n_tokens != 0 and self.mom2_n_tokens < 1000:
            return f"mom2_n_tokens must be >= 1000 (or 0: 10 × the key width), got {self.mom2_n_tokens}"
        return None
