"""`memedit blame`: Larimar names the episode read; weight edits are found by ablation, and the
answer without a batch is the answer of the other batches as stored."""

from __future__ import annotations

from conftest import FACTS, write_facts
from test_larimar import SHORT, needs_minilm

# ft settings strong enough to change a tiny model's greedy answer
STRONG = ["--set", "lr=0.5", "--set", "norm_constraint=1.0", "--set", "steps=20"]


@needs_minilm
def test_larimar_names_the_episode_its_decoder_read(repo, tmp_path):
    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", SHORT)
    info = repo.json("blame", FACTS[1]["prompt"])
    assert info["responsible"] == [{"facts": ["darrieux"], "method": "larimar", "how": "episode read"}]
    assert repo.json("blame", "The Space Needle is in")["responsible"] == []


def test_weight_edits_are_found_by_rebuilding_without_them(repo, tmp_path):
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--method", "ft", *STRONG)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:2]), "--method", "ft", *STRONG)
    prompt = FACTS[0]["prompt"]
    info = repo.json("blame", prompt, "--max-new-tokens", "4")
    assert info["ablations"] == 2 == info["weight_segments"]
    edited = repo("ask", prompt, "--max-new-tokens", "4").stdout[:-1]
    assert info["answer"] == edited
    by_fact = {tuple(r["facts"]): r for r in info["responsible"]}
    # without eiffel's batch: the base weights plus darrieux's batch as stored (forget would instead
    # recompute darrieux's batch on the base, since ft batches build on each other)
    from memedit_cli.lm.generate import greedy
    from memedit_cli.replay import materialize
    from memedit_cli.store.repo import Repo

    r = Repo.open(repo.dir)
    model, tok = materialize(r, r.segments_at(r.head())[1:])
    without = greedy(model, tok, prompt, 4)
    assert (("eiffel",) in by_fact) == (without != edited)
    assert ("eiffel",) in by_fact  # the strong edit of the prompt's own fact changes its answer
    assert by_fact[("eiffel",)]["answer_without"] == without
    limited = repo.json("blame", prompt, "--limit", "0")
    assert limited["ablations"] == 0 and limited["responsible"] == []


def test_wise_names_the_side_memory_its_router_chose(memedit, wise_models, tmp_path):
    import json

    from conftest import UNRELATED

    memedit("init", "--model", wise_models["llama"], "--device", "cpu")
    pool = json.dumps(UNRELATED + ["Thomas Joannes Stieltjes is Dutch."])
    keys = ["--method", "wise", "--set", "n_iter=10", "--set", "router=keys", "--set", "layer=1", "--set",
            "key_layer=0", "--set", f"irrelevant={pool}", "--set", "variant=retrieve", "--set", "merge_freq=1"]
    for i, fact in enumerate(FACTS):  # one memory per fact
        memedit("apply", write_facts(tmp_path / f"{i}.jsonl", [fact]), *keys)
    for fact in FACTS:
        info = memedit.json("blame", fact["prompt"], "--max-new-tokens", "2")
        wise = [r for r in info["responsible"] if r["method"] == "wise"]
        assert [r["facts"] for r in wise] == [[fact["id"]]], info
    assert memedit.json("blame", UNRELATED[1])["responsible"] == []
