"""WISE side memories for a Hugging Face causal LM exported by memedit.

This file is copied into `memedit export --merged` folders and loaded with

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

by people who need not have memedit installed, so it imports only torch and
transformers. It mirrors memedit_cli/methods/wise/side.py's `WISELayer.forward`
(keep the two in step).

`config.memedit_wise` names each wrapped projection, relative to the model:

    {"model.layers.27.mlp.down_proj": {"eps": [ε_0, ...], "variant": "merge",
                                       "memories": k, "shape": [d_out, d_in]}}

Each class below builds the stock model, then replaces every listed module by
a `WISELayer` holding the original module as `base` and k zero buffers
`memory_0..memory_{k-1}` of `shape`, so the checkpoint's `<name>.base.weight`
and `<name>.memory_i` load into them by name.
"""

import torch
from torch import nn
from transformers import (
    GPT2LMHeadModel,
    GPTJForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    Qwen2ForCausalLM,
)
from transformers.pytorch_utils import Conv1D


class WISELayer(nn.Module):
    """The base projection W plus side memories M_i = W'_i − W, one picked per batch row.

    Memory i's routing score for a row is the mean (or, with "reduce": "max",
    the max) over its T positions of ‖a_t M_iᵀ‖₂, a_t the projection's input. A row uses W + M_i for the memory
    with the largest score among those above their ε_i, else W alone. Routing
    is per row and per call, so in cached generation each new token is routed
    on its own (as in memedit and EasyEdit).
    """

    def __init__(self, base: nn.Module, eps, variant: str, shape, reduce: str = "mean"):
        super().__init__()
        self.base = base
        self.reduce = reduce  # the score over a row's positions: "mean" (WISE) or "max"
        self.eps = [float(e) for e in eps]
        self.variant = variant  # informational: both variants route the same way at inference
        self.last_route = None  # (B,) long: the memory each row of the last call used, -1 for W alone
        w = base.weight
        if list(w.shape) != list(shape):
            raise ValueError(f"memedit_wise: memory shape {list(shape)} does not match the base weight {list(w.shape)}")
        for i in range(len(self.eps)):
            # zeros until the checkpoint's `memory_i` is loaded into them; w's device/dtype (meta while loading)
            self.register_buffer(f"memory_{i}", torch.zeros(w.shape, dtype=w.dtype, device=w.device))

    @property
    def memories(self) -> list:
        return [getattr(self, f"memory_{i}") for i in range(len(self.eps))]

    def _extra(self, x, delta):
        # GPT-2's Conv1D stores weights as (d_in, d_out), nn.Linear as (d_out, d_in)
        return x @ delta if isinstance(self.base, Conv1D) else x @ delta.T

    def forward(self, x):
        out = self.base(x)
        if not self.eps:
            return out
        squeeze = x.dim() == 2  # (T, d_in) without a batch dimension
        xb = x[None] if squeeze else x  # (B, T, d_in)
        extra = [self._extra(xb, d) for d in self.memories]  # each (B, T, d_out)
        norms = [e.norm(dim=-1) for e in extra]  # each (B, T)
        score = torch.stack([n.amax(-1) if self.reduce == "max" else n.mean(-1) for n in norms])  # (n, B)
        eps = torch.tensor(self.eps, device=score.device, dtype=score.dtype)[:, None]  # (n, 1)
        above = score > eps
        pick = torch.where(above, score, torch.full_like(score, -1.0)).argmax(0)  # (B,)
        routed = above.any(0)  # (B,)
        self.last_route = torch.where(routed, pick, torch.full_like(pick, -1))
        chosen = torch.stack(extra)[pick, torch.arange(xb.shape[0], device=xb.device)]  # (B, T, d_out)
        add = chosen * routed[:, None, None].to(chosen.dtype)
        return out + (add[0] if squeeze else add)


def attach_side_memories(model: nn.Module, config) -> None:
    """Wrap each module named in `config.memedit_wise` (none: the model stays the stock one)."""
    for name, spec in (getattr(config, "memedit_wise", None) or {}).items():
        if len(spec["eps"]) != spec["memories"]:
            raise ValueError(f"memedit_wise[{name!r}]: {spec['memories']} memories but {len(spec['eps'])} thresholds")
        parent, _, child = name.rpartition(".")
        base = model.get_submodule(name)
        setattr(model.get_submodule(parent), child, WISELayer(base, spec["eps"], spec["variant"], spec["shape"],
                                                                  spec.get("reduce", "mean")))


# One subclass per supported architecture: the stock __init__ (which ends in
# post_init), then the wrappers. Only parameter names under the wrapped
# projections change (`.weight` -> `.base.weight`); tied weights (lm_head and
# the embeddings) are untouched.


class WISELlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        attach_side_memories(self, config)


class WISEMistralForCausalLM(MistralForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        attach_side_memories(self, config)


class WISEQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        attach_side_memories(self, config)


class WISEGPT2LMHeadModel(GPT2LMHeadModel):
    def __init__(self, config):
        super().__init__(config)
        attach_side_memories(self, config)


class WISEGPTJForCausalLM(GPTJForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        attach_side_memories(self, config)
