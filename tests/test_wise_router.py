"""WISE with router=keys: routing by the edits' subject keys, on a hand-made router and tiny models."""

from __future__ import annotations

import pytest
import torch
from conftest import FACTS, PROMPTS, UNRELATED, Memedit, base_logits, logits, write_facts

from memedit_cli.methods.wise.hparams import WISEHparams

KEYS = ["--method", "wise", "--set", "n_iter=10", "--set", "router=keys", "--set", "layer=1", "--set", "key_layer=0"]


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, wise_models):
    return wise_models[request.param]


def _layers(model):
    from memedit_cli.methods.wise.router import KeyRouter
    from memedit_cli.methods.wise.side import WISELayer

    layer = next(m for m in model.modules() if isinstance(m, WISELayer))
    router = next(m for m in model.modules() if isinstance(m, KeyRouter))
    return layer, router


def _shard(keys, tau, **rel):
    return {"keys": keys, "key_tau": torch.tensor(tau), **rel}


_HP = WISEHparams(router="keys")


def test_the_relation_gate_keeps_a_prompt_about_the_subject_through_another_relation_in_the_main_memory():
    import dataclasses

    from memedit_cli.methods.wise.router import KeyRouter

    e = torch.eye(6)
    # one key (the subject, e0); the edit's relation words are e1 and e2; its floor 0.4 (what other
    # relations' prompts about the subject reached) + margin 0.1 is the relation threshold
    shard = _shard(e[:1], [0.5], rel_keys=e[1:3], rel_counts=torch.tensor([2]), rel_floor=torch.tensor([0.4]))
    x = torch.zeros(3, 3, 6)
    x[0, 0], x[0, 1], x[0, 2] = e[0], e[1], e[2]  # the subject and both relation words: relation score 1
    x[1, 0], x[1, 1] = e[0], e[1]  # the subject and half the relation: 0.5 − 0.5 is not above 0
    x[2, 0], x[2, 1] = e[0], e[3]  # the subject about something else: 0
    router = KeyRouter(torch.nn.Linear(6, 2), [])
    router.rebuild([[shard]], _HP)  # no gate: the subject alone decides
    router(x)
    assert router.route.tolist() == [0, 0, 0] and not router.relation
    router.rebuild([[shard]], dataclasses.replace(_HP, key_relation=True, relation_margin=0.1))
    router(x)
    assert router.route.tolist() == [0, -1, -1]
    assert torch.allclose(router.rel_tau, torch.tensor([0.5]))
    # a shard made before the gate has no relation words: its key passes the gate
    router.rebuild([[_shard(e[:1], [0.5])], [shard]], dataclasses.replace(_HP, key_relation=True))
    router(x)
    assert router.route.tolist() == [0, 0, 0]


def test_the_relation_gate_computed_for_candidate_keys_alone_routes_as_the_gate_over_every_key():
    """margins() skips the word rows of keys at or below 0; against the gate computed over all keys, on
    random memories whose keys sit near the inputs (so some pass, some are gated, some fail outright)."""
    import dataclasses

    from memedit_cli.methods.wise.router import KeyRouter

    g = torch.Generator().manual_seed(0)
    d, n_mem, per_mem, words = 16, 12, 3, 4
    x = torch.randn(8, 5, d, generator=g)  # (B, T, d_in)
    shards = []
    for i in range(n_mem):
        # keys: positions of the inputs plus noise, so cosines above the thresholds happen
        keys = x[torch.randint(0, 8, (per_mem,), generator=g), torch.randint(0, 5, (per_mem,), generator=g)]
        keys = keys + 0.6 * torch.randn(per_mem, d, generator=g)
        counts = torch.randint(0, words + 1, (per_mem,), generator=g)  # a key with no word rows passes the gate
        rel = x.reshape(-1, d)[torch.randint(0, 40, (int(counts.sum()),), generator=g)]
        rel = rel + torch.randn(len(rel), d, generator=g)
        shards.append(_shard(keys, (0.5 + 0.3 * torch.rand(per_mem, generator=g)).tolist(), rel_keys=rel,
                             rel_counts=counts, rel_floor=0.2 + 0.4 * torch.rand(per_mem, generator=g)))
    router = KeyRouter(torch.nn.Linear(d, 2), [])
    router.rebuild([[s] for s in shards], dataclasses.replace(_HP, key_relation=True))
    a = torch.nn.functional.normalize(x, dim=-1)
    per_key = (a @ torch.nn.functional.normalize(router.keys, dim=-1).T - router.tau).amax(1)  # (B, N)
    rows = (a @ torch.nn.functional.normalize(router.rel_keys, dim=-1).T).amax(1)  # (B, M)
    owner = router.rel_owner.long()
    gate = torch.stack([rows[:, owner == j].mean(1) if (owner == j).any() else torch.full((8,), float("inf"))
                        for j in range(len(router.keys))], 1) - router.rel_tau
    exact = torch.minimum(per_key, gate).reshape(8, n_mem, per_mem).amax(2).T  # (n_memories, B)
    got = router.margins(x)
    passed = exact > 0
    assert 0 < int(passed.sum()) < passed.numel() and bool(((per_key > 0) & (gate <= 0)).any())
    assert torch.allclose(got[passed], exact[passed], atol=1e-6) and bool((got[~passed] <= 0).all())
    router(x)
    best, pick = exact.max(0)
    assert router.route.tolist() == torch.where(best > 0, pick, torch.full_like(pick, -1)).tolist()


def test_a_row_uses_the_memory_whose_key_it_matches_best_and_keeps_it_while_generating():
    from memedit_cli.methods.wise.router import KeyRouter

    router = KeyRouter(torch.nn.Linear(4, 3), [])
    e = torch.eye(4)
    # memory 0 holds keys e0 and e1, memory 1 holds e2; each key's threshold is its own
    router.rebuild([[_shard(e[:2], [0.9, 0.5])], [_shard(e[2:3], [0.8])]], _HP)
    assert router.counts == [2, 1]
    x = torch.zeros(4, 3, 4)  # (B, T, d_in)
    x[0, 1] = e[0]  # one position is key e0: margin 1 − 0.9 on memory 0
    x[1, 2] = e[0] + e[2]  # cos 0.707 to e0 (below 0.9) and to e2 (below 0.8): nothing
    x[2, 0], x[2, 2] = e[1], e[2]  # e1: margin 0.5 on memory 0; e2: margin 0.2 on memory 1 -> memory 0
    x[3] = e[3]  # no key
    out = router(x)
    assert torch.equal(out, router.base(x))  # the router's own projection is unchanged
    assert router.route.tolist() == [0, -1, 0, -1]
    # cached generation: one new position per row keeps each row's best margin so far
    router(e[3].expand(4, 1, 4).clone())
    assert router.route.tolist() == [0, -1, 0, -1]
    router(e[3].expand(4, 2, 4).clone())  # several positions: new sequences
    assert router.route.tolist() == [-1, -1, -1, -1]
    router(x)
    router.reset()  # memedit's generate and the export's forward reset at a new sequence
    router(e[3].expand(4, 1, 4).clone())
    assert router.route.tolist() == [-1, -1, -1, -1]


def test_edits_use_the_side_memory_and_unrelated_prompts_the_base_model_exactly(repo, tiny, tmp_path):
    import json

    from memedit_cli.replay import get_tensors
    from memedit_cli.store.repo import Repo

    # the unrelated pool the key thresholds are fitted on: a random tiny model's activations are not
    # a trained model's, so its own sampled text says little about these prompts
    pool = json.dumps(UNRELATED + ["Thomas Joannes Stieltjes is Dutch."])
    rec = repo.json("apply", write_facts(tmp_path / "f.jsonl"), *KEYS, "--set", f"irrelevant={pool}")
    shown = repo.json("show", rec["revision"])
    assert shown["hparams"]["router"] == "keys" and shown["hparams"]["key_layer"] == 0
    stored = get_tensors(Repo.open(repo.dir), shown["segments"][0]["objects"]["tensors"])
    assert stored["keys"].shape[0] == len(FACTS) and (stored["key_tau"] >= 0.7).all()
    model, tok = repo.state()
    layer, router = _layers(model)
    for text in PROMPTS:
        logits(model, tok, [text])
        assert layer.last_route.tolist() == [0] == router.route.tolist()
    assert not torch.allclose(logits(model, tok, PROMPTS[:1]), base_logits(tiny, PROMPTS[:1]), atol=1e-4)
    for text in UNRELATED:
        got = logits(model, tok, [text])
        assert router.route.tolist() == [-1]
        assert torch.equal(got, base_logits(tiny, [text]))  # bit for bit: the side memory is not added


def test_cached_generation_routes_like_the_whole_sequence(repo, tiny, tmp_path):
    from memedit_cli.lm.generate import greedy

    repo("apply", write_facts(tmp_path / "f.jsonl"), *KEYS)
    model, tok = repo.state()
    layer, _ = _layers(model)
    prompt = FACTS[0]["prompt"]
    cached = greedy(model, tok, prompt, 6)
    assert layer.last_route.tolist() == [0]  # the last new token still used the side memory
    ids = tok([prompt], return_tensors="pt")["input_ids"]
    for _ in range(6):  # no cache: every step sees the subject again
        with torch.no_grad():
            nxt = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], 1)
    n = len(tok([prompt])["input_ids"][0])
    assert cached == tok.decode(ids[0, n:], skip_special_tokens=True)


def test_forget_with_keys_equals_a_fresh_repository(repo, tiny, tmp_path):
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:2]), *KEYS)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[2:]), *KEYS, "--set", "variant=retrieve",
         "--set", "merge_freq=1")
    repo("forget", "eiffel")
    model, tok = repo.state()
    after = logits(model, tok, PROMPTS + UNRELATED)
    assert _layers(model)[1].counts == [1, 1]  # retrieve: one memory per shard, one key each

    fresh = Memedit(tmp_path / "fresh")
    fresh.dir.mkdir()
    fresh("init", "--model", tiny, "--device", "cpu")
    fresh("apply", write_facts(tmp_path / "fa.jsonl", FACTS[1:2]), *KEYS)
    fresh("apply", write_facts(tmp_path / "fb.jsonl", FACTS[2:]), *KEYS, "--set", "variant=retrieve",
          "--set", "merge_freq=1")
    assert torch.allclose(after, logits(*fresh.state(), PROMPTS + UNRELATED), atol=1e-6)


def test_one_router_per_repository(repo, tmp_path):
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *KEYS)
    before = repo.tree()
    r = repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), "--method", "wise", "--set", "n_iter=2",
             "--set", "layer=1", ok=False)
    assert r.exit_code != 0 and "router=keys" in r.output and "forget those edits" in r.output
    r = repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), "--method", "wise", "--set", "layer=1",
             "--set", "router=keys", "--set", "key_layer=1", ok=False)
    assert r.exit_code != 0 and "key_layer must be a block between 0 and 0" in r.output
    assert repo.tree() == before


def test_a_subject_missing_from_its_prompt_is_refused_with_keys(repo, tmp_path):
    before = repo.tree()
    bad = [{"id": "x", "prompt": "The tower is in", "subject": "Eiffel Tower", "target_new": "Rome"}]
    r = repo("apply", write_facts(tmp_path / "f.jsonl", bad), *KEYS, ok=False)
    assert r.exit_code != 0 and "does not occur in prompt" in r.output
    assert repo.tree() == before
    # activation: no subject needed
    repo("apply", write_facts(tmp_path / "f.jsonl", bad), "--method", "wise", "--set", "n_iter=1")


@pytest.mark.parametrize("setting, message", [("router=nearest", "router must be activation or keys"),
                                              ("key_threshold=1.5", "key_threshold is a cosine"),
                                              ("key_margin=-0.1", "key_margin must be >= 0")])
def test_bad_router_settings_are_refused_before_loading(repo, tmp_path, setting, message):
    before = repo.tree()
    r = repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "wise", "--set", setting, ok=False)
    assert r.exit_code != 0 and message in r.output
    assert repo.tree() == before


def test_the_relation_words_start_at_the_subjects_first_token():
    """The subject's first token is not a relation word: tokenizing the text before the subject ends in
    the space before it, which a BPE tokenizer may make a token of its own ("... by " -> "Ġby", "Ġ"),
    one more than the whole text has before the subject; that once moved the subject's first token
    ("ĠUn" of "UniFirst") into the relation's words."""
    from tiny import build_tokenizer

    from memedit_cli.lm.tokens import subject_first, subject_last

    tok = build_tokenizer()
    for text, subject in [("What is the product made by UniFirst?", "UniFirst"), ("UniFirst makes", "UniFirst"),
                          ("What is the product made by UniFirst?", "the product"),
                          ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux")]:
        start = text.index(subject)
        enc = tok(text, return_offsets_mapping=True)
        first, last = subject_first(tok, text, start), subject_last(tok, text, start + len(subject))
        assert tok.decode(enc["input_ids"][first:last + 1]).strip() == subject
        assert enc["offset_mapping"][first][1] > start and (first == 0 or enc["offset_mapping"][first - 1][1] <= start)
