"""FT-L: constrained fine-tuning of one FFN output projection.

The baseline of the ROME and MEMIT papers (EasyEdit's `FT` with
`objective_optimization="target_new"`): only the weight W of one block's FFN
output projection is trained, on the NLL of the target tokens, with every
entry kept within ±norm_constraint of its original value (an L∞ ball), and
training stops early once the loss is low. The result is stored as the delta
ΔW = W' − W in W's own layout; attaching it is W += ΔW.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from memedit_cli.errors import HparamsError
from memedit_cli.lm.arch import arch_for, extra_output, num_layers
from memedit_cli.lm.models import input_device
from memedit_cli.lm.nethook import add_to_output
from memedit_cli.lm.progress import bar
from memedit_cli.lm.tokens import prompt_target_batch, target_nll
from memedit_cli.methods.base import Footprint, WeightMethod, add_weight_deltas, weight_module


@dataclass(frozen=True)
class FTHparams:
    layer: int | None = None  # block whose FFN output projection is trained; None: the architecture default
    lr: float = 5e-4  # Adam learning rate (EasyEdit FT)
    steps: int = 25  # at most this many Adam steps per batch (EasyEdit FT)
    norm_constraint: float = 5e-4  # L∞ bound: |W' − W| ≤ this, entry by entry (EasyEdit FT)
    early_stop_loss: float = 1e-2  # stop once the mean target NLL is below this
    weight_decay: float = 0.0  # Adam weight decay, applied to ΔW

    def check(self) -> str | None:
        if self.layer is not None and self.layer < 0:
            return f"layer must be >= 0, got {self.layer}"
        if self.lr <= 0:
            return f"lr must be > 0, got {self.lr}"
        if self.steps < 1:
            return f"steps must be >= 1, got {self.steps}"
        if self.norm_constraint <= 0:
            return f"norm_constraint must be > 0, got {self.norm_constraint}"
        if self.early_stop_loss < 0 or self.weight_decay < 0:
            return "early_stop_loss and weight_decay must be >= 0"
        return None


# Per family: where FT-L edits, as a fraction of depth, with EasyEdit's FT
# values. EasyEdit trains layer 21 of LLaMA-2-7B (32 blocks) and of GPT-J (28).
_FAMILY = {
    "llama": dict(depth=0.66),
    "gptj": dict(depth=0.75),
    "gpt2": dict(depth=0.66),
}
# Measured for particular shapes (model_type, hidden size, blocks). SmolLM2-135M's
# down_proj entries are ~10x larger than LLaMA-2-7B's (RMS 0.19), and the 5e-4
# bound reached Rel .06 on it; docs/methods/ft.md has the sweep that chose these.
MEASURED = {
    ("llama", 576, 30): dict(layer=12, lr=5e-3, norm_constraint=1e-2),
}


class FT(WeightMethod):
    name = "ft"
    hparams_class = FTHparams
    needs_subject = False
    measured = MEASURED

    def default_hparams(self, model) -> FTHparams:
        cfg = model.config
        n = num_layers(cfg)
        family = FTHparams(layer=min(n - 1, round(_FAMILY[arch_for(cfg).family]["depth"] * (n - 1))))
        return dataclasses.replace(family, **self.measured_defaults(model))

    def compute(self, model, tok, facts, hp: FTHparams, seed: int, env=None, reuse=None):
        import torch

        arch = arch_for(model.config)
        n = num_layers(model.config)
        if hp.layer is None or hp.layer >= n:
            raise HparamsError(f"layer must be between 0 and {n - 1} for this model, got {hp.layer}")
        name = arch.mlp_out_at(hp.layer)
        module = weight_module(model, name)  # under a wrapper (WISE's key router), the layer it wraps
        weight = module.weight
        torch.manual_seed(seed)
        # ΔW lives in float32 whatever the model's dtype; shape = W's own layout
        delta = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hp.lr, weight_decay=hp.weight_decay)
        ids, attn, labels = prompt_target_batch(tok, [f.prompt for f in facts], [f.target_new for f in facts],
                                                input_device(model))
        losses = []
        with add_to_output(module, lambda x: extra_output(module, x.float(), delta)):
            for _ in bar(range(hp.steps), desc=f"ft: {len(facts)} fact(s)", unit="step"):
                logits = model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
                loss = target_nll(logits, labels.to(logits.device))
                losses.append(loss.item())
                if loss.item() < hp.early_stop_loss:
                    break
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    delta.clamp_(-hp.norm_constraint, hp.norm_constraint)
        info = {"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1]}
        return {f"{name}.weight": delta.detach()}, info

    def attach(self, model, tensors, hp, tok=None) -> None:
        add_weight_deltas(model, tensors)

    def footprint(self, hp: FTHparams, model) -> Footprint:
        return Footprint(writes=(hp.layer,), blocks_hparam="layer")
