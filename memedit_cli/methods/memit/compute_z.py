"""MEMIT's target vectors z: for each fact, z = h + δ where h is block L's output
at the last subject token of the bare prompt and δ (d,) is optimized so the
model says the target over every context template, with a KL term that keeps
"{subject} is a" unchanged, weight decay, and ‖δ‖ ≤ clamp_norm_factor·‖h‖.

All facts of a pass are optimized together, each with its own δ row and its
own early stop (a fact whose loss is below v_stop_loss is frozen), so a fact's
z does not depend on which other facts share its batch: forget can reuse it.
For the same reason a batch can be optimized in passes of `z_batch` facts
with the same z (up to float rounding), and then only one pass's activations
are alive at a time: what a step keeps for its backward grows with the facts
optimized together (a 100-fact batch on the 135M model held 6.5–9.9 GB).

Fast path: block L's output and the arguments of block L+1 are computed once
(`Upper`); each step runs only blocks L+1.., the final norm, and the LM head
at the target and KL positions. The positions before a row's last subject
token are never re-run: their keys and values stay in a KV cache, each row
left-padded so that its subject token sits in the bucket's common column
(rows.left_cut). Rows are sorted by how many tokens follow that column and
cut into a few buckets, padded only to the bucket's longest remainder.
"""

from __future__ import annotations

from memedit_cli.lm.arch import arch_for
from memedit_cli.lm.nethook import capture, edit_output
from memedit_cli.lm.progress import bar
from memedit_cli.lm.upper import Upper
from memedit_cli.methods.memit import rows as rows_mod

ROWS_PER_BUCKET = 40  # more, smaller buckets pad less but pay per-call overhead in every block
MIN_BUCKETS, MAX_BUCKETS = 4, 16


class _Bucket:
    """Rows of similar length, trimmed to their own width, with what the loss needs."""

    def __init__(self, model, layer, rows, idx, fast: bool, prefix_cache: bool):
        import torch

        self.idx = idx  # (b,) global row numbers
        self.fact = rows.fact[idx]
        self.upper = None
        if fast and prefix_cache:  # each row cut at its own subject token: columns < c go to a KV cache
            self.ids, self.attn, pos, labels, c = rows_mod.left_cut(rows, idx)
            lookup = torch.full_like(idx, c)
            self.upper = Upper(model, layer, self.ids, self.attn, start=c, position_ids=pos)
        else:  # right-padded rows, every position run
            width = int(rows.attention_mask[idx].sum(1).max())
            self.ids, self.attn = rows.input_ids[idx, :width], rows.attention_mask[idx, :width]
            labels, lookup = rows.labels[idx, :width], rows.lookup[idx]
            if fast:
                self.upper = Upper(model, layer, self.ids, self.attn)
        start = self.upper.start if self.upper is not None else 0  # 0 where the model has no croppable KV cache
        self.lookup = lookup - start  # (b,) positions from here on count from `start`
        labels = labels[:, start:]
        self.lab_r, self.lab_c = (labels != -100).nonzero(as_tuple=True)  # scored positions
        self.lab_tok = labels[self.lab_r, self.lab_c]
        self.kl = rows.kl[idx].nonzero(as_tuple=True)[0]  # local rows holding a KL prompt
        if fast:
            self.h0 = self.upper.h  # (b, width - start, d)
        else:
            name = arch_for(model.config).layer(layer)
            with torch.no_grad(), capture(model, outputs=[name]) as seen:
                model(input_ids=self.ids, attention_mask=self.attn, use_cache=False)
            self.h0 = seen[f"out:{name}"].detach()

    def outputs(self, model, block, delta):
        """(target rows (m, ·), KL rows (k, ·)) with each row's δ added at its lookup: final
        hidden states (d) on the fast path, whose LM head runs once for all buckets; logits (V)
        from the whole model otherwise."""
        import torch

        b = len(self.idx)
        add = torch.zeros(self.h0.shape, dtype=delta.dtype, device=delta.device)
        add = add.index_put((torch.arange(b, device=delta.device), self.lookup), delta[self.fact])
        if self.upper is not None:
            hidden = self.upper.final_hidden(self.h0 + add.to(self.h0))  # h0 on block L's device and dtype
            return hidden[self.lab_r, self.lab_c], hidden[self.kl, self.lookup[self.kl]]
        with edit_output(block, lambda h: h + add.to(h)):
            logits = model(input_ids=self.ids, attention_mask=self.attn, use_cache=False).logits
        return logits[self.lab_r, self.lab_c], logits[self.kl, self.lookup[self.kl]]


def compute_z(model, tok, facts, hp, layer: int, templates, device, prefix_cache: bool = True):
    """Returns (z (n, d) float32, info dict), the facts optimized in passes of `hp.z_batch` (0: all at once).
    `prefix_cache=False` re-runs every position above L at each step (for benchmarks/memit_eval.py's comparison)."""
    import torch

    size = hp.z_batch or len(facts)
    passes = [_one_pass(model, tok, facts[i:i + size], hp, layer, templates, device, prefix_cache)
              for i in range(0, len(facts), size)]
    if len(passes) == 1:
        return passes[0]
    infos = [info for _, info in passes]
    counts = [min(size, len(facts) - i) for i in range(0, len(facts), size)]
    mean = lambda key: round(sum(i[key] * c for i, c in zip(infos, counts)) / len(facts), 6)  # noqa: E731
    info = {"z_steps": max(i["z_steps"] for i in infos), "z_loss_max": max(i["z_loss_max"] for i in infos),
            "z_loss_mean": mean("z_loss_mean"), "z_reached": sum(i["z_reached"] for i in infos),
            "z_fact_steps_mean": round(mean("z_fact_steps_mean"), 2),
            "z_tokens_per_step": max(i["z_tokens_per_step"] for i in infos), "z_passes": len(passes)}
    return torch.cat([z for z, _ in passes]), info


def _one_pass(model, tok, facts, hp, layer: int, templates, device, prefix_cache: bool):
    """compute_z for facts optimized together."""
    import torch

    rows = rows_mod.build(tok, facts, templates, device)
    n, B = len(facts), rows.input_ids.shape[0]
    if hp.z_fast_path:  # rows sorted by the tokens from the subject on (what a step runs); equal-count buckets
        width = rows.input_ids.shape[1]
        order = ((rows.attention_mask.sum(1) - rows.lookup) * width + rows.lookup).argsort(stable=True)
        count = min(B, max(MIN_BUCKETS, min(MAX_BUCKETS, B // ROWS_PER_BUCKET)))
        groups = [g for g in order.tensor_split(count) if len(g)]
    else:  # the straightforward loop: one padded batch through the whole model
        groups = [torch.arange(B, device=device)]
    buckets = [_Bucket(model, layer, rows, g, hp.z_fast_path, prefix_cache) for g in groups]
    block = model.get_submodule(arch_for(model.config).layer(layer))

    tokens_per_row = (rows.labels != -100).sum(1).clamp(min=1)  # (B,)
    target_rows = ~rows.kl
    templates_per_fact = torch.bincount(rows.fact[target_rows], minlength=n)  # (n,)
    h_init = torch.zeros(n, buckets[0].h0.shape[-1], device=device)  # (n, d): block L at the bare prompt
    for bk in buckets:
        for j in range(len(bk.idx)):
            g = int(bk.idx[j])
            if target_rows[g] and (g == 0 or rows.fact[g - 1] != rows.fact[g]):  # a fact's first row: template "{}"
                h_init[rows.fact[g]] = bk.h0[j, bk.lookup[j]].float()
    max_norm = hp.clamp_norm_factor * h_init.norm(dim=1)  # (n,)
    lab_tok = torch.cat([bk.lab_tok for bk in buckets])  # (M,) target tokens, bucket by bucket
    lab_row = torch.cat([bk.idx[bk.lab_r] for bk in buckets])  # (M,) their global rows
    kl_order = torch.cat([bk.fact[bk.kl] for bk in buckets]).argsort()  # KL rows -> fact order

    delta = torch.zeros_like(h_init, requires_grad=True)  # (n, d)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    done_at = torch.full((n,), -1, dtype=torch.long, device=device)  # the step at which each fact froze
    init_kl, last, steps = None, None, 0
    for step in bar(range(hp.v_num_grad_steps), desc=f"memit z: {n} fact(s)", unit="step"):
        parts = [bk.outputs(model, block, delta) for bk in buckets]
        tgt, kl_out = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])  # (M, ·), (n, ·)
        if hp.z_fast_path:  # one LM head call: its (V, d) weight is read once per step, not once per bucket
            logits = buckets[0].upper.logits(torch.cat([tgt, kl_out]))
            tgt, kl_out = logits[: len(tgt)], logits[len(tgt):]
        logp = torch.log_softmax(tgt.float(), -1).gather(1, lab_tok[:, None]).squeeze(1)  # (M,)
        row_nll = torch.zeros(B, device=device).index_add(0, lab_row, -logp)
        kl_logp = torch.log_softmax(kl_out.float(), -1)[kl_order]  # (n, V), fact order
        row_nll = row_nll / tokens_per_row
        nll = (torch.zeros(n, device=device).index_add(0, rows.fact[target_rows], row_nll[target_rows])
               / templates_per_fact)
        if init_kl is None:
            init_kl = kl_logp.detach()
        kl = kl_term(init_kl, kl_logp, hp.kl_direction)
        wd = hp.v_weight_decay * delta.norm(dim=1) / h_init.norm(dim=1) ** 2
        loss = nll + hp.kl_factor * kl + wd  # (n,)
        last, steps = loss.detach(), step + 1
        done |= last < hp.v_stop_loss
        done_at[done & (done_at < 0)] = step
        if bool(done.all()) or step == hp.v_num_grad_steps - 1:
            break
        frozen = delta.detach().clone()
        opt.zero_grad()
        (loss * (~done)).sum().backward()
        opt.step()
        with torch.no_grad():
            delta[done] = frozen[done]  # Adam's momentum must not move a finished fact
            scale = (max_norm / delta.norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
            delta.mul_(scale[:, None])
    z = (h_init + delta.detach()).float()
    info = {"z_steps": steps, "z_loss_max": round(float(last.max()), 6), "z_loss_mean": round(float(last.mean()), 6),
            "z_reached": int(done.sum()),
            # forward passes a fact needed before it froze (or all): what a loop that drops frozen rows would run
            "z_fact_steps_mean": round(float(torch.where(done_at >= 0, done_at + 1, steps).float().mean()), 2),
            "z_tokens_per_step": sum(bk.h0.shape[0] * bk.h0.shape[1] for bk in buckets)}
    return z, info


def kl_term(init_logp, logp, direction: str):
    """Per-fact KL on the "{subject} is a" prompt from log-probabilities (n, V).

    "reference": KL(current ‖ initial), what kmeng01/memit's
    `kl_div(kl_distr_init, kl_log_probs, log_target=True)` computes (torch's
    kl_div(input, target) is KL(target ‖ input)); "reverse": KL(initial ‖ current).
    """
    if direction == "reference":
        return (logp.exp() * (logp - init_logp)).sum(1)
    return (init_logp.exp() * (init_logp - logp)).sum(1)
