"""How `ft`'s defaults for SmolLM2-135M were chosen: a sweep over layer, L∞ bound and lr.

    python benchmarks/ft_defaults.py LAYER,NORM_CONSTRAINT,LR,STEPS [...]
    python benchmarks/ft_defaults.py 19,0.01,0.005,25 12,0.01,0.005,25

Each fact of CounterFact records 100-115 (../shared/data/counterfact-edit-1k.json)
is edited alone on the default model (T=1, the edit undone before the next) and
scored teacher-forced as EasyEdit does: Rel on the prompt, Gen on the rephrase,
Loc = agreement of the argmax tokens on the locality prompt with the unedited model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from memedit_cli.lm import models
from memedit_cli.facts import load_facts
from memedit_cli.methods.ft import FT, FTHparams
from memedit_cli.lm.tokens import prompt_target_batch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact-edit-1k.json"


def main(configs: list[str]) -> None:
    if not DATA.exists():
        sys.exit(f"skipped: {DATA} is not present (this sweep needs ../shared/data)")
    model, tok = models.load({"model": {"kind": "default"}, "dtype": "float32", "device": "cpu"})
    facts = load_facts(DATA)[100:116]

    def argmax(prompt, target):
        ids, attn, labels = prompt_target_batch(tok, [prompt], [target], "cpu")
        with torch.no_grad():
            pred = model(input_ids=ids, attention_mask=attn).logits.argmax(-1)
        return pred, labels != -100, labels

    def acc(prompt, target):
        pred, mask, labels = argmax(prompt, target)
        return ((pred == labels) & mask).sum().item() / mask.sum().item()

    base = [argmax(f.locality_prompt, f.locality_ground_truth)[0] for f in facts]
    ft = FT()
    for config in configs:
        layer, nc, lr, steps = config.split(",")
        hp = FTHparams(layer=int(layer), lr=float(lr), steps=int(steps), norm_constraint=float(nc))
        name = f"model.layers.{hp.layer}.mlp.down_proj.weight"
        original = model.get_parameter(name).detach().clone()
        rel, gen, loc, t0 = [], [], [], time.time()
        for i, f in enumerate(facts):
            delta, _ = ft.compute(model, tok, [f], hp, 0)
            ft.attach(model, delta, hp)
            rel.append(acc(f.prompt, f.target_new))
            gen.append(acc(f.rephrase_prompt, f.target_new))
            pred, mask, _ = argmax(f.locality_prompt, f.locality_ground_truth)
            loc.append(((pred == base[i]) & mask).sum().item() / mask.sum().item())
            with torch.no_grad():
                model.get_parameter(name).copy_(original)
        n = len(facts)
        print(f"| {hp.layer} | {hp.norm_constraint} | {hp.lr} | {hp.steps} | {sum(rel) / n:.2f} | {sum(gen) / n:.2f} | "
              f"{sum(loc) / n:.2f} | {(time.time() - t0) / n:.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
