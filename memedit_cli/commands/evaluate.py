"""`memedit eval`: score the current state on a facts file (docs/metrics.md has the formulas).

Every score reads as generation reads (lm/score.py); this file turns the
per-token predictions into Rel/Gen/Loc, exact match and the `--fail-under`
gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from memedit_cli import methods
from memedit_cli.errors import UserError
from memedit_cli.lm.score import agreement, continuation_tokens, predict, token_scores

METRICS = ("rel", "rel_em", "gen", "gen_em", "loc")


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
    from memedit_cli.lm import models
    from memedit_cli.replay import attach_segment

    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        facts = facts[:limit]
    head = repo.head()
    segments = repo.segments_at(head)
    model, tok = models.load(repo.config)

    def edit():  # the segments attached to the same model (no second copy in memory)
        for seg in segments:
            attach_segment(repo, model, seg, tok)

    return score(model, tok, facts, edit, lambda: methods.reset(model, segments), head or "base")


def score(model, tok, facts, edit, reset=None, revision: str = "") -> Report:
    """Score the state that `edit()` makes of the base `model` in hand, on `facts`.

    Locality compares with the unedited model's own predictions, so they are
    taken first, on the base weights; then `edit()` turns the model into the
    state (attaching segments), and `reset()` starts each batch of scoring as
    new sequences. `evaluate` is this on a repository's HEAD; benchmarks that
    build states in memory score through here too.
    """
    gen_facts = [f for f in facts if f.rephrase_prompt]
    loc_facts = [f for f in facts if f.locality_prompt and f.locality_ground_truth]
    loc_targets = continuation_tokens(tok, [f.locality_ground_truth for f in loc_facts])
    base_loc = predict(model, tok, [f.locality_prompt for f in loc_facts], loc_targets, desc="eval: base locality")
    edit()
    targets = continuation_tokens(tok, [f.target_new for f in facts])
    rel = token_scores(predict(model, tok, [f.prompt for f in facts], targets, desc="eval: reliability",
                               reset=reset), targets)
    gen_t = [targets[i] for i, f in enumerate(facts) if f.rephrase_prompt]
    gen = token_scores(predict(model, tok, [f.rephrase_prompt for f in gen_facts], gen_t,
                               desc="eval: generalization", reset=reset), gen_t)
    loc = agreement(predict(model, tok, [f.locality_prompt for f in loc_facts], loc_targets,
                            desc="eval: locality", reset=reset), base_loc)
    per = {f.id: {"id": f.id, "rel": r, "rel_em": r == 1.0} for f, r in zip(facts, rel)}
    for f, g in zip(gen_facts, gen):
        per[f.id].update(gen=g, gen_em=g == 1.0)
    for f, v in zip(loc_facts, loc):
        per[f.id]["loc"] = v

    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    scores = {"rel": mean(rel), "rel_em": mean([float(r == 1.0) for r in rel]), "gen": mean(gen),
              "gen_em": mean([float(g == 1.0) for g in gen]), "loc": mean(loc)}
    return Report(revision, list(per.values()), scores, {"rel": len(rel), "gen": len(gen), "loc": len(loc)})


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
