"""`memedit eval`: score the current state on a facts file (docs/metrics.md has the formulas).

Every score reads as generation reads: the prompt first (one call, with a
cache), then the continuation one token per call. For a model whose edits
are weights (ft, MEMIT) this equals EasyEdit's single teacher-forced pass
over prompt + target; for wrapper methods it is what they answer: Larimar's
scope detector sees the prompt, not the target, and WISE's key router keeps
the route its prompt chose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memedit_cli.errors import UserError
from memedit_cli.progress import bar

METRICS = ("rel", "rel_em", "gen", "gen_em", "loc")


def token_scores(preds: list[torch.Tensor], targets: list[torch.Tensor]) -> list[float]:
    """Per example: the fraction of target tokens whose prediction equals the target token."""
    return [int((p == t).sum()) / len(t) for p, t in zip(preds, targets)]


def agreement(preds: list[torch.Tensor], base: list[torch.Tensor]) -> list[float]:
    """Per example: the fraction of positions where the edited model predicts what the base model did."""
    return [int((p == b).sum()) / len(b) for p, b in zip(preds, base)]


def continuation_tokens(tok, texts: list[str]) -> list[torch.Tensor]:
    """` text` tokenized as it follows a prompt (the leading space, no special tokens)."""
    return [torch.tensor(tok(" " + t, add_special_tokens=False)["input_ids"], dtype=torch.long) for t in texts]


def predict(model, tok, prompts: list[str], conts: list[torch.Tensor], batch: int = 16, desc: str | None = None):
    """Argmax predictions (L_i,) for each continuation token, teacher-forced, reading as generation reads."""
    from memedit_cli.methods.wise import router
    from memedit_cli.models import input_device

    device = input_device(model)
    out: list[torch.Tensor] = []
    side = tok.padding_side
    tok.padding_side = "left"  # every row's last prompt token in the last column
    try:
        for i in bar(range(0, len(prompts), batch), desc=desc, unit="batch"):
            out += _predict_batch(model, tok, prompts[i:i + batch], conts[i:i + batch], device, router)
    finally:
        tok.padding_side = side
    return out


def _predict_batch(model, tok, prompts, conts, device, router):
    router.reset(model)  # new sequences: WISE key routers drop the previous batch's routes
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    L = max(len(c) for c in conts)
    # (B, L) the continuation tokens, padded with the pad id where a row's continuation is shorter
    feed = torch.full((len(conts), L), tok.pad_token_id or 0, dtype=torch.long)
    for r, c in enumerate(conts):
        feed[r, :len(c)] = c
    feed = feed.to(device)
    preds = []
    with torch.no_grad():
        step = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=True)
        for t in range(L):
            preds.append(step.logits[:, -1].argmax(-1))
            if t == L - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
            step = model(input_ids=feed[:, t:t + 1], attention_mask=mask, position_ids=pos,
                         past_key_values=step.past_key_values, use_cache=True)
    P = torch.stack(preds, 1).cpu()  # (B, L)
    return [P[r, :len(c)] for r, c in enumerate(conts)]


@dataclass
class Report:
    revision: str
    per_fact: list[dict]
    scores: dict  # metric -> mean, or None when no fact has the fields it needs
    counts: dict  # rel/gen/loc -> facts scored

    def to_json(self) -> dict:
        return {"revision": self.revision, "facts": len(self.per_fact), "scores": self.scores,
                "counts": self.counts, "per_fact": self.per_fact}


def evaluate(repo, facts, limit: int | None = None) -> Report:
    """Rel/Gen/Loc (and exact match) of the state at HEAD on `facts`."""
    from memedit_cli import models
    from memedit_cli.state import attach_segment

    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        facts = facts[:limit]
    head = repo.head()
    segments = repo.segments_at(head)
    model, tok = models.load(repo.config)
    gen_facts = [f for f in facts if f.rephrase_prompt]
    loc_facts = [f for f in facts if f.locality_prompt and f.locality_ground_truth]
    loc_targets = continuation_tokens(tok, [f.locality_ground_truth for f in loc_facts])
    # locality compares with the unedited model's own predictions: computed first, on the base weights,
    # then the segments are attached to the same model (no second copy in memory)
    base_loc = predict(model, tok, [f.locality_prompt for f in loc_facts], loc_targets, desc="eval: base locality")
    for seg in segments:
        attach_segment(repo, model, seg, tok)
    targets = continuation_tokens(tok, [f.target_new for f in facts])
    rel = token_scores(predict(model, tok, [f.prompt for f in facts], targets, desc="eval: reliability"), targets)
    gen_t = [targets[i] for i, f in enumerate(facts) if f.rephrase_prompt]
    gen = token_scores(predict(model, tok, [f.rephrase_prompt for f in gen_facts], gen_t,
                               desc="eval: generalization"), gen_t)
    loc = agreement(predict(model, tok, [f.locality_prompt for f in loc_facts], loc_targets,
                            desc="eval: locality"), base_loc)
    per = {f.id: {"id": f.id, "rel": r, "rel_em": r == 1.0} for f, r in zip(facts, rel)}
    for f, g in zip(gen_facts, gen):
        per[f.id].update(gen=g, gen_em=g == 1.0)
    for f, v in zip(loc_facts, loc):
        per[f.id]["loc"] = v

    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    scores = {"rel": mean(rel), "rel_em": mean([float(r == 1.0) for r in rel]), "gen": mean(gen),
              "gen_em": mean([float(g == 1.0) for g in gen]), "loc": mean(loc)}
    return Report(head or "base", list(per.values()), scores, {"rel": len(rel), "gen": len(gen), "loc": len(loc)})


def parse_gate(spec: str | None) -> dict:
    """`rel=0.9,gen=0.7,loc=0.95` -> {metric: threshold}."""
    if not spec:
        return {}
    gate = {}
    for item in spec.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in METRICS:
            raise UserError(f"--fail-under {item!r}: expected METRIC=VALUE with METRIC one of {', '.join(METRICS)}, "
                            "e.g. --fail-under rel=0.9,loc=0.95")
        try:
            threshold = float(value)
        except ValueError:
            raise UserError(f"--fail-under {item!r}: {value!r} is not a number") from None
        if not 0 <= threshold <= 1:
            raise UserError(f"--fail-under {item!r}: scores lie between 0 and 1")
        gate[key] = threshold
    return gate


def missed(report: Report, gate: dict) -> list[str]:
    """One line per gate the report misses (a metric no fact could be scored on misses)."""
    lines = []
    for key, threshold in gate.items():
        score = report.scores[key]
        if score is None:
            need = "rephrase_prompt" if key.startswith("gen") else "locality_prompt and locality_ground_truth"
            lines.append(f"{key}: no fact in the file has {need}, so it cannot reach {threshold}")
        elif score < threshold:
            lines.append(f"{key} {score:.4f} < {threshold}")
    return lines
