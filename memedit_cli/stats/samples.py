"""The default statistics corpus: text sampled from the model itself.

Temperature 1, no top-k/top-p, a fixed seed, ~30 generic seed prompts plus a
bare BOS, in batches of a fixed size; cached next to the statistics and
extended, never regenerated, when more tokens are asked for.

Why that is a reasonable default: C₀ only has to describe the keys
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

from pathlib import Path

import torch

from memedit_cli.errors import UserError
from memedit_cli.lm.tokens import context_length
from memedit_cli.stats.store import SAMPLES_ID, samples_file, save_everywhere

SEED_PROMPTS = (
    "The", "In 1998,", "Scientists", "The city of", "She said", "According to", "He was born in", "Today",
    "The company", "In the", "It is", "A new study", "The first", "When I was", "There are", "During the war,",
    "The history of", "My favorite", "This is", "One of the most", "The government", "In a statement,",
    "Once upon a time", "The game", "Researchers at", "If you", "The population of", "After the", "We",
    "The river",
)

_SAMPLE_SEED = 20240601

_GEN_BATCH = 32  # sequences per sampling batch: fixed, so samples never depend on the caller's batch size


def model_samples(model, tok, n: int, seq_len: int, model_key: str, cache_dirs: list[Path]) -> torch.Tensor:
    """At least n token ids sampled from the model, cached (and extended) under stats/MODEL_KEY/model-samples-v1/.

    Sequence j starts from seed prompt j mod 31 (a bare BOS, then SEED_PROMPTS)
    and is sampled in batch j // 32 with a generator seeded by that batch's
    index, so a longer request extends a shorter one with the same ids as a
    fresh run. Each sample ends at EOS; samples are joined with EOS.
    """
    from safetensors.torch import save

    paths = [samples_file(d, model_key) for d in cache_dirs]
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
    save_everywhere(lacking, data)
    return state["ids"]


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
    from memedit_cli.lm.progress import bar

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
    from memedit_cli.lm.models import input_device

    dev = input_device(model)
    gen = torch.Generator().manual_seed(seed)  # on CPU: the same draws whatever device the model is on
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos or 0)
    width = max(len(p) for p in prompts)
    ctx = context_length(model)
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
