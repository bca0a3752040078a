"""Run the blocks up to layer `top` again, from a block whose input was kept.

MEMIT's update goes in layer by layer: ΔW at block l₁, then the keys at
block l₂ > l₁ read on the model with l₁ updated, and so on up the band. Each
read used to be a forward from the embeddings; but nothing below block l₁
changed, so block l₁'s input is what the previous forward computed there.
`Lower` runs the model once up to block `top`, keeps the input of each block
in `keep` and the arguments the model passes to every block (attention mask,
rotary embeddings, ...), and `rerun(start, stop)` then runs blocks
start..stop only, from block start's kept input, keeping the inputs it passes
on the way. Capturing the arguments instead of rebuilding them keeps this
free of architecture code beyond the module names in arch.py, as in
upper.Upper. Hooks the caller registers on modules inside the blocks
(nethook.capture) see the re-runs as they see a forward.
"""

from __future__ import annotations

from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.nethook import StopForward, forward_then_remove


class Lower:
    def __init__(self, model, input_ids, attention_mask, top: int, keep=(), position_ids=None):
        blocks = list(model.get_submodule(arch_for(model.config).layers))
        self.blocks = blocks[: top + 1]
        self.keep = set(keep)
        self.inputs: dict = {}  # block index -> (B, T, d) its input in the latest run
        self.calls: list = []  # per block 0..top: (args after the hidden states, kwargs)

        def take(i):
            def hook(mod, args, kwargs):
                self.calls.append((args[1:], kwargs))
                if i in self.keep:
                    self.inputs[i] = args[0].detach()
            return hook

        def stop(mod, args, output):
            raise StopForward

        handles = [b.register_forward_pre_hook(take(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        handles.append(self.blocks[-1].register_forward_hook(stop))
        extra = {"use_cache": False} if position_ids is None else {"use_cache": False, "position_ids": position_ids}
        forward_then_remove(model, handles, input_ids=input_ids, attention_mask=attention_mask, **extra)
        if len(self.calls) != len(self.blocks):  # a block the model's forward skipped would be skipped silently here
            raise RuntimeError(f"Lower: {len(self.calls)} of blocks 0..{top} were called")

    def rerun(self, start: int, stop: int):
        """Blocks start..stop from block start's kept input; returns block stop's output (B, T, d)."""
        if start not in self.inputs:
            raise ValueError(f"Lower: block {start}'s input was not kept (keep={sorted(self.keep)})")
        h = self.inputs[start]
        for i in range(start, stop + 1):
            if i in self.keep:
                self.inputs[i] = h
            args, kwargs = self.calls[i]
            out = self.blocks[i](h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return h
