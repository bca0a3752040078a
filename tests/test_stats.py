"""Second moments of module inputs (memedit_cli/stats/): exact values, cache, resume, samples, torchrun."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import SENTENCES
from transformers import AutoModelForCausalLM, AutoTokenizer

from memedit_cli.errors import UserError
from memedit_cli.lm.arch import arch_for
from memedit_cli.stats import SAMPLES_ID, CorpusSpec, compute, samples, second_moments, stats_dir

# 40 documents, some over several lines; joined by blank lines (.txt) or one per line (.jsonl)
DOCS = [" ".join(SENTENCES[(i * k + k) % len(SENTENCES)] for k in range(1 + i % 3)) + f" Item {i}."
        + ("\nA second line, número %d." % i if i % 4 == 0 else "") for i in range(40)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices gain nothing from threads, and lose a lot when the cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    out = {}
    for arch, path in tiny_models.items():
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        out[arch] = (model, tok, path)
    return out


@pytest.fixture
def corpus(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)), encoding="utf-8")
    return {"txt": txt, "jsonl": jsonl}


def mlp_outs(model, layers=(0, 1)):
    return [arch_for(model.config).mlp_out_at(i) for i in layers]


def count_calls(module):
    """A forward pre-hook counting calls; returns (counter, handle)."""
    calls = [0]

    def hook(mod, args):
        calls[0] += 1

    return calls, module.register_forward_pre_hook(hook)


@contextlib.contextmanager
def interrupted_at(model, n):
    """Inside the block, the model's n-th forward pass raises KeyboardInterrupt (as Ctrl-C would)."""
    calls = [0]

    def hook(mod, args):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def brute_force(model, tok, names, tokens, seq_len):
    """C by the definition: every key of the same rows, from one full forward pass."""
    stream = []
    for d in DOCS:
        stream += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = torch.tensor(stream[:tokens])
    rows = list(stream.split(seq_len))
    ids = torch.full((len(rows), seq_len), tok.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], attn[i, :len(r)] = r, 1
    keys = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: keys.__setitem__(n, args[0].detach())) for n in names]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=attn)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in names:
        k = keys[n][attn.bool()].double()
        assert k.shape[0] == tokens
        out[n] = k.T @ k / tokens
    return out


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_equals_brute_force(loaded, corpus, tmp_path, arch, fmt):
    model, tok, _ = loaded[arch]
    names = mlp_outs(model)
    spec = CorpusSpec(str(corpus[fmt]), tokens=300, seq_len=32)  # 9 full rows and one of 12 tokens
    got = second_moments(model, tok, names, spec, "m", [tmp_path / "cache"], batch_size=4)
    want = brute_force(model, tok, names, 300, 32)
    d = model.config.intermediate_size if arch == "llama" else 4 * model.config.n_embd
    for n in names:
        assert got[n].dtype == torch.float64 and got[n].device.type == "cpu" and got[n].shape == (d, d)
        assert torch.allclose(got[n], want[n], rtol=1e-6, atol=1e-9), (got[n] - want[n]).abs().max()
        saved = load_file(stats_dir(tmp_path / "cache", "m", spec) / f"{n}.safetensors")
        assert torch.equal(saved["mom2"], got[n]) and saved["count"].dtype == torch.int64 and int(saved["count"]) == 300


def test_spec_key(corpus, tmp_path):
    a = CorpusSpec(str(corpus["txt"]), 300, 32)
    assert a.key() == CorpusSpec(str(corpus["txt"]), 300, 32).key()
    assert a.key().endswith("-t300-s32") and len(a.key().split("-")[0]) == 16
    assert a.key() != CorpusSpec(str(corpus["txt"]), 301, 32).key() != CorpusSpec(str(corpus["txt"]), 300, 16).key()
    assert a.key() != CorpusSpec(str(corpus["jsonl"]), 300, 32).key()
    assert CorpusSpec(None, 300).key() == f"{SAMPLES_ID}-t300-s256"
    copy = tmp_path / "copy.txt"
    copy.write_bytes(corpus["txt"].read_bytes())
    assert CorpusSpec(str(copy), 300, 32).key() == a.key()  # the content, not the name


def test_corpus_too_short(loaded, corpus, tmp_path):
    model, tok, _ = loaded["llama"]
    with pytest.raises(UserError, match="tokens"):
        second_moments(model, tok, mlp_outs(model), CorpusSpec(str(corpus["txt"]), 10**6, 32), "m", [tmp_path])


def test_cache_hit_and_copy(loaded, corpus, tmp_path, monkeypatch):
    model, tok, _ = loaded["gpt2"]
    names = mlp_outs(model)
    spec = CorpusSpec(str(corpus["txt"]), 200, 32)
    first = second_moments(model, tok, names, spec, "m", [tmp_path / "a"])
    files_a = [stats_dir(tmp_path / "a", "m", spec) / f"{n}.safetensors" for n in names]
    mtimes = [f.stat().st_mtime_ns for f in files_a]
    calls, handle = count_calls(model)
    try:
        again = second_moments(model, tok, names, spec, "m", [tmp_path / "b", tmp_path / "a"])
        assert calls[0] == 0  # nothing computed
    finally:
        handle.remove()
    assert [f.stat().st_mtime_ns for f in files_a] == mtimes
    for n in names:
        assert torch.equal(first[n], again[n])
        assert torch.equal(load_file(stats_dir(tmp_path / "b", "m", spec) / f"{n}.safetensors")["mom2"], first[n])
    # a module missing from the cache is computed alone; the cached one is not recomputed
    (stats_dir(tmp_path / "b", "m", spec) / f"{names[1]}.safetensors").unlink()
    (stats_dir(tmp_path / "a", "m", spec) / f"{names[1]}.safetensors").unlink()
    hooked = []
    real = compute.inputs_until_all
    monkeypatch.setattr(compute, "inputs_until_all",
                        lambda model, names, fn: hooked.append(list(names)) or real(model, names, fn))
    third = second_moments(model, tok, names, spec, "m", [tmp_path / "b", tmp_path / "a"])
    assert hooked == [[names[1]]]
    assert torch.equal(third[names[1]], first[names[1]]) and torch.equal(third[names[0]], first[names[0]])


def test_the_cache_dirs_share_one_file_per_module_and_copy_where_links_fail(loaded, corpus, tmp_path, monkeypatch):
    # at d_in = 14,336 each module's C₀ is 1.6 GB: the repository's cache and the user's must not both hold it
    model, tok, _ = loaded["gpt2"]
    names = mlp_outs(model)
    spec = CorpusSpec(str(corpus["txt"]), 200, 32)
    files = lambda d: [stats_dir(tmp_path / d, "m", spec) / f"{n}.safetensors" for n in names]  # noqa: E731
    first = second_moments(model, tok, names, spec, "m", [tmp_path / "a", tmp_path / "b"])
    for a, b in zip(files("a"), files("b")):
        assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 2
    second_moments(model, tok, names, spec, "m", [tmp_path / "a", tmp_path / "c"])  # cached in a, linked into c
    assert [f.stat().st_ino for f in files("c")] == [f.stat().st_ino for f in files("a")]
    monkeypatch.setattr("os.link", lambda *a, **k: (_ for _ in ()).throw(OSError(18, "cross-device link")))
    got = second_moments(model, tok, names, spec, "m", [tmp_path / "a", tmp_path / "d"])
    for a, d, n in zip(files("a"), files("d"), names):
        assert a.stat().st_ino != d.stat().st_ino and d.stat().st_nlink == 1
        assert torch.equal(load_file(d)["mom2"], first[n]) and torch.equal(got[n], first[n])
    assert not [p for p in (tmp_path / "d").rglob(".*")], "no temporary file left behind"
    # all_cached reads the headers: every module somewhere, or not
    assert compute.all_cached(names, spec, "m", [tmp_path / "x", tmp_path / "d"])
    files("d")[0].unlink()
    assert not compute.all_cached(names, spec, "m", [tmp_path / "x", tmp_path / "d"])
    assert not compute.all_cached(names, CorpusSpec(str(corpus["txt"]), 150, 32), "m", [tmp_path / "a"])


def test_resume_after_interruption(loaded, corpus, tmp_path):
    model, tok, _ = loaded["llama"]
    names = mlp_outs(model)
    spec = CorpusSpec(str(corpus["jsonl"]), 300, 32)  # 10 rows: 5 batches of 2
    whole = second_moments(model, tok, names, spec, "m", [tmp_path / "whole"], batch_size=2)

    with interrupted_at(model, 4), pytest.raises(KeyboardInterrupt):
        second_moments(model, tok, names, spec, "m", [tmp_path / "c"], batch_size=2, checkpoint_every=2)
    assert all(not model.get_submodule(n)._forward_pre_hooks for n in names)  # hooks gone with the exception
    partial = stats_dir(tmp_path / "c", "m", spec) / "partial.safetensors"
    saved = load_file(partial)
    assert int(saved["rows"]) == 6 and int(saved[f"count.{names[0]}"]) == 6 * 32

    calls, handle = count_calls(model)
    try:
        resumed = second_moments(model, tok, names, spec, "m", [tmp_path / "c"], batch_size=2, checkpoint_every=2)
    finally:
        handle.remove()
    assert calls[0] == 2  # only the two batches after the checkpoint
    assert not partial.exists()
    for n in names:
        assert torch.equal(resumed[n], whole[n])  # the same additions in the same order


def sampled_sequences(model):
    """A context recording the token ids fed to `model` (prompt forward, then one column per step)."""
    fed = []

    def hook(mod, args, kwargs):
        fed.append(kwargs["input_ids"].detach().clone())

    return fed, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_default_corpus_samples(loaded, tmp_path):
    """The default corpus: keys summed while the model samples equal, per the definition, kkᵀ over the first
    N keys (column then row) of the sampled sequences run again in one plain forward."""
    model, tok, _ = loaded["llama"]
    names = mlp_outs(model, [0, 1])
    spec = CorpusSpec(None, 1500, 48)
    fed, handle = sampled_sequences(model)
    try:
        a = second_moments(model, tok, names, spec, "m", [tmp_path / "a"], batch_size=4)
    finally:
        handle.remove()
    b = second_moments(model, tok, names, spec, "m", [tmp_path / "b"], batch_size=1)
    for n in names:
        assert torch.equal(a[n], b[n])  # seeded per batch: the same samples, whatever the caller's batch size

    (sb, take), = samples.batches_for(tok, 1500, 48, None)  # 1500 keys: the first columns of one batch
    ids = torch.cat(fed, dim=1)  # (64, columns fed)
    assert ids.shape[0] == samples.GEN_BATCH and take == 1500
    attn = sb.valid[:, :ids.shape[1]].long()
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    assert bool((ids[~attn.bool()] == pad).all())  # left padding only where a prompt is shorter
    sampled = ids[:, sb.width:]
    assert len(set(sampled.flatten().tolist())) > 30  # sampled at temperature 1, not greedy repetition
    keys = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda mod, args, n=n: keys.__setitem__(n, args[0]))
             for n in names]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0))
    finally:
        for h in hooks:
            h.remove()
    keep = sb.keep(take)[:, :ids.shape[1]]
    assert int(keep.sum()) == 1500  # every counted column was fed, and sampling stopped after the last
    for n in names:
        k = keys[n][keep].double()
        torch.testing.assert_close(a[n], k.T @ k / 1500, rtol=1e-4, atol=1e-6)  # a KV cache rounds differently


def test_draw_samples_each_row_from_its_distribution():
    """The inverse-CDF draw: tokens of zero probability never come, frequencies follow the probabilities,
    and a seeded generator gives the same tokens again."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2], [1.0, 0.0, 0.0, 0.0, 0.0]])
    many = probs.repeat(20_000, 1)  # (40000, 5): 20,000 draws from each row
    got = samples.draw(many, torch.Generator().manual_seed(0))
    assert got.shape == (40_000, 1)
    first, second = got[0::2, 0], got[1::2, 0]
    assert bool((second == 0).all())  # a certain token always
    counts = torch.bincount(first, minlength=5) / len(first)
    assert counts[0] == 0 and counts[2] == 0  # zero probability: never
    torch.testing.assert_close(counts[[1, 3, 4]], torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)
    assert torch.equal(samples.draw(many, torch.Generator().manual_seed(0)), got)


def test_default_corpus_resumes(loaded, tmp_path):
    """Sampling batches are the checkpoint unit: an interrupted run resumes after the last whole batch
    and ends with the same sums as an uninterrupted one."""
    model, tok, _ = loaded["llama"]
    names = mlp_outs(model, [0])
    plan = samples.batches_for(tok, 6000, 48, None)
    assert len(plan) == 3 and plan[-1][1] < int(plan[-1][0].valid.sum())  # 3 batches, the last one partly counted
    spec = CorpusSpec(None, 6000, 48)
    whole = second_moments(model, tok, names, spec, "m", [tmp_path / "whole"])
    per_batch = 1 + plan[0][0].valid.shape[1] - plan[0][0].width  # the prompt's forward, then a column each
    with interrupted_at(model, per_batch + 3), pytest.raises(KeyboardInterrupt):
        second_moments(model, tok, names, spec, "m", [tmp_path / "c"], checkpoint_every=1)
    saved = load_file(stats_dir(tmp_path / "c", "m", spec) / "partial.safetensors")
    assert int(saved["rows"]) == 1 and int(saved[f"count.{names[0]}"]) == plan[0][1]
    calls, handle = count_calls(model)
    try:
        resumed = second_moments(model, tok, names, spec, "m", [tmp_path / "c"], checkpoint_every=1)
    finally:
        handle.remove()
    assert per_batch < calls[0] < 2 * per_batch  # batch 2 whole, batch 3 only to its last counted column
    assert torch.equal(resumed[names[0]], whole[names[0]])


def test_stops_after_deepest_module(loaded, corpus, tmp_path):
    model, tok, _ = loaded["llama"]
    below, above = count_calls(model.model.layers[0].mlp.up_proj), [count_calls(m) for m in
                                                                     (model.model.layers[1], model.model.norm,
                                                                      model.lm_head)]
    try:
        second_moments(model, tok, mlp_outs(model, [0]), CorpusSpec(str(corpus["txt"]), 100, 32), "m", [tmp_path])
    finally:
        for _, h in [below, *above]:
            h.remove()
    assert below[0][0] > 0
    assert [c[0] for c, _ in above] == [0, 0, 0]


@pytest.mark.parametrize("start", ["fresh", "resumed"])
def test_torchrun_two_processes_equal_one(loaded, corpus, tmp_path, start):
    """2 gloo ranks give the single-process C; "resumed": they continue a 1-process checkpoint (any world size).

    Every forward pass here has the shape (2, 32) in both runs: a row's float32 keys
    may depend on the batch's shape (BLAS kernels), which would show at ~1e-8.
    """
    model, tok, path = loaded["llama"]
    names = mlp_outs(model)
    spec = CorpusSpec(str(corpus["txt"]), 500, 32)  # 16 rows, the last of 20 tokens
    single = second_moments(model, tok, names, spec, "m", [tmp_path / "single"], batch_size=2)
    want = dict(single)
    if start == "resumed":  # a checkpoint at row 8 of a 1-process run, its sums doubled as a mark of use
        with interrupted_at(model, 5), pytest.raises(KeyboardInterrupt):
            second_moments(model, tok, names, spec, "m", [tmp_path / "dist"], batch_size=2, checkpoint_every=2)
        partial = stats_dir(tmp_path / "dist", "m", spec) / "partial.safetensors"
        tensors = load_file(partial)
        assert int(tensors["rows"]) == 8
        for n in names:
            want[n] = single[n] + tensors[f"sum.{n}"] / 500
            tensors[f"sum.{n}"] *= 2
        with safe_open(partial, "pt") as f:
            meta = f.metadata()
        save_file(tensors, partial, metadata=meta)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEMEDIT_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "memedit_cli.stats", "--model", str(path), "--layers", "0,1", "--corpus", str(corpus["txt"]),
           "--tokens", "500", "--seq-len", "32", "--batch-size", "2", "--out", str(tmp_path / "dist"),
           "--model-key", "m", "--checkpoint-every", "4"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = stats_dir(tmp_path / "dist", "m", spec)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.safetensors" for n in names)  # no partial left
    for n in names:
        saved = load_file(folder / f"{n}.safetensors")
        assert int(saved["count"]) == 500
        # equal up to summation order; atol covers entries near 0 (a relative error there means nothing)
        assert torch.allclose(saved["mom2"], want[n], rtol=1e-9, atol=1e-12 * want[n].abs().max())
