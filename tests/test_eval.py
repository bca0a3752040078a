"""`memedit eval`: the metrics by hand, the read-first loop against a single teacher-forced pass,
locality of the base state, and the --fail-under gate."""

from __future__ import annotations

import torch
from conftest import FACTS, FAST, write_facts

from memedit_cli.lm.score import agreement, token_scores

LOCAL = [dict(f, rephrase_prompt=f"Some say that {f['prompt'][0].lower()}{f['prompt'][1:]}",
              locality_prompt="The Space Needle is in", locality_ground_truth="Seattle") for f in FACTS]


def test_metrics_on_a_case_checked_by_hand():
    preds = [torch.tensor([1, 2, 3]), torch.tensor([7])]
    targets = [torch.tensor([1, 5, 3]), torch.tensor([7])]
    assert token_scores(preds, targets) == [2 / 3, 1.0]
    assert agreement([torch.tensor([4, 4, 9, 9])], [torch.tensor([4, 5, 9, 8])]) == [0.5]


def single_pass(model, tok, prompts, targets, preds=False):
    """EasyEdit's reliability: one teacher-forced pass over prompt + target (or the argmax rows)."""
    from memedit_cli.lm.tokens import prompt_target_batch

    ids, attn, labels = prompt_target_batch(tok, prompts, targets, "cpu")
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=attn).logits.argmax(-1)
    mask = labels != -100
    if preds:
        return [pred[b][mask[b]] for b in range(len(pred))]
    return (((pred == labels) & mask).sum(1) / mask.sum(1)).tolist()


def test_base_state_has_locality_one_and_reliability_of_a_single_pass(repo, tmp_path):
    facts = write_facts(tmp_path / "f.jsonl", LOCAL)
    report = repo.json("eval", facts)
    assert report["revision"] == "base" and report["facts"] == 3
    assert report["scores"]["loc"] == 1.0 and report["scores"]["loc_gen"] == 1.0
    assert {k: report["counts"][k] for k in ("rel", "gen", "loc")} == {"rel": 3, "gen": 3, "loc": 3}
    assert report["scores"]["spec"] is None and report["counts"]["port"] == 0  # no such probes in the file
    model, tok = repo.state()
    expected = single_pass(model, tok, [f["prompt"] for f in FACTS], [f["target_new"] for f in FACTS])
    got = [p["rel"] for p in report["per_fact"]]
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-6)
    assert [p["rel_em"] for p in report["per_fact"]] == [x == 1.0 for x in expected]


def test_after_an_edit_the_read_first_scores_equal_a_single_pass(repo, tmp_path):
    facts = write_facts(tmp_path / "f.jsonl", LOCAL)
    repo("apply", facts, *FAST)
    report = repo.json("eval", facts)
    model, tok = repo.state()
    for key, prompt in (("rel", "prompt"), ("gen", "rephrase_prompt")):
        expected = single_pass(model, tok, [f[prompt] for f in LOCAL], [f["target_new"] for f in LOCAL])
        assert torch.allclose(torch.tensor([p[key] for p in report["per_fact"]]), torch.tensor(expected), atol=1e-6)
    # the predictions themselves (not only scores, which could agree by being 0): prompts and
    # targets of different lengths, in one left-padded batch
    from memedit_cli.lm.score import continuation_tokens, predict

    prompts = [f["prompt"] for f in LOCAL] + ["Hi", "The Space Needle is in the city of"]
    targets = [f["target_new"] for f in LOCAL] + ["there friend of mine", "Seattle"]
    read_first = predict(model, tok, prompts, continuation_tokens(tok, targets), batch=5)
    for a, b in zip(read_first, single_pass(model, tok, prompts, targets, preds=True)):
        assert torch.equal(a, b)


def test_the_gate_exits_1_when_missed_and_0_when_met(repo, tmp_path):
    facts = write_facts(tmp_path / "f.jsonl", LOCAL)
    rel = repo.json("eval", facts)["scores"]["rel"]
    assert rel < 1.0  # a random tiny model does not already say every target
    result = repo("eval", facts, "--fail-under", "rel=1.0,loc=0.5", ok=False)
    assert result.exit_code == 1 and "rel" in result.stderr and "loc" not in result.stderr.split("below")[-1]
    assert repo("eval", facts, "--fail-under", "rel=0,gen=0,loc=1.0").exit_code == 0
    bare = write_facts(tmp_path / "bare.jsonl", FACTS)  # no rephrase: gen cannot be scored
    result = repo("eval", bare, "--fail-under", "gen=0.1", ok=False)
    assert result.exit_code == 1 and "no fact in the file has rephrase_prompt" in result.stderr
    before = repo.tree()
    for spec, message in (("rel", "expected METRIC=VALUE"), ("acc=0.5", "expected METRIC=VALUE"),
                          ("rel=high", "is not a number"), ("rel=1.5", "between 0 and 1")):
        result = repo("eval", facts, "--fail-under", spec, ok=False)
        assert result.exit_code == 1 and message in result.output + result.stderr
    assert repo.tree() == before


def test_limit_scores_the_first_facts(repo, tmp_path):
    facts = write_facts(tmp_path / "f.jsonl", LOCAL)
    report = repo.json("eval", facts, "--limit", "2")
    assert [p["id"] for p in report["per_fact"]] == [f["id"] for f in FACTS[:2]]
    assert repo("eval", facts, "--limit", "0", ok=False).exit_code == 1


def test_the_words_rule_of_generation_scores():
    from memedit_cli.lm.score import contains

    assert contains(" Rome, the capital of Italy.", "Rome")
    assert contains("It is New York City.", "new york")  # case and punctuation do not matter
    assert not contains(" Romeo and Juliet", "Rome")  # whole words, not substrings
    assert not contains(" York, New", "New York")  # in order, next to each other
    assert contains(" said: ?!", "?!") and not contains(" nothing", "?!")


def test_free_running_predictions_equal_greedy_generation(repo):
    from memedit_cli.lm.score import greedy_tokens

    model, tok = repo.state()
    prompts = ["The Space Needle is in", "Hi", "The Eiffel Tower is located in the city of"]
    got = greedy_tokens(model, tok, prompts, [6, 3, 5])
    for prompt, n, ids in zip(prompts, [6, 3, 5], got):
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        want = out[0, enc["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in want:
            want = want[:want.index(tok.eos_token_id)]
        assert ids == want


def _greedy(model, tok, prompt, n=3):
    from memedit_cli.lm.score import greedy_tokens

    return tok.decode(greedy_tokens(model, tok, [prompt], [n])[0])


def _identity_facts(model, tok, want=2):
    """Facts whose target is what the model already says after the prompt (ids that tokenize back)."""
    from memedit_cli.lm.score import continuation_tokens, greedy_tokens

    prompts = [f"Fact {n}: the {FACTS[n % 3]['subject']} is in" for n in range(400)]
    facts = []
    for n, (prompt, ids) in enumerate(zip(prompts, greedy_tokens(model, tok, prompts, [3] * len(prompts)))):
        for k in (1, 2, 3):
            text = tok.decode(ids[:k])
            said = next((c for c in (text, text[1:]) if c.strip() and "\x00" not in c
                         and continuation_tokens(tok, [c])[0].tolist() == ids[:k]), None)
            if said:
                break
        if said and len(facts) < want:
            facts.append({"id": f"i{n}", "prompt": prompt, "subject": FACTS[n % 3]["subject"], "target_new": said,
                          "rephrase_prompt": [prompt, prompt],
                          "locality": [{"prompt": "The Space Needle is in", "ground_truth": "Seattle"}],
                          "subject_locality": [{"prompt": f"{FACTS[n % 3]['subject']} is", "ground_truth": "a"}],
                          "portability": {"Reasoning": [{"prompt": prompt, "ground_truth": [said]}]}})
    assert facts, "the model should say something that tokenizes back after one of 400 prompts"
    return facts


def test_identity_facts_score_one_on_every_metric(memedit, tiny_models, tmp_path):
    # Facts whose targets and probe answers are what the model already says: every score is 1.0.
    # GPT-2 only: its tokenizer has space-prefixed tokens, so an answer it says tokenizes back to
    # the same ids as a target; the tiny LLaMA's vocabulary spells the space as a token of its own.
    memedit("init", "--model", tiny_models["gpt2"], "--device", "cpu")
    model, tok = memedit.state()
    facts = _identity_facts(model, tok)
    report = memedit.json("eval", write_facts(tmp_path / "id.jsonl", facts))
    for key in ("rel", "rel_em", "gen", "gen_em", "loc", "spec", "port", "rel_gen", "gen_gen", "loc_gen"):
        assert report["scores"][key] == 1.0, key
        assert report["counts"][key] == len(facts), key
    assert report["probes"]["gen"] == 2 * len(facts)  # two rephrases a fact, each scored
    assert report["per_fact"][0]["answer"].lstrip().startswith(facts[0]["target_new"].lstrip())
    assert memedit("eval", write_facts(tmp_path / "id2.jsonl", facts),
                   "--fail-under", "spec=1.0,port=1.0,rel_gen=1.0,gen_gen=1.0,loc_gen=1.0").exit_code == 0


def test_an_edit_that_rewrites_its_subject_lowers_spec(repo, tmp_path):
    # The same-subject probe is the edit's own prompt asked for its old answer: an edit that
    # takes must change it, so spec falls below 1 while the unrelated locality prompt may stay.
    model, tok = repo.state()
    f = FACTS[0]
    old = _greedy(model, tok, f["prompt"], 2).strip()
    fact = dict(f, subject_locality=[{"prompt": f["prompt"], "ground_truth": old}])
    path = write_facts(tmp_path / "s.jsonl", [fact])
    assert repo.json("eval", path)["scores"]["spec"] == 1.0
    repo("apply", path, "--method", "ft", "--set", "lr=0.5", "--set", "steps=20", "--set", "norm_constraint=1.0")
    report = repo.json("eval", path)
    assert report["scores"]["rel"] == 1.0  # the edit took
    assert report["scores"]["spec"] < 1.0
    result = repo("eval", path, "--fail-under", "spec=1.0", ok=False)
    assert result.exit_code == 1 and "spec" in result.stderr


def test_generation_scores_read_a_wise_state_as_ask_does(memedit, wise_models, tmp_path):
    # A wrapper method's routes are chosen by the prompt: the batched free-running loop that
    # rel_gen reads must give, for each prompt, what `ask` (lm/generate.greedy) answers alone.
    from memedit_cli import methods
    from memedit_cli.lm.generate import greedy
    from memedit_cli.lm.score import greedy_tokens
    from memedit_cli.store.repo import Repo

    memedit("init", "--model", wise_models["llama"], "--device", "cpu")
    memedit("apply", write_facts(tmp_path / "f.jsonl"), "--method", "wise", "--set", "n_iter=10")
    model, tok = memedit.state()
    segments = Repo.open(memedit.dir).segments_at(Repo.open(memedit.dir).head())

    def reset():
        methods.reset(model, segments)

    prompts = [f["prompt"] for f in FACTS] + ["The Space Needle is in"]
    batched = greedy_tokens(model, tok, prompts, [4] * len(prompts), reset=reset)
    for prompt, ids in zip(prompts, batched):
        alone = greedy(model, tok, prompt, 4, reset)
        assert tok.decode(ids) == alone[:len(tok.decode(ids))] and (len(ids) == 4 or tok.decode(ids) == alone)
