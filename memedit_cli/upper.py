"""Run only the blocks above layer L, from hidden states computed once.

While a residual vector added at block L's output is optimized (MEMIT's z,
WISE's side memory above its layer), nothing below it changes. `Upper` runs
the model once up to block L, keeps block L's output and the arguments that
the model passes to block L+1 (attention mask, rotary embeddings, ...), and
then re-runs only blocks L+1..N-1, the final norm, and the LM head at the
positions the loss needs. Capturing the arguments instead of rebuilding them
keeps this free of architecture code beyond the module names in arch.py.
"""

from __future__ import annotations

from memedit_cli.arch import arch_for, num_layers
from memedit_cli.nethook import StopForward


class Upper:
    def __init__(self, model, layer: int, input_ids, attention_mask):
        import torch

        arch = arch_for(model.config)
        blocks = model.get_submodule(arch.layers)
        self.blocks = list(blocks)[layer + 1 : num_layers(model.config)]
        self.norm = model.get_submodule(arch.final_norm)
        self.head = model.get_submodule(arch.lm_head)
        seen: dict = {}

        def take_output(mod, args, output):
            seen["h"] = output[0] if isinstance(output, tuple) else output
            if not self.blocks:
                raise StopForward

        def take_args(mod, args, kwargs):
            seen["args"], seen["kwargs"] = args[1:], kwargs
            raise StopForward  # nothing above L is needed now

        handles = [blocks[layer].register_forward_hook(take_output)]
        if self.blocks:
            handles.append(self.blocks[0].register_forward_pre_hook(take_args, with_kwargs=True))
        try:
            with torch.no_grad():
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        self.h = seen["h"].detach()  # (B, T, d): block L's output
        self.args, self.kwargs = seen.get("args", ()), seen.get("kwargs", {})

    def final_hidden(self, h):
        """(B, T, d) block-L output -> (B, T, d) after the remaining blocks and the final norm."""
        for block in self.blocks:
            out = block(h, *self.args, **self.kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return self.norm(h)

    def logits(self, hidden_rows):
        """LM-head logits (n, V) for selected final hidden rows (n, d) only."""
        return self.head(hidden_rows)
