"""The default statistics corpus: text sampled from the model itself, its keys taken while it is sampled.

Temperature 1, no top-k/top-p, a fixed seed per batch, ~30 generic seed
prompts plus a bare BOS; each token drawn by the inverse CDF (`draw`).
Every forward pass of the sampling loop already computes the inputs of
every FFN projection, so the statistics are summed there (compute.py hooks
them): sampling and statistics are one pass, with a KV cache, and no text
is stored. FastMEMIT (arXiv 2506.04226) found about
2× d_k keys keep ≥ 95% of full-statistics editing, and recommends 10× d_k;
MEMIT's default here is 20× d_k tokens (docs/methods/memit.md measures 1×-30×).

Why samples are a reasonable default: C₀ only has to describe the keys the
model produces on text like what it normally sees, and the model's own
samples follow its own distribution of contexts (so of keys), with no
download and no dataset choice, on any machine, offline. Greedy decoding
would not do: it collapses into repetition, so a few directions would
dominate C₀. The weakness: samples inherit the model's biases and narrowness
(an instruct model writes chat-shaped text; a small model's text is less
diverse than real text), and C₀ from them may underweight key directions
that real documents excite; pass a real corpus (e.g. Wikipedia text) when one
is at hand. Samples are deterministic per machine (same model, same
hardware), not across hardware.

The layout, fixed so that the token count of every batch is known before it
runs (and a run of N tokens can be split over ranks or resumed): batch b
holds sequences 64b .. 64b+63, sequence j starts from seed prompt j mod 31,
prompts are left-padded to the batch's widest (w tokens), and every sequence
is sampled for seq_len − w new tokens, on past an end-of-text token, with a
generator seeded by b. The keys are those of every token fed to the model
(the prompt's and each sampled token but the last), ordered by batch, then
column, then row; the first N of them are the statistics over N tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memedit_cli.errors import UserError
from memedit_cli.lm.cache import cache_kwargs, cache_of

SEED_PROMPTS = (
    "The", "In 1998,", "Scientists", "The city of", "She said", "According to", "He was born in", "Today",
    "The company", "In the", "It is", "A new study", "The first", "When I was", "There are", "During the war,",
    "The history of", "My favorite", "This is", "One of the most", "The government", "In a statement,",
    "Once upon a time", "The game", "Researchers at", "If you", "The population of", "After the", "We",
    "The river",
)

_SAMPLE_SEED = 20240601

GEN_BATCH = 64  # sequences per sampling batch: fixed, so samples never depend on the caller's settings (64: 1.27× the
# tokens per second of 32 on SmolLM2-135M, one CPU thread; 128 gained 4% more)


def draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of probs (n, V), by the inverse of each row's CDF at one uniform draw: (n, 1).

    An exact sample of the distribution, as torch.multinomial's, at a fraction of its cost: multinomial
    draws V exponentials per row (64 × 49,152 per step on SmolLM2), which took 17 % of a sampling run's
    time on one CPU thread (docs/methods/memit.md); this draws n uniforms and takes a cumulative sum.
    `right=True`: a draw of exactly 0 lands on the first token of non-zero probability, never a zero one."""
    u = torch.rand(probs.shape[0], 1, generator=gen, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)  # float64: 49,152 float32 terms summed would drift by ~1e-4
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=probs.shape[-1] - 1)


def _seed_prompts(tok) -> list[list[int]]:
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    head = [start] if start is not None else []
    prompts = [head] + [head + tok(p, add_special_tokens=False)["input_ids"] for p in SEED_PROMPTS]
    return [p for p in prompts if p]


@dataclass(frozen=True)
class SampleBatch:
    """One sampling batch: its left-padded prompts and which of its (row, column) positions have a key."""

    index: int
    prompts: list  # GEN_BATCH token id lists
    max_new: int  # tokens sampled per sequence
    valid: torch.Tensor  # (GEN_BATCH, width + max_new - 1) bool: the positions fed to the model (not padding)

    @property
    def width(self) -> int:
        return max(len(p) for p in self.prompts)

    def keep(self, n: int) -> torch.Tensor:
        """(rows, columns) bool: the first n keys of this batch in column-then-row order."""
        flat = self.valid.T.reshape(-1)  # column-major: column 0's rows, then column 1's, ...
        kept = flat & (flat.cumsum(0) <= n)
        return kept.view(self.valid.shape[1], self.valid.shape[0]).T


def batch(tok, index: int, seq_len: int, ctx: int | None) -> SampleBatch:
    prompts = _seed_prompts(tok)
    chosen = [prompts[j % len(prompts)] for j in range(index * GEN_BATCH, (index + 1) * GEN_BATCH)]
    width = max(len(p) for p in chosen)
    max_new = min(seq_len, ctx or seq_len) - width
    if max_new < 1:
        raise UserError(f"rows of {min(seq_len, ctx or seq_len)} tokens are too short to sample the default corpus "
                        f"from prompts of {width} tokens; use a longer row length or --set mom2_corpus=FILE")
    cols = torch.arange(width + max_new - 1)
    valid = cols[None, :] >= torch.tensor([width - len(p) for p in chosen])[:, None]
    return SampleBatch(index, chosen, max_new, valid)


def batches_for(tok, tokens: int, seq_len: int, ctx: int | None) -> list[tuple[SampleBatch, int]]:
    """The batches behind `tokens` keys, each with the number of its keys counted (the last may be partial)."""
    out, left, b = [], tokens, 0
    while left > 0:
        sb = batch(tok, b, seq_len, ctx)
        take = min(left, int(sb.valid.sum()))
        out.append((sb, take))
        left -= take
        b += 1
    return out


@torch.no_grad()
def run(model, sb: SampleBatch, keep: torch.Tensor, pad: int, after_forward) -> None:
    """Sample batch `sb`; after each forward, `after_forward(mask)` gets the (rows, new columns) bool mask
    of the keys that forward computed and that count. Stops once the last counted column has been fed."""
    from memedit_cli.lm.models import input_device

    dev = input_device(model)
    gen = torch.Generator().manual_seed(_SAMPLE_SEED + sb.index)  # on CPU: the same draws on any device
    n, width = len(sb.prompts), sb.width
    last = int(keep.any(0).nonzero().max()) if keep.any() else -1  # the last column holding a counted key
    ids = torch.full((n, width), pad, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(sb.prompts):  # left-padded, positions counted from each prompt's first token
        ids[i, width - len(p):] = torch.tensor(p)
        attn[i, width - len(p):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev), use_cache=True)
    after_forward(keep[:, :width])
    for col in range(width, last + 1):  # column col holds the token sampled after column col - 1
        nxt = draw(torch.softmax(out.logits[:, -1].float(), dim=-1).cpu(), gen)  # (n, 1)
        attn = torch.cat([attn, torch.ones(n, 1, dtype=torch.long)], dim=1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev),
                    **cache_kwargs(model, cache_of(out)), use_cache=True)
        after_forward(keep[:, col:col + 1])
