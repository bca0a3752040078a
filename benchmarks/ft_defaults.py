"""How `ft`'s defaults for SmolLM2-135M were chosen: a sweep over layer, L∞ bound and lr.

    python benchmarks/ft_defaults.py LAYER,NORM_CONSTRAINT,LR,STEPS [...]
    python benchmarks/ft_defaults.py 19,0.01,0.005,25 12,0.01,0.005,25

Each fact of CounterFact records 100-115 (../shared/data/counterfact-edit-1k.json)
is edited alone on the default model (T=1, the edit undone before the next) and
scored by `memedit eval`'s scorer (commands/evaluate.py; docs/metrics.md): Rel on
the prompt, Gen on the rephrase, Loc = agreement of the argmax tokens on the
locality prompt with the unedited model. One row per configuration: the means
over the 16 facts and the seconds per fact (edit and scoring).
"""

from __future__ import annotations

import sys
import time

import common

from memedit_cli.commands.evaluate import score
from memedit_cli.methods.ft import FT, FTHparams


def main(configs: list[str]) -> None:
    facts = common.load("counterfact", 116)[100:116]
    _, model, tok, env = common.default_model()
    ft = FT()
    for config in configs:
        layer, nc, lr, steps = config.split(",")
        hp = FTHparams(layer=int(layer), lr=float(lr), steps=int(steps), norm_constraint=float(nc))
        per, t0 = [], time.time()
        for f in facts:
            delta, _ = ft.compute(model, tok, [f], hp, 0, env)  # on the base model, which it leaves as it was
            with common.restored(model):  # the edit undone before the next fact
                per.append(score(model, tok, [f], lambda: ft.attach(model, delta, hp)).scores)
        n = len(facts)
        rel, gen, loc = (sum(s[k] for s in per) / n for k in ("rel", "gen", "loc"))
        print(f"| {hp.layer} | {hp.norm_constraint} | {hp.lr} | {hp.steps} | {rel:.2f} | {gen:.2f} | {loc:.2f} | "
              f"{(time.time() - t0) / n:.2f} |", flush=True)


if __name__ == "__main__":
    if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    main(sys.argv[1:])
