"""What `memedit export --merged` needs beyond the weights for WISE.

Side memories cannot be folded into W (routing picks W or W + M_i per input),
so the export keeps them: `save_pretrained` already writes each wrapped
projection's `<name>.base.weight` and `<name>.memory_i` (registered buffers).
Here we describe the wrappers in `config.memedit_wise` and ship
modeling_memedit_wise.py, whose classes rebuild them on load
(`AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from memedit_cli.lm.arch import stock_class

MODELING_FILE = Path(__file__).with_name("modeling_memedit_wise.py")



def describe(model) -> dict:
    """`config.memedit_wise`: every WISELayer of `model` by module name (what attach_side_memories rebuilds)."""
    from memedit_cli.methods.wise.modeling_memedit_wise import WISELayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, WISELayer)}
    # JSON-able: module name -> thresholds, variant, memory count and shape (the base weight's layout:
    # (d_out, d_in) for nn.Linear, (d_in, d_out) for GPT-2's Conv1D)
    names = {m: n for n, m in model.named_modules()}
    return {
        name: {"eps": [float(e) for e in layer.eps], "variant": layer.variant, "reduce": layer.reduce,
               "memories": len(layer.eps), "act": layer.act,  # route_distance=activated: σ's name
               "shape": list(layer.base.weight.shape),
               "nnz": list(layer.nnz),  # -1: memory_i dense; n: memory_i_index/_values
               # router=keys: the KeyRouter's module and its keys per memory (its buffers hold them)
               **({"router": {"module": names[r], "keys": list(r.counts),
                              # key_relation: the relation gate's word rows (rel_keys), None without one
                              "relation": len(r.rel_keys) if r.relation else None}}
                  if (r := layer._router[0]) is not None else {})}
        for name, layer in layers.items()
    }


def export_extras(model, out_dir) -> dict | None:
    """Describe every WISELayer in `model.config.memedit_wise`, copy the modeling file into `out_dir`.

    Returns None when the model has no side memory (nothing to add).
    """
    described = describe(model)
    if not described:
        return None
    from memedit_cli.methods.wise.modeling_memedit_wise import PREFIX

    # the modeling file makes WISE<Stock> from the model's own transformers class when it is loaded;
    # named before anything is written, so a model it cannot wrap leaves the folder and config as they were
    cls = stock_class(model, PREFIX)
    model.config.memedit_wise = described
    shutil.copyfile(MODELING_FILE, Path(out_dir) / MODELING_FILE.name)
    return {"auto_map": {"AutoModelForCausalLM": f"{MODELING_FILE.stem}.{cls}"}, "modeling_file": MODELING_FILE.name}
