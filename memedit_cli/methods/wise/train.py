"""Editing one WISE shard: facts one after another, SGD on the shard's delta.

A shard is a delta D = W' − W (in the base weight's layout) that may change
only inside its random mask (a fraction ρ of the entries). For each fact in
turn, D is optimized for at most `n_iter` steps on

    loss = CE(target | prompt, under every prefix)
         + routing(Δ_edit, Δ_irr; α, β, γ)

with Δ(x) = mean over positions of ‖a(x) Dᵀ‖ (a(x): the FFN activation
entering the projection) and the Δ_irr of `irrelevant_per_edit` prompts
from the unrelated pool (WISE: one), the gradient multiplied by the mask, and D clamped
to ±norm_constraint after each step. The next fact starts from the D the last
one left. Only the shard trains: its outputs replace nothing else, and other
shards (side memories) are switched off, as in WISE, so a shard depends only
on its own facts, the base model and its seeds.

Fast path: D only adds a(x) Dᵀ to block L's output, and a(x) does not depend
on D, so for each fact a(x) and block L's output are computed once (`Upper`)
and each step runs only blocks L+1.., the final norm, and the LM head at the
target positions; Δ_irr needs no forward pass at all.

With `router=keys` routing does not depend on D (router.py), so the loss is
the cross-entropy alone.
"""

from __future__ import annotations

import hashlib

import torch

from memedit_cli.lm.arch import extra_output, is_transposed
from memedit_cli.lm.nethook import add_to_output, capture, module_input
from memedit_cli.lm.progress import bar
from memedit_cli.lm.tokens import prompt_target_batch
from memedit_cli.lm.upper import Upper


def derived_seed(*parts) -> int:
    """A 63-bit seed from the apply's seed and names (fact ids): stable across forgets and runs."""
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def shard_mask(shape, ratio: float, seed: int) -> torch.Tensor:
    """The shard's Bernoulli(ratio) mask (bool, `shape`), drawn on the CPU so any device gives the same one."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) < ratio


def column_mask(shape, columns, transposed: bool) -> torch.Tensor:
    """The bool mask (`shape`, the base layout) of every weight entry that reads input features `columns`:
    columns of an nn.Linear weight (d_out, d_in), rows of a Conv1D weight (d_in, d_out)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    if transposed:
        mask[columns] = True
    else:
        mask[:, columns] = True
    return mask


def top_features(a, attn, k: int) -> set[int]:
    """mask=topk: the `k` input features one edit activates most, for its rows' activations a (B, T, d_in)
    and attention mask (B, T): the mean over real positions (bare prompt and prefixes) of |a_t| / ‖a_t‖
    (normalized per position, so a position with a huge activation, an attention sink, does not decide)."""
    with torch.no_grad():
        a = a.float()
        share = a.abs() / a.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        m = attn[..., None].to(share)
        score = (share * m).sum((0, 1)) / m.sum()  # (d_in,)
    return set(score.topk(min(k, len(score))).indices.tolist())


def activation(model, name: str, input_ids, attention_mask):
    """The input a(x) (B, T, d_in) of module `name`, running the model no further than that module."""
    return module_input(model, name, input_ids=input_ids, attention_mask=attention_mask)


def distance(extra, out, act: str | None):
    """What Δ takes the norm of per position: extra = a Dᵀ itself, or with an activation's name
    σ(out + extra) − σ(out), out the base layer's output (route_distance=activated; EasyEdit's euc)."""
    if act is None:
        return extra
    from transformers.activations import ACT2FN

    sigma = ACT2FN[act]
    return sigma(out + extra) - sigma(out)


def row_score(extra, attn, reduce: str = "mean"):
    """(B,) Δ per row: mean (or max) over real positions of ‖extra_t‖, for extra (B, T, d_out), attn (B, T)."""
    norms = extra.norm(dim=-1)
    attn = attn.to(norms.device)  # extra is on the side memory's device, which a spread model may put elsewhere
    if reduce == "max":
        return norms.masked_fill(attn == 0, 0.0).amax(1)
    m = attn.to(extra.dtype)
    return (norms * m).sum(1) / m.sum(1)


def _hinge_mean(x):
    """EasyEdit's margin terms: the mean of the positive entries (0 if none)."""
    pos = x[x > 0]
    return pos.mean() if pos.numel() else x.new_zeros(())


class EditRows:
    """One fact's rows (its prompt under every prefix), the unrelated prompts its routing
    loss pushes away (`irrelevant_per_edit` of the pool), and its loss as a function of D."""

    def __init__(self, model, tok, fact, hp, irrelevant: list[str], base, name: str, layer: int, device):
        prompts = [p.replace("{}", fact.prompt) for p in hp.prefixes]
        self.ids, self.attn, labels = prompt_target_batch(tok, prompts, [fact.target_new] * len(prompts), device)
        self.lab_r, self.lab_c = (labels != -100).nonzero(as_tuple=True)
        self.lab_tok = labels[self.lab_r, self.lab_c]
        self.per_row = torch.bincount(self.lab_r, minlength=len(prompts)).clamp(min=1)  # target tokens per row
        self.act = _act(model, hp)
        if hp.router == "activation":
            irr = tok(list(irrelevant), return_tensors="pt", padding=True)
            self.irr_attn = irr["attention_mask"].to(device)
            self.a_irr = activation(model, name, irr["input_ids"].to(device), self.irr_attn)  # (k, T', d_in)
            with torch.no_grad():
                self.out_irr = base(self.a_irr).float() if self.act else None  # (k, T', d_out)
        self.base, self.model, self.name, self.hp = base, model, name, hp
        if hp.fast_path:
            with torch.no_grad(), capture(model, inputs=[name]) as seen:
                self.upper = Upper(model, layer, self.ids, self.attn)
            self.a = seen[f"in:{name}"].detach()  # (B, T, d_in)
        else:
            self.upper = None
        self.out = None
        if self.act:  # the base layer's output on the edit's rows, for the activated distance
            with torch.no_grad():
                a = self.a if self.upper is not None else activation(model, name, self.ids, self.attn)
                self.out = base(a).float()  # (B, T, d_out)

    def loss(self, D):
        """(loss, nll, Δ_edit (B,)) for the shard delta D."""
        hp = self.hp
        if self.upper is not None:
            extra = extra_output(self.base, self.a, D)  # (B, T, d_out)
            hidden = self.upper.final_hidden(self.upper.h + extra.to(self.upper.h.dtype))
            logits = self.upper.logits(hidden[self.lab_r, self.lab_c])  # (m, V)
        else:  # the straightforward loop: the whole model, D added to the projection's output
            seen = {}

            def add(x):
                seen["extra"] = extra_output(self.base, x, D)
                return seen["extra"]

            with add_to_output(self.model.get_submodule(self.name), add):
                full = self.model(input_ids=self.ids, attention_mask=self.attn, use_cache=False).logits
            extra, logits = seen["extra"], full[self.lab_r, self.lab_c]
        logp = torch.log_softmax(logits.float(), -1).gather(1, self.lab_tok[:, None]).squeeze(1)  # (m,)
        row_nll = torch.zeros(len(self.per_row), device=logp.device).index_add(0, self.lab_r, -logp) / self.per_row
        nll = row_nll.mean()
        d_edit = row_score(distance(extra.float(), self.out, self.act), self.attn, hp.route_reduce)  # (B,)
        if hp.router == "keys":
            return nll, nll, d_edit
        extra_irr = distance(extra_output(self.base, self.a_irr, D).float(), self.out_irr, self.act)
        d_irr = row_score(extra_irr, self.irr_attn, hp.route_reduce)  # (k,)
        routing = (_hinge_mean(d_irr - hp.alpha) + _hinge_mean(hp.beta - d_edit)
                   + _hinge_mean(hp.gamma - (d_edit[:, None] - d_irr[None, :])))
        return nll + routing.to(nll.device), nll, d_edit

    def score(self, D) -> float:
        """The fact's routing score with D: Δ over its prompt rows, averaged."""
        return prompt_score(self.model, self.name, self.base, self.ids, self.attn, D, self.hp.route_reduce,
                            self.a if self.upper is not None else None, self.act)


def activation_name(config) -> str:
    """The FFN's activation function, as transformers' ACT2FN names it (LLaMA family: hidden_act; Gemma 2/3:
    hidden_activation; GPT-2/J: activation_function)."""
    for name in ("hidden_activation", "hidden_act", "activation_function"):
        if getattr(config, name, None):
            return getattr(config, name)
    return "gelu"


def _act(model, hp) -> str | None:
    """The activation's name when Δ is measured on activated outputs, else None."""
    return activation_name(model.config) if hp.route_distance == "activated" else None


def prompt_score(model, name, base, ids, attn, D, reduce: str, a=None, act: str | None = None) -> float:
    """Mean over rows of Δ (`row_score` of a(x) Dᵀ, or its activated distance; a computed here unless given)."""
    with torch.no_grad():
        a = activation(model, name, ids, attn) if a is None else a
        extra = extra_output(base, a, D).float()
        return float(row_score(distance(extra, base(a).float() if act else None, act), attn, reduce).mean())


def edit_shard(model, tok, facts, hp, seed: int, base, name: str, device):
    """Train one shard on `facts` in order. Returns (D (base layout, float32), mask (bool), columns (mask=topk:
    the input features of the mask, else None), scores (n,), info)."""
    w = base.weight
    mask_seed = derived_seed(seed, "mask", facts[0].id)

    def rows_of(fact) -> EditRows:
        gen = torch.Generator().manual_seed(derived_seed(seed, "irrelevant", fact.id))
        picks = torch.randperm(len(hp.irrelevant), generator=gen)[: hp.irrelevant_per_edit].tolist()
        return EditRows(model, tok, fact, hp, [hp.irrelevant[i] for i in picks], base, name, hp.layer, device)

    columns, first = None, None
    if hp.mask == "topk":  # the union of every edit's features, before the first step
        chosen = set()
        for fact in facts:
            rows = rows_of(fact)
            a = rows.a if rows.upper is not None else activation(model, name, rows.ids, rows.attn)
            chosen |= top_features(a, rows.attn, hp.mask_k)
            first = rows if len(facts) == 1 else None  # one edit: train on the rows just built
        columns = torch.tensor(sorted(chosen), dtype=torch.int64)
        mask = column_mask(tuple(w.shape), columns, is_transposed(base)).to(w.device)
    else:
        mask = shard_mask(tuple(w.shape), hp.mask_ratio, mask_seed).to(w.device)
    maskf = mask.to(torch.float32)
    D = torch.zeros(w.shape, dtype=torch.float32, device=w.device, requires_grad=True)
    scores, steps, losses = [], [], []
    for fact in bar(facts, desc=f"wise: {len(facts)} edit(s)", unit="edit"):
        rows = first or rows_of(fact)
        for step in range(hp.n_iter):
            loss, nll, _ = rows.loss(D)
            if loss.item() < hp.stop_loss:
                break
            D.grad = None
            loss.backward()
            with torch.no_grad():
                D -= hp.edit_lr * (D.grad * maskf + hp.weight_decay * D)
                D.clamp_(-hp.norm_constraint, hp.norm_constraint)
        steps.append(step + 1)
        losses.append(round(loss.item(), 6))
        scores.append(rows.score(D.detach()))
    if hp.threshold_from == "final":  # re-measured on the finished shard: later edits moved D
        scores = []
        for fact in facts:
            prompts = [p.replace("{}", fact.prompt) for p in hp.prefixes]
            ids, attn, _ = prompt_target_batch(tok, prompts, [fact.target_new] * len(prompts), device)
            scores.append(prompt_score(model, name, base, ids, attn, D.detach(), hp.route_reduce,
                                       act=_act(model, hp)))
    info = {"edits": len(facts), "steps": steps, "loss_last": losses}
    if columns is None:
        info["mask_seed"] = str(mask_seed)
    else:
        info["columns"] = len(columns)
    return D.detach(), mask, columns, torch.tensor(scores, dtype=torch.float32), info
