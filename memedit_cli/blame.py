"""`memedit blame PROMPT`: which applied facts are behind the current answer.

- Where the method knows, it is asked, which costs one forward of the prompt:
  Larimar names the episode its decoder read, and WISE the side memory its
  routing chose (that memory's facts).
- Edits that are weights (ft, MEMIT) are found by ablation: the state is
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

WRAPPERS = ("larimar", "wise")  # methods that say themselves which facts a prompt used


def blame(repo, prompt: str, limit: int = 10, max_new_tokens: int = 8) -> dict:
    import torch

    from memedit_cli import models
    from memedit_cli.generate import greedy
    from memedit_cli.state import attach_segment

    head = repo.head()
    segments = repo.segments_at(head)
    facts = repo.facts_at(head)
    weights = [i for i, s in enumerate(segments) if s["method"] not in WRAPPERS]
    model, tok = models.load(repo.config)
    # a pristine copy of the base only when there will be ablations to rebuild from it
    base = copy.deepcopy(model) if weights and limit > 0 else None
    for seg in segments:
        attach_segment(repo, model, seg, tok)
    answer = greedy(model, tok, prompt, max_new_tokens)
    found = []
    with torch.no_grad():  # one forward of the prompt alone: the wrappers record what they chose
        from memedit_cli.methods.wise import router

        router.reset(model)
        model(**tok(prompt, return_tensors="pt").to(models.input_device(model)))
    found += _larimar(model, segments)
    found += _wise(model, segments)
    subject_in_prompt = [i for i in weights if any(facts[f]["subject"] in prompt for f in segments[i]["facts"])]
    order = subject_in_prompt + [i for i in reversed(weights) if i not in subject_in_prompt]
    tried = 0
    for i in order[:limit]:
        without = copy.deepcopy(base)
        for j, seg in enumerate(segments):
            if j != i:
                attach_segment(repo, without, seg, tok)
        other = greedy(without, tok, prompt, max_new_tokens)
        tried += 1
        if other != answer:
            found.append({"facts": segments[i]["facts"], "method": segments[i]["method"], "how": "ablation",
                          "answer_without": other})
    return {"revision": head or "base", "prompt": prompt, "answer": answer, "responsible": found,
            "ablations": tried, "weight_segments": len(weights)}


def _larimar(model, segments) -> list[dict]:
    decoder = getattr(model, model.base_model_prefix)
    chosen = getattr(decoder, "last_episodes", None)
    if chosen is None or int(chosen[0]) < 0:
        return []
    ids = [f for s in segments if s["method"] == "larimar" for f in s["facts"]]  # episode order = attach order
    return [{"facts": [ids[int(chosen[0])]], "method": "larimar", "how": "episode read"}]


def _wise(model, segments) -> list[dict]:
    from memedit_cli.methods.wise.side import WISELayer

    ids = [f for s in segments if s["method"] == "wise" for f in s["facts"]]  # shard order = attach order
    out = []
    for name, layer in model.named_modules():
        if not isinstance(layer, WISELayer) or layer.last_route is None or int(layer.last_route[0]) < 0:
            continue
        i = int(layer.last_route[0])
        start = sum(layer.edits[:i])  # memory i holds the edits after those of memories 0..i-1
        out.append({"facts": ids[start:start + layer.edits[i]], "method": "wise",
                    "how": f"side memory {i} of {name}"})
    return out
