"""`memedit blame PROMPT`: which applied facts are behind the current answer.

- Where the method knows, it is asked (`Method.explain`), which costs one
  forward of the prompt: Larimar names the episode its decoder read, and WISE
  the side memory its routing chose (that memory's facts).
- Edits that are weights (ft, MEMIT: `explain` says None) are found by ablation: the state is
  rebuilt without one segment (the base weights plus every other segment,
  never a subtraction), and the segment is responsible when the answer
  changes. Segments naming a subject that occurs in the prompt are tried
  first, then the most recent; at most `limit` are rebuilt. The other
  segments stay as stored: later ft/MEMIT batches, computed with this one in
  place, are not recomputed (as `forget` would), so "the answer without it"
  is this update left out, not the state that never had the fact.
"""

from __future__ import annotations

import copy

from memedit_cli import methods


def blame(repo, prompt: str, limit: int = 10, max_new_tokens: int = 8) -> dict:
    import torch

    from memedit_cli.lm import models
    from memedit_cli.lm.generate import greedy
    from memedit_cli.replay import attach_all

    head = repo.head()
    segments = repo.segments_at(head)
    facts = repo.facts_at(head)
    model, tok = models.load(repo.config)
    attach_all(repo, model, segments, tok)

    def reset():
        methods.reset(model, segments)

    answer = greedy(model, tok, prompt, max_new_tokens, reset)
    found, weight_methods = [], set()
    with torch.no_grad():  # one forward of the prompt alone: the wrappers record what they chose
        reset()
        model(**tok(prompt, return_tensors="pt").to(models.input_device(model)))
    for method in methods.of(segments):
        said = method.explain(model, segments, prompt)
        if said is None:
            weight_methods.add(method.name)
        else:
            found += said
    weights = [i for i, s in enumerate(segments) if s["method"] in weight_methods]
    # a second copy of the base in memory only when there are ablations to rebuild from it
    base = models.load(repo.config)[0] if weights and limit > 0 else None
    subject_in_prompt = [i for i in weights if any(facts[f]["subject"] in prompt for f in segments[i]["facts"])]
    order = subject_in_prompt + [i for i in reversed(weights) if i not in subject_in_prompt]
    tried = 0
    for i in order[:limit]:
        without = copy.deepcopy(base)
        kept = [seg for j, seg in enumerate(segments) if j != i]
        attach_all(repo, without, kept, tok)
        other = greedy(without, tok, prompt, max_new_tokens, lambda: methods.reset(without, kept))
        tried += 1
        if other != answer:
            found.append({"facts": segments[i]["facts"], "method": segments[i]["method"], "how": "ablation",
                          "answer_without": other})
    return {"revision": head or "base", "prompt": prompt, "answer": answer, "responsible": found,
            "ablations": tried, "weight_segments": len(weights)}
