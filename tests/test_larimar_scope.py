"""Larimar's scope: `scope=subject` reads an episode only for prompts that name its subject and ask about
its relation; `scope=similarity` is nearest-neighbour retrieval of the written facts (the memory readout
chooses what the nearest neighbour chooses)."""

from __future__ import annotations

import pytest
import torch
from conftest import FACTS, write_facts
from test_larimar import SHORT, base_model, decoder, needs_minilm, one
from torch import nn

# the same subject as FACTS[0] through another relation: two episodes share "Eiffel Tower"
ARCHITECT = {"id": "eiffel-architect", "prompt": "The Eiffel Tower was designed by", "subject": "Eiffel Tower",
             "target_new": "Picasso"}


def test_a_prompt_is_read_with_an_episode_only_when_it_names_the_episodes_subject(repo, tiny, tmp_path):
    # relation_threshold -1: the subject alone decides, so the random tiny model's encodings do not matter
    repo("apply", write_facts(tmp_path / "f.jsonl", FACTS + [ARCHITECT]), "--method", "larimar",
         "--set", "encoder=model", "--set", "relation_threshold=-1", "--set", SHORT)
    model, tok = repo.state()
    base, _ = base_model(tiny)
    assert decoder(model).subjects == [f["subject"] for f in FACTS + [ARCHITECT]]
    # a subject's own prompts: of two episodes with one subject, the one whose relation is the prompt's
    for prompt, read in (("The Eiffel Tower is in", 0), ("The Eiffel Tower was designed by", 3),
                         ("Danielle Darrieux speaks", 1), ("Toko Yasuda plays the", 2)):
        assert one(model, tok, prompt)[1] == read, prompt
    assert one(model, tok, "where is the eiffel tower?")[1] in (0, 3)  # any case, anywhere in the prompt
    for prompt in ("The Space Needle is in", "Eiffel Towering heights are in", "Toko Yasudas play the"):
        ours, read = one(model, tok, prompt)  # no subject named (inside a word does not count): the base model
        with torch.no_grad():
            theirs = base(**tok(prompt, return_tensors="pt")).logits
        assert read == -1 and torch.equal(ours, theirs), prompt


@needs_minilm
def test_a_same_subject_prompt_about_another_relation_is_read_only_above_the_relation_threshold(repo, tmp_path):
    from memedit_cli.methods.larimar.encoder import minilm

    repo("apply", write_facts(tmp_path / "f.jsonl"), "--method", "larimar", "--set", SHORT)
    model, tok = repo.state()
    dec = decoder(model)
    probe = "Danielle Darrieux was born in"  # FACTS[1]'s subject; its relation "X speaks" is another
    q, r = minilm().encode(["X was born in", "X speaks"])
    sim = float(q @ r)
    assert 0 < sim < 0.95  # the two relations are neither the same nor unrelated
    for threshold, read in ((sim - 0.01, 1), (sim + 0.01, -1)):
        dec.settings["relation_threshold"] = threshold
        assert one(model, tok, probe)[1] == read, threshold
        assert one(model, tok, "Danielle Darrieux speaks")[1] == 1  # its own relation: cosine 1


def test_a_subject_found_only_inside_a_word_is_refused_with_the_repository_unchanged(repo, tmp_path):
    fact = {"id": "cafe", "prompt": "The Parisian cafe is on", "subject": "Paris", "target_new": "Mars"}
    before = repo.tree()
    result = repo("apply", write_facts(tmp_path / "f.jsonl", [fact]), "--method", "larimar",
                  "--set", "encoder=model", ok=False)
    assert result.exit_code == 1 and "only inside a word" in result.output and "scope=similarity" in result.output
    assert repo.tree() == before
    repo("apply", tmp_path / "f.jsonl", "--method", "larimar", "--set", "encoder=model", "--set", "scope=similarity",
         "--set", SHORT)


class _Vectors:
    """A tokenizer and an encoder for LarimarDecoder.choose: row i of the input is the text "i", and text i
    encodes to vectors[i]."""

    def __init__(self, vectors):
        self.vectors = vectors

    def decode(self, ids, skip_special_tokens=True):
        return str(ids[0])

    def encode(self, texts):
        return self.vectors[[int(t) for t in texts]]


@pytest.mark.parametrize("n,C,K", [(20, 32, 64), (200, 32, 256), (200, 32, 512)])
def test_with_scope_similarity_the_memory_readout_chooses_the_nearest_episode(n, C, K):
    # what `mode=context` is: z_r = (z_q M⁺) M lies in the episodes' span (n < C) or is z_q itself (M⁺M = I
    # once n ≥ C), so the episode nearest z_r is the episode nearest z_q: retrieval of the nearest fact
    from memedit_cli.methods.larimar.memory import EpisodicMemory
    from memedit_cli.methods.larimar.modeling_memedit_larimar import LarimarDecoder, nearest

    g = torch.Generator().manual_seed(n + C)
    episodes = nn.functional.normalize(torch.randn(n, C, generator=g, dtype=torch.float64), dim=-1)
    queries = nn.functional.normalize(episodes[torch.randint(n, (300,), generator=g)]
                                      + 0.7 * torch.randn(300, C, generator=g, dtype=torch.float64), dim=-1)
    memory = EpisodicMemory.of(episodes, K, 1.0, 0)
    dec = LarimarDecoder(nn.Identity(), {"scope": "similarity", "threshold": -1, "encoder": "minilm"})
    dec.set_memory(episodes.float(), memory.M, torch.zeros(n, dtype=torch.long), torch.arange(n + 1))
    vectors = _Vectors(queries.float())
    dec.bind(vectors, vectors)
    ids = torch.arange(300)[:, None]
    chosen, best, zr = dec.choose(ids, torch.ones_like(ids))
    sim, nn_index = nearest(queries.float(), episodes.float())
    assert torch.equal(chosen, nn_index) and torch.allclose(best, sim)
    assert (nn_index != torch.arange(300)).any()  # not trivially each query's own episode
    if n >= C:
        assert torch.allclose(zr, queries.float(), atol=1e-4)  # the readout is the query itself


def test_a_segment_logged_before_the_subject_scope_reads_by_similarity():
    from memedit_cli import hparams
    from memedit_cli.methods.larimar.hparams import LarimarHparams
    from memedit_cli.methods.larimar.larimar_main import _shared

    old = {k: v for k, v in hparams.to_json(LarimarHparams()).items() if k not in ("scope", "relation_threshold")}
    hp = hparams.from_json(LarimarHparams, old)
    assert hp.scope == "similarity" and LarimarHparams().scope == "subject"
    assert _shared(old) == _shared(hparams.to_json(hp)) != _shared(hparams.to_json(LarimarHparams()))
    # the threshold of the scope not in use does not keep two segments apart
    assert _shared(dict(old, relation_threshold=0.2)) == _shared(old) != _shared(dict(old, threshold=0.2))


@pytest.mark.parametrize("subject, text, named", [
    ("Paris", "Parisian food is", False), ("Paris", "Born in Paris.", True), ("Ann", "Annette lives in", False),
    ("Eiffel Tower", "the eiffel tower is in", True),
    ("埃菲尔铁塔", "埃菲尔铁塔位于", True),  # written without spaces: no word boundary to ask for
    ("iPhone", "用iPhone拍照", True), ("กรุงเทพ", "กรุงเทพมหานคร", True),
    ("Ann", "Annette and Ann", True),  # a rejected occurrence does not hide a later whole-word one
    ("İstanbul", "Born in İstanbul, she", True),  # lowercasing lengthens "İ": matched by pattern
])
def test_a_subject_is_named_as_whole_words_where_the_script_has_spaces(subject, text, named):
    from memedit_cli.methods.larimar.modeling_memedit_larimar import subject_spans, without_subject

    assert bool(subject_spans(text, subject)) is named
    assert (without_subject(text, subject) != text) is named


def test_the_subject_is_replaced_at_each_whole_word_occurrence():
    from memedit_cli.methods.larimar.modeling_memedit_larimar import without_subject

    assert without_subject("Paris, Parisian Paris. PARIS", "Paris") == "X, Parisian X. X"
    assert without_subject("What is the capital of France?", "France") == "What is the capital of X?"
