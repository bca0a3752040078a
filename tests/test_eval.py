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
    assert report["scores"]["loc"] == 1.0 and report["counts"] == {"rel": 3, "gen": 3, "loc": 3}
    model, tok = repo.state()
    expected = single_pass(model, tok, [f["prompt"] for f in FACTS], [f["target_new"] for f in FACTS])
    got = [p["rel"] for p in report["per_fact"]]
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-6)
    assert [p["rel_em"] for p in report["per_fact"]] == [x == 1.0 for x in expected]


def test_after_an_edit_the_read_first_scores_equal_a_single_pass(repo, tmp_path):
    facts = write_facts(tmp_path / "f.jsonl", LOCAL)
    repo("apply", facts, "--method", "ft", *FAST)
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
