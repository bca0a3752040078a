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
  once every named module has seen its input the last hook raises `_Stop`, so
  the blocks above the deepest module (and the LM head) never run.
- Cache. One safetensors file per module, `mom2` (the mean) and `count`, at
  `DIR/stats/MODEL_KEY/SPEC_KEY/MODULE.safetensors`, looked up in every dir of
  `cache_dirs` in order and written to all of them, so repositories of one
  model share what any of them computed.
- Resume. Every `checkpoint_every` rows (default: by time, at least 20 s apart
  and at most ~10% of the time spent writing) the running sums go to
  `partial.safetensors` in the spec's folder of the first cache dir. A rerun of
  the same spec continues from it and gets the same sums, bit for bit, as an
  uninterrupted run with the same batch size.
- Distributed. Under an initialized torch.distributed group of W ranks, rank r
  takes rows r, r + W, ...; sums are all-reduced; rank 0 alone reads and writes
  files and every rank returns the same result (see stats_main.py for torchrun).

The default corpus (spec.path None) is text sampled from the model itself
(temperature 1, no top-k/top-p, a fixed seed, ~30 generic seed prompts plus a
bare BOS). Why that is a reasonable default: C₀ only has to describe the keys
the model produces on text like what it normally sees, and the model's own
samples follow its own distribution of contexts (so of keys), with no download
and no dataset choice, on any machine, offline. Greedy decoding would not do:
it collapses into repetition, so a few directions would dominate C₀. The
weakness: samples inherit the model's biases and narrowness (an instruct model
writes chat-shaped text; a small model's text is less diverse than real text),
and C₀ from them may underweight key directions that real documents excite;
pass a real corpus (e.g. Wikipedia text) when one is at hand. Samples are
deterministic per machine (same model, same hardware), not across hardware.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from memedit_cli.errors import UserError
from memedit_cli.fileio import write_atomic

SAMPLES_ID = "model-samples-v1"
SEED_PROMPTS = (
    "The", "In 1998,", "Scientists", "The city of", "She said", "According to", "He was born in", "Today",
    "The company", "In the", "It is", "A new study", "The first", "When I was", "There are", "During the war,",
    "The history of", "My favorite", "This is", "One of the most", "The government", "In a statement,",
    "Once upon a time", "The game", "Researchers at", "If you", "The population of", "After the", "We",
    "The river",
)
_SAMPLE_SEED = 20240601
_GEN_BATCH = 32  # sequences per sampling batch: fixed, so samples never depend on the caller's batch size
_CHECKPOINT_MIN_S = 20.0


@dataclass(frozen=True)
class CorpusSpec:
    """What the statistics are computed over."""

    path: str | None  # .txt (documents split on blank lines) or .jsonl/.json ({"text": ...} per line); None: model samples
    tokens: int  # number of tokens to accumulate
    seq_len: int = 256  # tokens per row

    def __post_init__(self):
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise UserError(f"the statistics corpus needs tokens >= 1, got {self.tokens!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise UserError(f"the statistics corpus needs seq_len >= 1, got {self.seq_len!r}")

    def key(self) -> str:
        """Stable id: the corpus (file content hash, or the sampling scheme), tokens and row length."""
        source = _file_digest(self.path)[:16] if self.path is not None else SAMPLES_ID
        return f"{source}-t{self.tokens}-s{self.seq_len}"


def stats_dir(cache_dir: Path, model_key: str, spec: CorpusSpec) -> Path:
    return Path(cache_dir) / "stats" / model_key / spec.key()


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
    rank, world = _dist_info()
    spec_dirs = [stats_dir(d, model_key, spec) for d in cache_dirs]

    # rank 0 decides what is cached and what to compute; the other ranks follow its plan
    plan = None
    if rank == 0:
        cached, present = {}, {}
        for name in names:
            for sd in spec_dirs:
                mom2 = _load_mom2(sd / f"{name}.safetensors", spec.tokens)
                if mom2 is not None:
                    cached[name] = mom2
                    present.setdefault(name, set()).add(sd)
        missing = [n for n in names if n not in cached]
        resume = _find_partial(spec_dirs, spec, missing) if missing else None
        plan = {"cached": cached, "missing": missing, "resume": resume}
    plan = _broadcast_object(plan, rank, world)
    results = dict(plan["cached"])

    if plan["missing"]:
        resume = plan["resume"]
        todo = resume["modules"] if resume else plan["missing"]
        computed = _compute(model, tok, todo, spec, model_key, cache_dirs, batch_size, checkpoint_every,
                            resume, rank, world)
        results.update(computed)
        if rank == 0:
            for name, mom2 in computed.items():
                _save_everywhere([sd / f"{name}.safetensors" for sd in spec_dirs], _mom2_bytes(mom2, spec, name))
            for sd in spec_dirs:
                (sd / "partial.safetensors").unlink(missing_ok=True)
    if rank == 0:  # a copy of what another cache dir held, so each dir has everything
        for name in plan["cached"]:
            lacking = [sd / f"{name}.safetensors" for sd in spec_dirs if sd not in present[name]]
            if lacking:
                _save_everywhere(lacking, _mom2_bytes(results[name], spec, name))
    if world > 1:
        torch.distributed.barrier()
    return {name: results[name] for name in module_names}


def cached_moments(module_names: list[str], spec: CorpusSpec, model_key: str, cache_dirs: list[Path]) -> dict | None:
    """All of `module_names`' results from the cache, or None if any is missing (needs no model)."""
    out = {}
    for name in module_names:
        for d in cache_dirs:
            mom2 = _load_mom2(stats_dir(Path(d), model_key, spec) / f"{name}.safetensors", spec.tokens)
            if mom2 is not None:
                out[name] = mom2
                break
        else:
            return None
    return out


# -- the computation ----------------------------------------------------------


class _Stop(Exception):
    """Raised by the last input hook of a forward pass: nothing above it is needed."""


@contextlib.contextmanager
def _input_hooks(model, names: list[str], on_input):
    """Inside the block, `on_input(name, x)` sees each named module's input; once all have, the forward stops.

    A forward pass that reaches every module raises `_Stop` from the pre-hook of
    the last one (the deepest in execution order), before that module runs.
    """
    seen: set[str] = set()

    def make(name):
        def hook(mod, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            on_input(name, x)
            seen.add(name)
            if len(seen) == len(names):
                seen.clear()
                raise _Stop
        return hook

    seen.clear()
    handles = []
    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_pre_hook(make(name), with_kwargs=True))
        yield seen
    finally:
        for h in handles:
            h.remove()


def _in_features(module) -> int:
    from memedit_cli.arch import is_transposed

    if isinstance(getattr(module, "in_features", None), int):
        return module.in_features
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2:
        return weight.shape[0] if is_transposed(module) else weight.shape[1]
    raise UserError(f"cannot tell the input width of {type(module).__name__}; second moments need a Linear-like module")


def _compute(model, tok, names, spec, model_key, cache_dirs, batch_size, checkpoint_every, resume, rank, world):
    from memedit_cli.models import input_device
    from memedit_cli.progress import bar
    from memedit_cli.tokens import context_length

    ctx = context_length(model)
    if ctx is not None and spec.seq_len > ctx:
        raise UserError(f"seq_len {spec.seq_len} is longer than the model's context of {ctx}")
    modules = {}
    for name in names:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            raise UserError(f"the model has no module {name!r}") from None
    stream = _token_stream(model, tok, spec, model_key, cache_dirs, rank, world)
    seq, n_rows = spec.seq_len, math.ceil(spec.tokens / spec.seq_len)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    dev = input_device(model)

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
            saved = _load_partial(resume["path"])
            for name in names:
                sums[name].copy_(saved[f"sum.{name}"])
                counts[name] = int(saved[f"count.{name}"])

    mask_now = {}

    def on_input(name, x):
        d = x.shape[-1]
        flat = x.reshape(-1, d)
        m = mask_now["flat"]
        if flat.shape[0] != m.shape[0]:
            raise UserError(f"the input of {name} has {flat.shape[0]} positions, not batch × length = {m.shape[0]}")
        if not mask_now["full"]:
            flat = flat[m.to(flat.device)]
        k = flat.to(sums[name].device, torch.float64)
        sums[name].addmm_(k.T, k)
        counts[name] += k.shape[0]

    partial_path = stats_dir(cache_dirs[0], model_key, spec) / "partial.safetensors" if cache_dirs else None
    step = batch_size * world
    last_ckpt_rows, last_ckpt_t, interval = start, time.monotonic(), _CHECKPOINT_MIN_S
    was_training = model.training
    model.eval()
    progress = bar(total=spec.tokens, desc="second moments", unit="tok") if rank == 0 else contextlib.nullcontext()
    try:
        with progress, torch.no_grad(), _input_hooks(model, names, on_input) as seen:
            if rank == 0:
                progress.update(min(start * seq, spec.tokens))
            for g0 in range(start, n_rows, step):
                mine = list(range(g0 + rank, min(g0 + step, n_rows), world))
                if mine:
                    ids, attn = _batch(stream, mine, seq, pad)
                    mask_now["flat"], mask_now["full"] = attn.reshape(-1).bool(), bool(attn.all())
                    seen.clear()
                    try:
                        model(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False)
                    except _Stop:
                        pass
                    else:
                        never = sorted(set(names) - seen)
                        raise UserError(f"the forward pass never called {', '.join(never)}; cannot take its input statistics")
                done = min(g0 + step, n_rows)
                if rank == 0:
                    progress.update(min(done * seq, spec.tokens) - g0 * seq)
                if done >= n_rows or partial_path is None:
                    continue
                if checkpoint_every is not None:
                    due = done - last_ckpt_rows >= checkpoint_every
                else:
                    due = _agree(time.monotonic() - last_ckpt_t >= interval, rank, world)
                if due:
                    t0 = time.monotonic()
                    _checkpoint(partial_path, sums, counts, done, spec, rank, world)
                    last_ckpt_rows, last_ckpt_t = done, time.monotonic()
                    interval = max(_CHECKPOINT_MIN_S, 10 * (last_ckpt_t - t0))
    finally:
        model.train(was_training)

    if world > 1:
        for name in names:
            _all_reduce(sums[name])
        total = torch.tensor([counts[n] for n in names], dtype=torch.float64)
        _all_reduce(total)
        counts = {n: int(c) for n, c in zip(names, total.tolist())}
    out = {}
    for name in names:
        if counts[name] != spec.tokens:  # a bug, not bad input: every token is counted exactly once
            raise RuntimeError(f"{name}: counted {counts[name]} tokens, expected {spec.tokens}")
        out[name] = (sums[name] / counts[name]).cpu()
    return out


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


# -- the corpus -----------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_digest(path: str) -> str:
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise UserError(f"cannot read the statistics corpus {path}: {e.strerror}") from None
    if not p.is_file():
        raise UserError(f"the statistics corpus {path} is not a file")
    return _digest_of(str(p.resolve()), st.st_size, st.st_mtime_ns)


def _documents(path: str):
    """The corpus's documents in file order: JSONL "text" fields, or blank-line separated paragraphs."""
    p = Path(path).expanduser()
    with open(p, encoding="utf-8", errors="replace") as f:
        if p.suffix.lower() in (".jsonl", ".json"):
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not a JSON object ({e.msg}); a JSONL corpus has one "
                                    '{"text": ...} per line') from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise UserError(f'{path}:{lineno}: expected an object with a string "text" field')
                if obj["text"].strip():
                    yield obj["text"]
        else:
            lines = []
            for line in f:
                if line.strip():
                    lines.append(line)
                elif lines:
                    yield "".join(lines).strip("\n")
                    lines = []
            if lines:
                yield "".join(lines).strip("\n")


def _corpus_tokens(tok, path: str, n: int) -> torch.Tensor:
    """The first n tokens of the corpus's documents, each followed by EOS."""
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    out, total, pending = [], 0, []

    def flush():
        nonlocal total
        for ids in tok(pending, add_special_tokens=False)["input_ids"]:
            out.append(torch.tensor(ids + eos, dtype=torch.long))
            total += len(ids) + len(eos)
        pending.clear()

    for doc in _documents(path):
        pending.append(doc)
        if len(pending) == 64:
            flush()
            if total >= n:
                break
    if pending and total < n:
        flush()
    if total < n:
        raise UserError(f"the statistics corpus {path} has {total} tokens; {n} were asked for. "
                        "Give a larger corpus or fewer tokens")
    return torch.cat(out)[:n]


def _token_stream(model, tok, spec, model_key, cache_dirs, rank, world) -> torch.Tensor:
    """spec.tokens token ids (CPU, int64), the same on every rank (built on rank 0, then broadcast)."""
    stream, error = None, None
    if rank == 0:
        try:
            if spec.path is None:
                stream = _model_samples(model, tok, spec.tokens, spec.seq_len, model_key, cache_dirs)[:spec.tokens]
            else:
                stream = _corpus_tokens(tok, spec.path, spec.tokens)
        except UserError as e:
            if world == 1:
                raise
            error = e
    if world > 1:
        error = _broadcast_object(error, rank, world)  # every rank fails alike, none waits forever
        if error is not None:
            raise error
        buf = stream.clone() if rank == 0 else torch.empty(spec.tokens, dtype=torch.long)
        buf = buf.to(_coll_device())
        torch.distributed.broadcast(buf, 0)
        stream = buf.cpu()
    return stream


def _model_samples(model, tok, n: int, seq_len: int, model_key: str, cache_dirs: list[Path]) -> torch.Tensor:
    """At least n token ids sampled from the model, cached (and extended) under stats/MODEL_KEY/model-samples-v1/.

    Sequence j starts from seed prompt j mod 31 (a bare BOS, then SEED_PROMPTS)
    and is sampled in batch j // 32 with a generator seeded by that batch's
    index, so a longer request extends a shorter one with the same ids as a
    fresh run. Each sample ends at EOS; samples are joined with EOS.
    """
    from safetensors.torch import save

    paths = [Path(d) / "stats" / model_key / SAMPLES_ID / "samples.safetensors" for d in cache_dirs]
    found = [(p, _load_samples(p)) for p in paths]
    usable = [(p, s) for p, s in found if s is not None]
    base = next(((p, s) for p, s in usable if s["ids"].numel() >= n), None)
    if base is None and usable:
        base = max(usable, key=lambda ps: ps[1]["ids"].numel())
    if base is not None:
        state = base[1]
    else:
        state = {"ids": torch.zeros(0, dtype=torch.long), "sequences": 0, "max_new_tokens": seq_len}
    if state["ids"].numel() < n:
        state = _extend_samples(model, tok, state, n)
    data = save({"ids": state["ids"].contiguous(), "count": torch.tensor(state["ids"].numel(), dtype=torch.int64),
                 "sequences": torch.tensor(state["sequences"], dtype=torch.int64)},
                metadata={"format": SAMPLES_ID, "max_new_tokens": str(state["max_new_tokens"]),
                          "batch": str(_GEN_BATCH), "seed": str(_SAMPLE_SEED)})
    lacking = [p for p, s in found if s is None or s["ids"].numel() < state["ids"].numel()]
    _save_everywhere(lacking, data)
    return state["ids"]


def _context(model) -> int | None:
    from memedit_cli.tokens import context_length

    return context_length(model)


def _load_samples(path: Path):
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != SAMPLES_ID or meta.get("batch") != str(_GEN_BATCH) \
                    or meta.get("seed") != str(_SAMPLE_SEED):
                return None
            ids, count, seqs = f.get_tensor("ids"), int(f.get_tensor("count")), int(f.get_tensor("sequences"))
            if ids.dtype != torch.long or ids.dim() != 1 or ids.numel() != count:
                return None
            return {"ids": ids, "sequences": seqs, "max_new_tokens": int(meta["max_new_tokens"])}
    except Exception:  # unreadable or foreign: regenerate rather than fail
        return None


def _seed_prompts(tok) -> list[list[int]]:
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    head = [start] if start is not None else []
    prompts = [head] + [head + tok(p, add_special_tokens=False)["input_ids"] for p in SEED_PROMPTS]
    return [p for p in prompts if p]


def _extend_samples(model, tok, state: dict, n: int) -> dict:
    from memedit_cli.progress import bar

    prompts = _seed_prompts(tok)
    eos = tok.eos_token_id
    pieces, total, seqs = [state["ids"]], state["ids"].numel(), state["sequences"]
    was_training = model.training
    model.eval()
    try:
        with bar(total=n, desc="sampling the default corpus", unit="tok") as progress:
            progress.update(total)
            while total < n:
                batch = seqs // _GEN_BATCH
                chosen = [prompts[j % len(prompts)] for j in range(seqs, seqs + _GEN_BATCH)]
                for sample in _sample_batch(model, tok, chosen, state["max_new_tokens"], _SAMPLE_SEED + batch):
                    if eos is not None and sample[0] == eos:  # BOS is EOS (GPT-2): the next sample's start separates
                        sample = sample[:-1] if len(sample) > 1 and sample[-1] == eos else sample
                    elif eos is not None and sample[-1] != eos:
                        sample = sample + [eos]
                    pieces.append(torch.tensor(sample, dtype=torch.long))
                    total += len(sample)
                    progress.update(len(sample))
                seqs += _GEN_BATCH
    finally:
        model.train(was_training)
    return {"ids": torch.cat(pieces), "sequences": seqs, "max_new_tokens": state["max_new_tokens"]}


@torch.no_grad()
def _sample_batch(model, tok, prompts: list[list[int]], max_new: int, seed: int) -> list[list[int]]:
    """Prompt + sampled continuation (temperature 1, full distribution) of each prompt, up to EOS."""
    from memedit_cli.models import input_device

    dev = input_device(model)
    gen = torch.Generator().manual_seed(seed)  # on CPU: the same draws whatever device the model is on
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos or 0)
    width = max(len(p) for p in prompts)
    ctx = _context(model)
    if ctx is not None:
        max_new = min(max_new, ctx - width)
    if max_new < 1:
        raise UserError(f"the model's context ({ctx}) is too short to sample the default corpus")
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left-padded, positions counted from each prompt's first token
        ids[i, width - len(p):] = torch.tensor(p)
        attn[i, width - len(p):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev), use_cache=True)
    alive = torch.ones(len(prompts), dtype=torch.bool)
    samples = [list(p) for p in prompts]
    for _ in range(max_new):
        probs = torch.softmax(out.logits[:, -1].float(), dim=-1).cpu()
        nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        for i in alive.nonzero().flatten().tolist():
            samples[i].append(int(nxt[i]))
        if eos is not None:
            alive &= nxt != eos
        if not alive.any():
            break
        attn = torch.cat([attn, torch.ones(len(prompts), 1, dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt[:, None].to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev),
                    past_key_values=out.past_key_values, use_cache=True)
    return samples


# -- files ----------------------------------------------------------------------


def _mom2_bytes(mom2: torch.Tensor, spec: CorpusSpec, name: str) -> bytes:
    from safetensors.torch import save

    return save({"mom2": mom2.contiguous(), "count": torch.tensor(spec.tokens, dtype=torch.int64)},
                metadata={"format": "memedit-mom2-v1", "module": name, "corpus": spec.key()})


def _load_mom2(path: Path, tokens: int) -> torch.Tensor | None:
    """The cached mean, or None when absent, unreadable, or not over `tokens` tokens (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        t = load_file(str(path))
        mom2, count = t["mom2"], int(t["count"])
    except Exception:
        return None
    if mom2.dtype != torch.float64 or mom2.dim() != 2 or mom2.shape[0] != mom2.shape[1] or count != tokens:
        return None
    return mom2


def _save_everywhere(paths: list[Path], data: bytes) -> None:
    """Atomic writes to each path; a cache dir that cannot be written is reported, not fatal."""
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        except OSError as e:
            print(f"memedit: warning: cannot write {path}: {e.strerror}", file=sys.stderr)


def _checkpoint(path: Path, sums, counts, rows: int, spec, rank: int, world: int) -> None:
    """partial.safetensors: the sums and counts over global rows [0, rows), written by rank 0."""
    from safetensors.torch import save

    tensors = {}
    for name, s in sums.items():
        if world > 1:
            s = s.clone()
            _all_reduce(s)
        tensors[f"sum.{name}"] = s.cpu()
    c = torch.tensor([counts[n] for n in sums], dtype=torch.float64)
    if world > 1:
        _all_reduce(c)
    for name, v in zip(sums, c.tolist()):
        tensors[f"count.{name}"] = torch.tensor(int(v), dtype=torch.int64)
    tensors["rows"] = torch.tensor(rows, dtype=torch.int64)
    if rank == 0:
        data = save(tensors, metadata={"format": "memedit-mom2-partial-v1", "corpus": spec.key(),
                                       "modules": json.dumps(list(sums))})
        _save_everywhere([path], data)


def _find_partial(spec_dirs: list[Path], spec: CorpusSpec, missing: list[str]) -> dict | None:
    """A checkpoint of this spec covering every missing module, to resume from (first found)."""
    from safetensors import safe_open

    for sd in spec_dirs:
        path = sd / "partial.safetensors"
        if not path.is_file():
            continue
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                modules = json.loads(meta.get("modules", "[]"))
                rows = int(f.get_tensor("rows"))
        except Exception:
            continue
        if meta.get("corpus") == spec.key() and set(missing) <= set(modules) and 0 < rows:
            return {"path": str(path), "rows": rows, "modules": modules}
    return None


def _load_partial(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


# -- torch.distributed ------------------------------------------------------------


def _dist_info() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _coll_device() -> torch.device:
    """Where collective tensors live: the current CUDA device under NCCL, else CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(t: torch.Tensor) -> None:
    dev = _coll_device()
    if t.device == dev:
        torch.distributed.all_reduce(t)
    else:
        buf = t.to(dev)
        torch.distributed.all_reduce(buf)
        t.copy_(buf)


def _broadcast_object(obj, rank: int, world: int):
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _agree(flag: bool, rank: int, world: int) -> bool:
    """Rank 0's flag, on every rank (so all ranks checkpoint at the same row)."""
    if world == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=_coll_device())
    torch.distributed.broadcast(t, 0)
    return bool(t.item())
