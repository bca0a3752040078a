"""Second moments C = E[k kᵀ] of the inputs k of named modules, over a text corpus, cached.

MEMIT's update for an FFN output projection W (k ↦ W k) needs C₀ = E[k kᵀ]
over "typical" text, where k is the input of W (the FFN activation, the last
dimension of the module's input for nn.Linear and GPT-2's Conv1D alike):

    second_moments(model, tok, ["model.layers.4.mlp.down_proj"], CorpusSpec("wiki.txt", 100_000),
                   model_key, [repo_cache, user_cache])  # {name: C (d, d) float64 on CPU}

How it runs:

- Rows. The corpus's documents (a .txt file split on blank lines, or JSONL with
  a "text" field) are tokenized without special tokens, concatenated with EOS
  after each, cut to exactly `spec.tokens` tokens and split into rows of
  `spec.seq_len` (the last row may be shorter). Row order is deterministic.
- Forward. Forward pre-hooks add kᵀk (float64, padding masked out) per batch;
  once every named module has seen its input the last hook raises StopForward, so
  the blocks above the deepest module (and the LM head) never run.
- Samples (no corpus: the default). The keys are summed inside the sampling
  loop, one batch of sequences per unit (samples.py: every batch's key count
  is known before it runs, so exactly `spec.tokens` are counted); the whole
  model runs, since sampling needs its logits, and no text is kept.
- Cache. One safetensors file per module, `mom2` (the mean) and `count`, at
  `DIR/stats/MODEL_KEY/SPEC_KEY/MODULE.safetensors`, looked up in every dir of
  `cache_dirs` in order and written to all of them, so repositories of one
  model share what any of them computed: once, the other dirs' files hard
  links to it where they share a file system (a copy where not).
- Resume. Every `checkpoint_every` units (rows or sampling batches; default: by time, at least 20 s apart
  and at most ~10% of the time spent writing) the running sums go to
  `partial.safetensors` in the spec's folder of the first cache dir. A rerun of
  the same spec continues from it and gets the same sums, bit for bit, as an
  uninterrupted run with the same batch size.
- Distributed. Under an initialized torch.distributed group of W ranks, rank r
  takes units r, r + W, ...; sums are all-reduced; rank 0 alone reads and writes
  files and every rank returns the same result (see __main__.py for torchrun).

Where the parts live: corpus.py (CorpusSpec; a corpus file tokenized to an
exact length), samples.py (the default corpus: text sampled from the model
itself, its layout, and why), store.py (the on-disk layout, files and
checkpoints), dist.py (torch.distributed helpers), __main__.py (the
standalone and torchrun entry), and the hooks are lm/nethook.py's.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from pathlib import Path

import torch

from memedit_cli.errors import UserError
from memedit_cli.lm.nethook import StopForward, capture, inputs_until_all
from memedit_cli.stats import samples
from memedit_cli.stats.corpus import CorpusSpec, token_stream
from memedit_cli.stats.dist import agree, all_reduce, broadcast_object, dist_info
from memedit_cli.stats.store import (
    CHECKPOINT_MIN_S,
    checkpoint,
    find_partial,
    has_mom2,
    load_mom2,
    module_file,
    mom2_bytes,
    partial_file,
    save_everywhere,
    stats_dir,
)


def second_moments(model, tok, module_names: list[str], spec: CorpusSpec, model_key: str, cache_dirs: list[Path],
                   batch_size: int = 8, checkpoint_every: int | None = None) -> dict[str, torch.Tensor]:
    """{module_name: C (d, d) float64 on CPU}: the mean of k kᵀ over exactly spec.tokens tokens.

    Computes only the modules found in none of `cache_dirs`; writes results to
    all of them (no dirs: no cache, no checkpoints). `checkpoint_every`: rows
    between resumable checkpoints (None: by time). Under torch.distributed,
    every rank must call this alike.
    """
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", model_key):
        raise ValueError(f"model_key must be a plain file name, got {model_key!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = list(dict.fromkeys(module_names))
    cache_dirs = [Path(d) for d in cache_dirs]
    rank, world = dist_info()
    spec_dirs = [stats_dir(d, model_key, spec) for d in cache_dirs]

    # rank 0 decides what is cached and what to compute; the other ranks follow its plan
    plan = None
    if rank == 0:
        # {name: C₀}, {name: the file it was read from}, {name: the dirs holding it}; each C₀ read once
        cached, source, present = {}, {}, {}
        for name in names:
            for sd in spec_dirs:
                path = module_file(sd, name)
                if name not in cached and (mom2 := load_mom2(path, spec.tokens)) is not None:
                    cached[name], source[name] = mom2, path
                    present.setdefault(name, set()).add(sd)
                elif name in cached and has_mom2(path, spec.tokens):
                    present[name].add(sd)
        missing = [n for n in names if n not in cached]
        resume = find_partial(spec_dirs, spec, missing) if missing else None
        plan = {"cached": cached, "missing": missing, "resume": resume}
    plan = broadcast_object(plan, rank, world)
    results = dict(plan["cached"])

    if plan["missing"]:
        resume = plan["resume"]
        todo = resume["modules"] if resume else plan["missing"]
        computed = _compute(model, tok, todo, spec, model_key, cache_dirs, batch_size, checkpoint_every,
                            resume, rank, world)
        results.update(computed)
        if rank == 0:
            for name, mom2 in computed.items():
                save_everywhere([module_file(sd, name) for sd in spec_dirs], mom2_bytes(mom2, spec, name))
            for sd in spec_dirs:
                partial_file(sd).unlink(missing_ok=True)
    if rank == 0:  # a copy of what another cache dir held, so each dir has everything
        for name in plan["cached"]:
            lacking = [module_file(sd, name) for sd in spec_dirs if sd not in present[name]]
            if lacking:  # hard links to the file it was read from, where the file system allows
                save_everywhere(lacking, lambda m=results[name], n=name: mom2_bytes(m, spec, n),
                                source=source[name])
    if world > 1:
        torch.distributed.barrier()
    return {name: results[name] for name in module_names}


def all_cached(module_names: list[str], spec: CorpusSpec, model_key: str, cache_dirs: list[Path]) -> bool:
    """Whether every module's C₀ is in some cache dir, from the files' headers (needs no model, reads no
    matrix: second_moments reads each one once)."""
    return all(any(has_mom2(module_file(stats_dir(d, model_key, spec), name), spec.tokens) for d in cache_dirs)
               for name in module_names)


# -- the computation ----------------------------------------------------------


def _in_features(module) -> int:
    from memedit_cli.lm.arch import is_transposed

    if isinstance(getattr(module, "in_features", None), int):
        return module.in_features
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:
        return weight.shape[0] if is_transposed(module) else weight.shape[1]
    raise UserError(f"cannot tell the input width of {type(module).__name__}; second moments need a Linear-like module")


def _compute(model, tok, names, spec, model_key, cache_dirs, batch_size, checkpoint_every, resume, rank, world):
    from memedit_cli.lm.models import input_device
    from memedit_cli.lm.progress import bar
    from memedit_cli.lm.tokens import context_length

    ctx = context_length(model)
    if ctx is not None and spec.seq_len > ctx and spec.path is not None:
        raise UserError(f"seq_len {spec.seq_len} is longer than the model's context of {ctx}")
    modules = {}
    for name in names:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"the model has no module {name!r}") from None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    dev = input_device(model)
    if spec.path is None:  # the model's samples: one unit is one sampling batch, its keys taken as it samples
        plan = samples.batches_for(tok, spec.tokens, spec.seq_len, ctx)
        n_units, step = len(plan), world
    else:  # a corpus: one unit is one row of the token stream, batch_size rows per forward
        stream = token_stream(tok, spec, rank, world)
        seq = spec.seq_len
        n_units, step = math.ceil(spec.tokens / seq), batch_size * world

    sums, counts = {}, {}
    for name, mod in modules.items():
        w = next(mod.parameters(), None)
        d = _in_features(mod)
        sums[name] = torch.zeros(d, d, dtype=torch.float64, device=w.device if w is not None else dev)
        counts[name] = 0
    start = 0
    if resume is not None:
        start = resume["rows"]
        if rank == 0:  # the partial sums are counted once, on rank 0
            from safetensors.torch import load_file

            saved = load_file(resume["path"])
            for name in names:
                sums[name].copy_(saved[f"sum.{name}"])
                counts[name] = int(saved[f"count.{name}"])

    def add(name, x, mask):
        """Adds kᵀk over the positions of x (B, T, d) where mask (B, T) is set."""
        flat = x.reshape(-1, x.shape[-1])
        m = mask.reshape(-1)
        if flat.shape[0] != m.shape[0]:
            raise UserError(f"the input of {name} has {flat.shape[0]} positions, not batch × length = {m.shape[0]}")
        if not bool(m.all()):
            flat = flat[m.to(flat.device)]
        k = flat.to(sums[name].device, torch.float64)
        sums[name].addmm_(k.T, k)
        counts[name] += k.shape[0]

    def units_done(g0: int) -> int:
        return min(g0 + step, n_units)

    def tokens_before(units: int) -> int:
        return sum(take for _, take in plan[:units]) if spec.path is None else min(units * seq, spec.tokens)

    partial_path = partial_file(stats_dir(cache_dirs[0], model_key, spec)) if cache_dirs else None
    last_ckpt_rows, last_ckpt_t, interval = start, time.monotonic(), CHECKPOINT_MIN_S
    was_training = model.training
    model.eval()
    desc = "second moments (sampling the default corpus)" if spec.path is None else "second moments"
    progress = bar(total=spec.tokens, desc=desc, unit="tok") if rank == 0 else contextlib.nullcontext()
    try:
        with progress, torch.no_grad():
            if rank == 0:
                progress.update(tokens_before(start))
            for g0 in range(start, n_units, step):
                mine = list(range(g0 + rank, units_done(g0), world))
                if spec.path is None:
                    for u in mine:
                        _sample_unit(model, names, plan[u], pad, add)
                elif mine:
                    _row_unit(model, names, stream, mine, seq, pad, dev, add)
                done = units_done(g0)
                if rank == 0:
                    progress.update(tokens_before(done) - tokens_before(g0))
                if done >= n_units or partial_path is None:
                    continue
                if checkpoint_every is not None:
                    due = done - last_ckpt_rows >= checkpoint_every
                else:
                    due = agree(time.monotonic() - last_ckpt_t >= interval, rank, world)
                if due:
                    t0 = time.monotonic()
                    checkpoint(partial_path, sums, counts, done, spec, rank, world)
                    last_ckpt_rows, last_ckpt_t = done, time.monotonic()
                    interval = max(CHECKPOINT_MIN_S, 10 * (last_ckpt_t - t0))
    finally:
        model.train(was_training)

    if world > 1:
        for name in names:
            all_reduce(sums[name])
        total = torch.tensor([counts[n] for n in names], dtype=torch.float64)
        all_reduce(total)
        counts = {n: int(c) for n, c in zip(names, total.tolist())}
    out = {}
    for name in names:
        if counts[name] != spec.tokens:  # a bug, not bad input: every token is counted exactly once
            raise RuntimeError(f"{name}: counted {counts[name]} tokens, expected {spec.tokens}")
        out[name] = (sums[name] / counts[name]).cpu()
    return out


def _row_unit(model, names, stream, rows, seq, pad, dev, add):
    """One forward over corpus rows, stopped once the deepest named module has its input."""
    ids, attn = _batch(stream, rows, seq, pad)
    mask = attn.bool()
    with inputs_until_all(model, names, lambda name, x: add(name, x, mask)) as seen:
        seen.clear()
        try:
            model(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False)
        except StopForward:
            return
    never = sorted(set(names) - seen)
    raise UserError(f"the forward pass never called {', '.join(never)}; cannot take its input statistics")


def _sample_unit(model, names, planned, pad, add):
    """One sampling batch, every named module's input summed after each forward (the whole model runs:
    sampling needs the logits)."""
    sb, take = planned
    with capture(model, inputs=names) as seen:
        def after(mask):
            for name in names:
                if f"in:{name}" not in seen:
                    raise UserError(f"the forward pass never called {name}; cannot take its input statistics")
                add(name, seen.pop(f"in:{name}"), mask)
        samples.run(model, sb, sb.keep(take), pad, after)


def _batch(stream: torch.Tensor, rows: list[int], seq: int, pad: int):
    """Right-padded input_ids and attention_mask (B, T) of the given rows of the token stream."""
    pieces = [stream[r * seq:(r + 1) * seq] for r in rows]
    width = max(p.numel() for p in pieces)
    ids = torch.full((len(pieces), width), pad, dtype=torch.long)
    attn = torch.zeros((len(pieces), width), dtype=torch.long)
    for i, p in enumerate(pieces):
        ids[i, :p.numel()] = p
        attn[i, :p.numel()] = 1
    return ids, attn
