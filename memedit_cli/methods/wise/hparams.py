"""WISE hyperparameters, with per-architecture defaults.

Names follow EasyEdit's `WISEHyperParams` where the meaning is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS = ("merge", "retrieve")
MASKS = ("random", "topk")
# Same-subject prompts about other relations, "{}" the subject: what an edit's relation floor is measured on
RELATION_TEMPLATES = (
    "{} is a", "{} was born in", "{} is located in", "What is {} known for?", "Who founded {}?",
    "When was {} founded?", "{} is made by", "The language of {} is", "Where is {}?", "What is {}?",
    "{} works as a", "{} belongs to", "Who is the owner of {}?", "In which country is {}?", "{} was created by",
    "What kind of thing is {}?",
)


@dataclass(frozen=True)
class WISEHparams:
    layer: int = -1  # block whose FFN output projection gets the side memory; -1: the architecture default
    variant: str = "merge"  # merge: one side memory (shards merged with TIES); retrieve: one per merge group
    # editing one shard: SGD on the shard's delta D = W' − W, inside its random mask
    n_iter: int = 70  # SGD steps per edit at most (WISE: 30–70)
    edit_lr: float = 1.0  # SGD learning rate (WISE: 1.0)
    weight_decay: float = 1e-5  # decay of D inside the mask (EasyEdit decays W' itself, outside the mask too)
    stop_loss: float = 0.02  # an edit stops once its whole loss is below this
    norm_constraint: float = 1.0  # |D| <= this, element-wise, after each step (WISE: 1.0)
    mask_ratio: float = 0.2  # ρ: the fraction of W' one shard may change (WISE: 0.2)
    # which entries a shard may change: random (WISE: each entry with probability mask_ratio), or topk
    # (MEMOIR's TopHash without the hash: the columns of the `mask_k` input features the edit activates most)
    mask: str = "random"
    mask_k: int = 32  # topk: input features (columns of W) per edit; a shard holds the union of its edits'
    save_freq: int = 500  # edits per shard at most; an apply is cut into shards of this size (WISE: 500)
    merge_freq: int = 1000  # retrieve: shards are merged into one memory per this many edits (WISE: 1000)
    densities: float = 0.53  # TIES: the fraction of each shard's entries kept, by magnitude (WISE: 0.53)
    # routing: activation (WISE: ‖a(x)(W'−W)‖ > ε) or keys (the nearest edit subject, router.py)
    router: str = "activation"
    key_layer: int = -1  # keys: the block whose FFN activation is the key; -1: a tenth of the depth, below `layer`
    key_threshold: float = 0.7  # keys: a key's cosine threshold is at least this...
    key_margin: float = 0.05  # ...and this above the unrelated pool's best cosine to it
    # keys: a row must also ask about the edit's relation: its relation score (router.relation_score, the edit
    # prompt's words outside the subject found in the row) above the edit's floor (the best score of the
    # subject in `relation_templates`, other relations) + relation_margin, at most 0.95
    key_relation: bool = False
    relation_margin: float = 0.0
    relation_templates: tuple[str, ...] = RELATION_TEMPLATES
    act_ratio: float = 0.88  # ε = act_ratio · (smallest routing score of the memory's edits) (WISE: 0.88)
    route_reduce: str = "mean"  # Δ over a row's positions: mean (WISE) or max (the most affected position)
    # what Δ measures per position: delta, ‖a(x) Dᵀ‖ (the paper's ‖A(x)(W'−W)‖); activated, ‖σ(out') − σ(out)‖
    # with σ the model's activation function applied to the layer's outputs with and without D (EasyEdit's euc)
    route_distance: str = "delta"
    # edit: each edit's score when it finished (WISE); final: re-measured on the finished shard
    threshold_from: str = "edit"
    # routing loss: max(0, Δ_irr − α) + max(0, β − Δ_edit) + max(0, γ − (Δ_edit − Δ_irr))
    # (router=keys has none; α, β, γ are then left 0)
    alpha: float = 0.0  # 0: resolved as alpha_rel · m, m = mean ‖FFN output‖ per token of the base layer
    beta: float = 0.0
    gamma: float = 0.0
    alpha_rel: float = 0.25  # LLaMA-2-7B's α, β, γ = 5, 20, 10 in this ratio; sized for SmolLM2 (docs/methods/wise.md)
    beta_rel: float = 1.0
    gamma_rel: float = 0.5
    n_prefixes: int = 10  # random prefixes the edit prompt also trains under (WISE: ~10)
    prefix_length: int = 5  # tokens per prefix
    prefixes: tuple[str, ...] = ()  # (): generated once per model, then recorded here
    irrelevant: tuple[str, ...] = ()  # the pool of unrelated prompts (x_irr); (): generated once per model
    n_irrelevant: int = 32
    irrelevant_per_edit: int = 1  # unrelated prompts each edit's routing loss pushes below α (WISE: 1)
    fast_path: bool = True  # run only the blocks above the side memory while editing (False: the full model)

    def check(self) -> str | None:
        if self.variant not in VARIANTS:
            return f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}"
        if self.router not in ("activation", "keys"):
            return f"router must be activation or keys, got {self.router!r}"
        if not -1 <= self.key_threshold <= 1:
            return f"key_threshold is a cosine, between -1 and 1, got {self.key_threshold}"
        if self.mask not in MASKS:
            return f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}"
        if self.route_reduce not in ("mean", "max"):
            return f"route_reduce must be mean or max, got {self.route_reduce!r}"
        if self.route_distance not in ("delta", "activated"):
            return f"route_distance must be delta or activated, got {self.route_distance!r}"
        if self.threshold_from not in ("edit", "final"):
            return f"threshold_from must be edit or final, got {self.threshold_from!r}"
        for name in ("n_iter", "save_freq", "merge_freq", "prefix_length", "n_irrelevant", "irrelevant_per_edit",
                     "mask_k"):
            if getattr(self, name) < 1:
                return f"{name} must be >= 1, got {getattr(self, name)}"
        if self.irrelevant_per_edit > self.n_irrelevant:
            return f"irrelevant_per_edit ({self.irrelevant_per_edit}) must be <= n_irrelevant ({self.n_irrelevant})"
        if not 0 < self.mask_ratio <= 1:
            return f"mask_ratio must be in (0, 1], got {self.mask_ratio}"
        if not 0 < self.densities <= 1:
            return f"densities must be in (0, 1], got {self.densities}"
        for name in ("edit_lr", "norm_constraint", "act_ratio"):
            if getattr(self, name) <= 0:
                return f"{name} must be > 0, got {getattr(self, name)}"
        if any("{}" not in t for t in self.relation_templates):
            return "every relation template needs a {} where the subject goes"
        for name in ("weight_decay", "stop_loss", "alpha", "beta", "gamma", "alpha_rel", "beta_rel", "gamma_rel",
                     "n_prefixes", "key_margin"):
            if getattr(self, name) < 0:
                return f"{name} must be >= 0, got {getattr(self, name)}"
        return None
