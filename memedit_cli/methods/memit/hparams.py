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
    # "reference": KL(current ‖ initial), as kmeng01/memit computes it (the default of new applies);
    # "reverse": KL(initial ‖ current), what memedit computed before (the value a log without the field means)
    kl_direction: str = "reverse"
    v_stop_loss: float = 0.05  # a fact's δ stops once its loss is below this (MEMIT: 5e-2)
    n_context_templates: int = 5  # generated prefixes, besides the bare prompt (MEMIT: 5 of 10 tokens)
    context_template_length: int = 5  # tokens per generated prefix (MEMIT: 10; 5 keeps rows short, see docs)
    context_templates: tuple[str, ...] = ()  # (): generated once per model (cached), then recorded here
    # the closed-form update ΔW = R Kᵀ (λ C₀ + K Kᵀ)⁻¹, per layer of R
    mom2_update_weight: float = 0.0  # λ; 0: the architecture default, scaled to the key dimension
    mom2_corpus: str = ""  # text corpus for C₀ (plain text or JSONL); "": text sampled from the model itself
    mom2_n_tokens: int = 0  # tokens of corpus behind C₀; 0: 20 × d_in (docs/methods/memit.md: the sweep)
    # how a batch's update is solved, given the keys Kp of the earlier batches in the state (docs/methods/memit.md):
    #   "memit": ΔW = R Kᵀ (λC₀ + KKᵀ)⁻¹, every batch against C₀ alone (the paper, kmeng01/memit)
    #   "sequential": ΔW = R Kᵀ (λC₀ + Σ Kp Kpᵀ + KKᵀ)⁻¹, the earlier batches' keys preserved as C₀'s are
    #   "alphaedit": AlphaEdit (arXiv 2410.02355): P projects onto the eigenvectors of C₀ with eigenvalue
    #       < alphaedit_threshold, ΔW = R Kᵀ P (Σ Kp Kpᵀ P + KKᵀ P + α I)⁻¹ with α = null_space_l2
    # every batch but a "memit" one stores its keys K (d_in, n) per layer for the batches after it
    update: str = "memit"
    alphaedit_threshold: float = 0.0  # absolute, on C₀'s eigenvalues as computed; 0: the measured default
    norm_anchor: bool = False  # NAS (arXiv 2602.02543): each value vector rescaled to the original model's norm
    # the pre-issue-18 null-space option, kept so that logs using it replay: a threshold relative to the
    # mean eigenvalue, earlier keys of null_space batches only. New applies: --set update=alphaedit
    null_space: bool = False
    null_space_threshold: float = 1.0  # null_space: eigenvalues below this × their mean count as null
    null_space_l2: float = 1.0  # α: the ridge term of the projected solve (null_space and alphaedit)
    # run only the blocks above max(R) while optimizing z (False: the full model, for comparison)
    z_fast_path: bool = True
    # facts whose z are optimized together (0: the whole batch, what logs without the field did); z is the
    # same either way up to float rounding, and memory for the backward grows with it (compute_z.py)
    z_batch: int = 0

    def check(self) -> str | None:
        if any(layer < 0 for layer in self.layers):
            return f"layers must be >= 0, got {list(self.layers)}"
        if list(self.layers) != sorted(set(self.layers)):
            return f"layers must be increasing without repeats, got {list(self.layers)}"
        for name in ("v_lr", "clamp_norm_factor", "context_template_length"):
            if getattr(self, name) <= 0:
                return f"{name} must be > 0, got {getattr(self, name)}"
        for name in ("v_weight_decay", "kl_factor", "v_stop_loss", "mom2_update_weight", "n_context_templates",
                     "null_space_threshold", "null_space_l2", "alphaedit_threshold", "z_batch"):
            if getattr(self, name) < 0:
                return f"{name} must be >= 0, got {getattr(self, name)}"
        if self.update not in ("memit", "sequential", "alphaedit"):
            return f'update must be "memit", "sequential" or "alphaedit", got {self.update!r}'
        if self.null_space and self.update != "memit":
            return "null_space is the old form of update=alphaedit; give one of them, not both"
        if self.kl_direction not in ("reference", "reverse"):
            return f'kl_direction must be "reference" or "reverse", got {self.kl_direction!r}'
        if self.v_num_grad_steps < 1:
            return f"v_num_grad_steps must be >= 1, got {self.v_num_grad_steps}"
        if self.mom2_n_tokens < 0:  # a count below 2 × the key width is refused once the model is known
            return f"mom2_n_tokens must be >= 0 (0: 20 × the key width), got {self.mom2_n_tokens}"
        return None
