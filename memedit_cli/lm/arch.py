"""Architecture-specific module names, in one table.

Every method finds modules through `Arch`, never by spelling a path itself, so
supporting a new family is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from memedit_cli.errors import ModelError


@dataclass(frozen=True)
class Arch:
    family: str
    layers: str  # the ModuleList of decoder blocks
    mlp_out: str  # FFN output projection of block {} (ROME/MEMIT/WISE/FT-L edit this)
    final_norm: str
    lm_head: str

    def layer(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def mlp_out_at(self, i: int) -> str:
        return self.mlp_out.format(i)


_GPT2 = Arch("gpt2", "transformer.h", "transformer.h.{}.mlp.c_proj", "transformer.ln_f", "lm_head")
_GPTJ = Arch("gptj", "transformer.h", "transformer.h.{}.mlp.fc_out", "transformer.ln_f", "lm_head")
_LLAMA = Arch("llama", "model.layers", "model.layers.{}.mlp.down_proj", "model.norm", "lm_head")

# config.model_type -> module names. SmolLM/SmolLM2 checkpoints are model_type "llama".
ARCHS = {
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}


def arch_for(config) -> Arch:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise ModelError(f"model type {model_type!r} is not supported yet; supported: {', '.join(sorted(ARCHS))}. "
                         "Adding one is an entry in memedit_cli/lm/arch.py")
    return ARCHS[model_type]


def num_layers(config) -> int:
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")


def is_transposed(module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out); nn.Linear as (out, in). Decided by type, not shape."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def extra_output(module, x, delta):
    """What `delta` (in the module's own weight layout) adds to the module's output for input x."""
    return x @ delta if is_transposed(module) else x @ delta.T


def shape_key(config) -> tuple:
    """(model_type, hidden size, blocks): what per-model measured defaults are keyed by."""
    return (config.model_type, getattr(config, "hidden_size", None) or getattr(config, "n_embd", None),
            num_layers(config))
