"""Larimar hyperparameters.

All Larimar segments of a state share one memory, one encoder and one scope
detector, so every field must agree across them (`Larimar.resolve` refuses a
mix before anything is computed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

ENCODERS = ("auto", "minilm", "model")
MODES = ("context", "prefix")
SCOPES = ("subject", "similarity")


@dataclass(frozen=True)
class LarimarHparams:
    memory_size: int = 512  # K, memory rows (Larimar: 512); grows to the next power of two above the episode count
    ridge: float = 1.0  # λ: Cov₀ = λI keeps the key covariance invertible
    memory_seed: int = 0  # seeds the reference memory M_ref that addresses writes (W = Z M_ref⁺)
    # subject: in scope when the prompt names an episode's subject and the rest of it (the relation) encodes
    # within relation_threshold of the episode's; similarity: when the whole prompt encodes within threshold
    # of the nearest episode (the paper's detector). docs/methods/larimar.md has the measurements
    scope: str = "subject"
    relation_threshold: float = 0.7  # scope=subject: cosine of the prompts without their subject
    threshold: float = 0.7  # scope=similarity: the nearest episode's cosine must reach this
    encoder: str = "auto"  # minilm, model (the base model's hidden state), auto: minilm when installed
    encoder_layer: int = -1  # encoder=model: the block whose input is pooled; -1: half the depth
    # the text read before an in-scope prompt; {prompt} and {target} are the episode's fact. Said 8 times:
    # SmolLM2-135M copies the target more often the more it is said (held-out facts 500-599, Rel from twice
    # to 8 times: .82 -> .985 CounterFact, .81 -> .92 ZsRE; docs/methods/larimar.md, the context format)
    context: str = ". ".join(["{prompt} {target}"] * 8) + ".\n"
    # context: the episode's text is read (training-free); prefix (experimental): a trained adapter turns
    # the readout into key/value positions (`memedit larimar-train`)
    mode: str = "context"
    adapter: str = ""  # mode=prefix: an adapter id from `memedit larimar-train`; "": the latest for this base model
    # segments logged before the subject scope (issue 19) have no scope fields: they were scoped by similarity
    LEGACY: ClassVar[dict] = {"scope": "similarity"}

    def check(self) -> str | None:
        if self.memory_size < 1:
            return f"memory_size must be >= 1, got {self.memory_size}"
        if not self.ridge > 0:
            return f"ridge must be > 0 (it keeps the covariance invertible), got {self.ridge}"
        for name in ("threshold", "relation_threshold"):
            if not -1 <= getattr(self, name) <= 1:
                return f"{name} is a cosine similarity: between -1 and 1, got {getattr(self, name)}"
        if self.scope not in SCOPES:
            return f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}"
        if self.encoder not in ENCODERS:
            return f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}"
        if self.mode not in MODES:
            return f"mode must be one of {', '.join(MODES)}, got {self.mode!r}"
        if "{prompt}" not in self.context or "{target}" not in self.context:
            return f"context must contain {{prompt}} and {{target}}, got {self.context!r}"
        try:
            self.context.format(prompt="", target="")
        except (KeyError, IndexError, ValueError) as e:
            return f"context: only {{prompt}} and {{target}} may appear in braces ({e})"
        return None
