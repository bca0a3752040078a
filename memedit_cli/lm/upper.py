"""Run only the blocks above layer L, from hidden states computed once.

While a residual vector added at block L's output is optimized (MEMIT's z,
WISE's side memory above its layer), nothing below it changes. `Upper` runs
the model once up to block L, keeps block L's output and the arguments that
the model passes to block L+1 (attention mask, rotary embeddings, ...), and
then re-runs only blocks L+1..N-1, the final norm, and the LM head at the
positions the loss needs. Capturing the arguments instead of rebuilding them
keeps this free of architecture code beyond the module names in arch.py. They
are captured per block: Gemma 2/3 (and any model with `layer_types`) give
sliding-window and full-attention blocks different masks and rotary
embeddings. Gemma 2's final logit soft-capping is applied as its LM head does.

`start=c` goes one step further. When the edit only touches positions >= c,
the upper blocks' keys and values at positions < c never change either (the
model is causal): they are computed once into the model's own KV cache, and
each step runs the upper blocks on positions c.. only. In a MEMIT batch the
edit sits at the last subject token, so most of each row (context template,
the prompt before the subject) leaves the loop. Every row must have real
(not padding) tokens at positions < c when rows are right-padded; rows that
are left-padded (methods/memit/rows.left_cut: each row's edit at column c)
pass `position_ids` so every real token keeps its own position.
"""

from __future__ import annotations

from memedit_cli.lm.arch import arch_for, num_layers
from memedit_cli.lm.cache import cache_kwargs, cache_of
from memedit_cli.lm.nethook import StopForward, forward_then_remove


class Upper:
    def __init__(self, model, layer: int, input_ids, attention_mask, start: int = 0, position_ids=None):
        import torch

        arch = arch_for(model.config)
        blocks = model.get_submodule(arch.layers)
        self.blocks = list(blocks)[layer + 1 : num_layers(model.config)]
        self.norm = model.get_submodule(arch.final_norm)
        self.head = model.get_output_embeddings()  # lm_head (GPT-NeoX: embed_out)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.start, self.cache = 0, None
        # where results go back to: the inputs' device, as a model spread over GPUs (device_map) returns its
        # logits there; the blocks above L, the norm and the head may each sit on another GPU
        self.home = input_ids.device
        with torch.no_grad():
            if start > 0 and self.blocks:
                pos = None if position_ids is None else position_ids[:, :start]
                self.cache = _prefix_cache(model, input_ids[:, :start], attention_mask[:, :start], pos)
            if self.cache is not None:
                self.start = start
                pos = None if position_ids is None else position_ids[:, start:]
                self._capture(model, blocks[layer], input_ids[:, start:], attention_mask, pos, self.cache)
            else:
                self._capture(model, blocks[layer], input_ids, attention_mask, position_ids, None)

    def _capture(self, model, block_l, input_ids, attention_mask, position_ids, cache):
        seen: dict = {}

        def take_output(mod, args, output):
            seen["h"] = output[0] if isinstance(output, tuple) else output
            if not self.blocks:
                raise StopForward

        calls: list = []
        last = self.blocks[-1] if self.blocks else None

        def take_args(mod, args, kwargs):
            calls.append((args[1:], kwargs))  # each block's own mask, rotary embeddings, cache...
            if mod is last:
                raise StopForward  # the last block's arguments are in: it, the final norm and LM head need not run

        handles = [block_l.register_forward_hook(take_output)]
        handles += [block.register_forward_pre_hook(take_args, with_kwargs=True) for block in self.blocks]
        extra = {**cache_kwargs(model, cache), "use_cache": True} if cache is not None else {"use_cache": False}
        if position_ids is not None:
            extra["position_ids"] = position_ids
        forward_then_remove(model, handles, input_ids=input_ids, attention_mask=attention_mask, **extra)
        if len(calls) != len(self.blocks):  # a block the model's forward did not call would be skipped silently
            raise RuntimeError(f"Upper: {len(calls)} of the {len(self.blocks)} blocks above the edited one were called")
        self.h = seen["h"].detach()  # (B, T - start, d): block L's output at positions start..
        self.calls = calls  # (args, kwargs) per block above L
        if cache is not None:
            _crop(cache, self.start)  # every block appended positions start..; keep the prefix only

    def final_hidden(self, h):
        """(B, T', d) block-L output at positions start.. (on block L's device) -> (B, T', d) after the
        remaining blocks and the final norm, on the inputs' device."""
        try:
            for block, (args, kwargs) in zip(self.blocks, self.calls):
                out = block(h, *args, **kwargs)
                h = out[0] if isinstance(out, tuple) else out
        finally:
            if self.cache is not None:
                _crop(self.cache, self.start)  # each block appended this step's keys and values
        return self.norm(h).to(self.home)

    def logits(self, hidden_rows):
        """LM-head logits (n, V) for selected final hidden rows (n, d) only, on the rows' device."""
        logits = self.head(hidden_rows.to(self.head.weight.device)).to(hidden_rows.device)
        if self.softcap:  # Gemma 2: logits = cap · tanh(logits / cap), as its ForCausalLM computes them
            import torch

            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def _prefix_cache(model, input_ids, attention_mask, position_ids=None):
    """The model's KV cache after positions 0..start-1, or None where the model gives none we can crop.

    Only plain per-layer caches (transformers' DynamicLayer) qualify: a
    sliding-window or quantized layer may drop or alter past states."""
    extra = {} if position_ids is None else {"position_ids": position_ids}
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **extra)  # no LM head
    layers = getattr(cache_of(out), "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    return cache_of(out)


def _crop(cache, length: int):
    """Cut every layer of the cache back to its first `length` positions. Layers hold
    different lengths here, so DynamicCache.crop (one count for all) does not fit;
    a negative count to DynamicLayer.crop means "remove that many"."""
    for layer in cache.layers:
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)
            # the cut keeps a view of this step's concatenation: detach it, or the
            # next step's backward would run into this step's freed graph
            layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
