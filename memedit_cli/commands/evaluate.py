"""`memedit eval`: score the current state on a facts file (docs/metrics.md has the formulas).

Every score reads as generation reads (lm/score.py); this file turns the
per-token predictions and greedy answers into the scores (Rel/Gen/Loc, exact
match, same-subject specificity, portability, and the generation-based
rel_gen/gen_gen/loc_gen) and the `--fail-under` gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from memedit_cli import methods
from memedit_cli.errors import UserError
from memedit_cli.lm.score import agreement, contains, continuation_tokens, greedy_tokens, predict, token_scores

METRICS = ("rel", "rel_em", "gen", "gen_em", "loc", "spec", "port", "rel_gen", "gen_gen", "loc_gen")
# What a fact needs for each metric to be scored (the gate's message when none has it).
NEEDS = {"rel": "a prompt", "gen": "rephrase_prompt", "loc": "locality_prompt and locality_ground_truth",
         "spec": "subject_locality", "port": "portability", "rel_gen": "a prompt", "gen_gen": "rephrase_prompt",
         "loc_gen": "locality_prompt and locality_ground_truth"}
EXTRA_TOKENS = 8  # generation: up to this many tokens beyond the reference answer's own length


@dataclass
class Report:
    revision: str
    per_fact: list[dict]
    scores: dict  # metric -> mean over the facts scored, or None when no fact has the probes it needs
    counts: dict  # metric -> facts scored (exact-match metrics count with their own metric)
    probes: dict  # metric -> prompts scored (a fact may carry several rephrases, locality prompts, ...)

    def to_json(self) -> dict:
        return {"revision": self.revision, "facts": len(self.per_fact), "scores": self.scores,
                "counts": self.counts, "probes": self.probes, "per_fact": self.per_fact}


HEAD = object()  # `evaluate`'s default revision: whatever HEAD is


def evaluate(repo, facts, limit: int | None = None, rev=HEAD) -> Report:
    """Every score of the state at `rev` (a record id, None for the base model; default HEAD) on `facts`."""
    from memedit_cli import states
    from memedit_cli.lm import models

    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        facts = facts[:limit]
    head = repo.head() if rev is HEAD else rev
    segments = repo.segments_at(head)
    model, tok = models.load(repo.config)

    def edit():  # the segments attached to the same model (no second copy in memory)
        states.attach(repo, model, tok, head, segments)

    return score(model, tok, facts, edit, lambda: methods.reset(model, segments), head or "base")


def score(model, tok, facts, edit, reset=None, revision: str = "") -> Report:
    """Score the state that `edit()` makes of the base `model` in hand, on `facts`.

    The unedited model's answers come first, on the base weights: locality and
    same-subject probes compare with them. Then `edit()` turns the model into
    the state (attaching segments), and `reset()` starts each batch of scoring
    as new sequences. `evaluate` is this on a repository's HEAD; benchmarks that
    build states in memory score through here too. docs/metrics.md has the rules.
    """
    # (fact index, prompt, answer) per kind of probe
    rel = [(i, f.prompt, f.target_new) for i, f in enumerate(facts)]
    gen = [(i, q, f.target_new) for i, f in enumerate(facts) for q in f.rephrase_prompts]
    loc, spec, port = ([(i, p.prompt, p.answer) for i, f in enumerate(facts) for p in getattr(f, key)]
                       for key in ("locality", "subject_locality", "portability"))
    # each kind's answer tokens (` answer` as it follows the prompt), tokenized once
    ids = {k: continuation_tokens(tok, [a for _, _, a in v])
           for k, v in (("rel", rel), ("gen", gen), ("loc", loc), ("spec", spec), ("port", port))}
    base_loc = _teacher_forced(model, tok, loc, ids["loc"], "base locality", None)
    base_spec = _teacher_forced(model, tok, spec, ids["spec"], "base same-subject", None)
    base_loc_ans = _generated(model, tok, loc, ids["loc"], "base locality, generated", None)
    edit()
    per_probe = {
        "rel": token_scores(_teacher_forced(model, tok, rel, ids["rel"], "reliability", reset), ids["rel"]),
        "gen": token_scores(_teacher_forced(model, tok, gen, ids["gen"], "generalization", reset), ids["gen"]),
        "loc": agreement(_teacher_forced(model, tok, loc, ids["loc"], "locality", reset), base_loc),
        "spec": agreement(_teacher_forced(model, tok, spec, ids["spec"], "same-subject", reset), base_spec),
        "port": token_scores(_teacher_forced(model, tok, port, ids["port"], "portability", reset), ids["port"]),
    }
    per_probe["rel_em"] = [float(x == 1.0) for x in per_probe["rel"]]
    per_probe["gen_em"] = [float(x == 1.0) for x in per_probe["gen"]]
    rel_ans = [tok.decode(a) for a in _generated(model, tok, rel, ids["rel"], "reliability, generated", reset)]
    gen_ans = [tok.decode(a) for a in _generated(model, tok, gen, ids["gen"], "generalization, generated", reset)]
    per_probe["rel_gen"] = [float(contains(a, t)) for a, (_, _, t) in zip(rel_ans, rel)]
    per_probe["gen_gen"] = [float(contains(a, t)) for a, (_, _, t) in zip(gen_ans, gen)]
    loc_ans = _generated(model, tok, loc, ids["loc"], "locality, generated", reset)
    per_probe["loc_gen"] = [float(a == b) for a, b in zip(loc_ans, base_loc_ans)]
    probes_of = {"rel": rel, "rel_em": rel, "rel_gen": rel, "gen": gen, "gen_em": gen, "gen_gen": gen,
                 "loc": loc, "loc_gen": loc, "spec": spec, "port": port}

    per = [{"id": f.id} for f in facts]
    scores, counts, probes = {}, {}, {}
    for key in METRICS:
        by_fact: dict[int, list[float]] = {}
        for (i, _, _), v in zip(probes_of[key], per_probe[key]):
            by_fact.setdefault(i, []).append(v)
        for i, vs in by_fact.items():  # a fact's score: the mean over its probes of this kind
            per[i][key] = sum(vs) / len(vs)
        means = [per[i][key] for i in by_fact]
        scores[key] = round(sum(means) / len(means), 4) if means else None
        counts[key], probes[key] = len(by_fact), len(probes_of[key])
    for row, answer in zip(per, rel_ans):
        row["answer"] = answer  # the greedy answer to the edit prompt, as rel_gen read it
    return Report(revision, per, scores, counts, probes)


def _teacher_forced(model, tok, probes, answers, what: str, reset):
    """Argmax predictions for each probe's answer tokens `answers`, teacher-forced (lm/score.py)."""
    if not probes:
        return []
    return predict(model, tok, [q for _, q, _ in probes], answers, desc=f"eval: {what}", reset=reset)


def _generated(model, tok, probes, answers, what: str, reset):
    """Greedy answers (token ids) of up to each reference answer's length + EXTRA_TOKENS."""
    if not probes:
        return []
    lengths = [len(t) + EXTRA_TOKENS for t in answers]
    return greedy_tokens(model, tok, [q for _, q, _ in probes], lengths, desc=f"eval: {what}", reset=reset)


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
            need = NEEDS[key.removesuffix("_em")]
            lines.append(f"{key}: no fact in the file has {need}, so it cannot reach {threshold}")
        elif score < threshold:
            lines.append(f"{key} {score:.4f} < {threshold}")
    return lines
