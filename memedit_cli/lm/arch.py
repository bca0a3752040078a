"""Architecture-specific module names, in one table.

Every method finds modules through `Arch`, never by spelling a path itself, so
supporting a new family is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from memedit_cli.errors import ModelError


@dataclass(frozen=True)
class Arch:
    family: str  # whose per-method default depths it takes (the methods' _FAMILY tables): llama, gptj, gpt2
    layers: str  # the ModuleList of decoder blocks
    mlp_out: str  # FFN output projection of block {} (ROME/MEMIT/WISE/FT-L edit this); "" where there is none
    final_norm: str
    no_mlp_out: str = ""  # why there is no one FFN projection to edit (mixture-of-experts blocks)

    def layer(self, i: int) -> str:
        return f"{self.layers}.{i}"

    def mlp_out_at(self, i: int) -> str:
        if not self.mlp_out:
            raise ModelError(self.no_mlp_out)
        return self.mlp_out.format(i)


_GPT2 = Arch("gpt2", "transformer.h", "transformer.h.{}.mlp.c_proj", "transformer.ln_f")
_GPTJ = Arch("gptj", "transformer.h", "transformer.h.{}.mlp.fc_out", "transformer.ln_f")
# LLaMA's names, shared by Mistral, Qwen2/3, Phi-3 (its fused gate_up_proj feeds the same down_proj),
# OLMo 2 and Gemma 2/3 (the last three add a norm after the FFN: docs/architectures.md)
_LLAMA = Arch("llama", "model.layers", "model.layers.{}.mlp.down_proj", "model.norm")
# GPT-NeoX (Pythia): parallel attention and FFN like GPT-J, so GPT-J's depths
_NEOX = Arch("gptj", "gpt_neox.layers", "gpt_neox.layers.{}.mlp.dense_4h_to_h", "gpt_neox.final_layer_norm")
_MOE = ("{}'s FFN is a mixture of experts: a router sends each token to a few experts, whose weights are one "
        "fused tensor, so no dense FFN projection writes every token's output to the residual stream{} for ft, "
        "memit or wise to edit; --method larimar works on this model (it edits no weights)")


def _moe(model_type: str, note: str = "") -> Arch:
    return Arch("llama", "model.layers", "", "model.norm", no_mlp_out=_MOE.format(model_type, note))


# config.model_type -> module names. SmolLM/SmolLM2 checkpoints are model_type "llama".
ARCHS = {
    "gpt2": _GPT2,
    "gptj": _GPTJ,
    "gpt_neox": _NEOX,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "phi3": _LLAMA,
    "olmo2": _LLAMA,
    "gemma2": _LLAMA,
    "gemma3_text": _LLAMA,  # Gemma 3's text model (Gemma3ForCausalLM); the multimodal "gemma3" is not
    "mixtral": _moe("mixtral"),
    "qwen2_moe": _moe("qwen2_moe", " (its shared expert's output is scaled by a per-token gate)"),
    "qwen3_moe": _moe("qwen3_moe"),
}


def arch_for(config) -> Arch:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        hint = (" (Gemma 3's multimodal checkpoint: load its text model, Gemma3ForCausalLM, model type "
                "gemma3_text)" if model_type == "gemma3" else "")
        raise ModelError(f"model type {model_type!r} is not supported yet{hint}; supported: "
                         f"{', '.join(sorted(ARCHS))}. Adding one is an entry in memedit_cli/lm/arch.py")
    return ARCHS[model_type]


def num_layers(config) -> int:
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")


def is_transposed(module) -> bool:
    """GPT-2's Conv1D stores its weight as (in, out); nn.Linear as (out, in). Decided by type, not shape."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def extra_output(module, x, delta):
    """What `delta` (in the module's own weight layout) adds to the module's output for input x, in delta's
    dtype: a delta trained or kept in float32 beside a bf16/fp16 model is applied, and its routing distances
    measured, in float32; whoever adds it to the output casts the sum (`nethook.add_to_output`)."""
    return x.to(delta.dtype) @ (delta if is_transposed(module) else delta.T)


def shape_key(config) -> tuple:
    """(model_type, hidden size, blocks): what per-model measured defaults are keyed by."""
    return (config.model_type, getattr(config, "hidden_size", None) or getattr(config, "n_embd", None),
            num_layers(config))


def stock_class(model, prefix: str) -> str:
    """`<prefix><Stock>`: the class an export's auto_map names, made by the shipped modeling file from the
    model's own transformers class (LlamaForCausalLM -> WISELlamaForCausalLM)."""
    import transformers

    name = type(model).__name__
    if getattr(transformers, name, None) is not type(model):
        raise ModelError(f"{name} is not a class of transformers itself (custom modeling code?), so an export "
                         "cannot build its wrapped class from it; forget these edits before exporting")
    return prefix + name
