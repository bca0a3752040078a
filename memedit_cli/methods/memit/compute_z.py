"""MEMIT's target vectors z: for each fact, z = h + δ where h is block L's output
at the last subject token of the bare prompt and δ (d,) is optimized so the
model says the target over every context template, with a KL term that keeps
"{subject} is a" unchanged, weight decay, and ‖δ‖ ≤ clamp_norm_factor·‖h‖.

All facts of a batch are optimized together, each with its own δ row and its
own early stop (a fact whose loss is below v_stop_loss is frozen), so a fact's
z does not depend on which other facts share its batch: forget can reuse it.

Fast path: block L's output and the arguments of block L+1 are computed once
(`Upper`); each step runs only blocks L+1.., the final norm, and the LM head
at the target and KL positions.
"""

from __future__ import annotations

from memedit_cli.arch import arch_for
from memedit_cli.methods.memit import rows as rows_mod
from memedit_cli.nethook import capture, edit_output
from memedit_cli.progress import bar
from memedit_cli.upper import Upper


def compute_z(model, tok, facts, hp, layer: int, templates, device):
    """Returns (z (n, d) float32, info dict)."""
    import torch

    rows = rows_mod.build(tok, facts, templates, device)
    n = len(facts)
    B = rows.input_ids.shape[0]
    row_idx = torch.arange(B, device=device)
    label_mask = rows.labels != -100  # (B, T)
    lab_r, lab_c = label_mask.nonzero(as_tuple=True)  # positions whose prediction is scored
    lab_tok = rows.labels[lab_r, lab_c]
    kl_rows = row_idx[rows.kl]
    tgt_rows = row_idx[~rows.kl]
    tokens_per_row = label_mask.sum(1).clamp(min=1)  # (B,)
    templates_per_fact = torch.bincount(rows.fact[tgt_rows], minlength=n)  # (n,)

    block = model.get_submodule(arch_for(model.config).layer(layer))
    if hp.z_fast_path:
        upper = Upper(model, layer, rows.input_ids, rows.attention_mask)
        h0 = upper.h  # (B, T, d)
    else:
        upper = None
        name = arch_for(model.config).layer(layer)
        with torch.no_grad(), capture(model, outputs=[name]) as seen:
            model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, use_cache=False)
        h0 = seen[f"out:{name}"].detach()
    first_row = torch.zeros(n, dtype=torch.long, device=device)
    for b in reversed(tgt_rows.tolist()):  # each fact's first row is its bare prompt ("{}")
        first_row[rows.fact[b]] = b
    h_init = h0[first_row, rows.lookup[first_row]].float()  # (n, d)
    max_norm = hp.clamp_norm_factor * h_init.norm(dim=1)  # (n,)

    delta = torch.zeros_like(h_init, requires_grad=True)  # (n, d)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    init_kl = None
    steps = 0
    last = None
    for step in bar(range(hp.v_num_grad_steps), desc=f"memit z: {n} fact(s)", unit="step"):
        add = torch.zeros(h0.shape, dtype=delta.dtype, device=device)
        add = add.index_put((row_idx, rows.lookup), delta[rows.fact])  # δ at each row's last subject token
        if upper is not None:
            hidden = upper.final_hidden(h0 + add.to(h0.dtype))
            tgt_logits = upper.logits(hidden[lab_r, lab_c])  # (m, V): only where the loss looks
            kl_logits = upper.logits(hidden[kl_rows, rows.lookup[kl_rows]])  # (n, V)
        else:
            with edit_output(block, lambda h: h + add.to(h.dtype)):
                logits = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, use_cache=False).logits
            tgt_logits = logits[lab_r, lab_c]
            kl_logits = logits[kl_rows, rows.lookup[kl_rows]]
        logp = torch.log_softmax(tgt_logits.float(), -1).gather(1, lab_tok[:, None]).squeeze(1)  # (m,)
        row_nll = torch.zeros(B, device=device).index_add(0, lab_r, -logp) / tokens_per_row  # (B,)
        nll = torch.zeros(n, device=device).index_add(0, rows.fact[tgt_rows], row_nll[tgt_rows]) / templates_per_fact
        kl_logp = torch.log_softmax(kl_logits.float(), -1)  # (n, V), in fact order
        if init_kl is None:
            init_kl = kl_logp.detach()
        kl = (init_kl.exp() * (init_kl - kl_logp)).sum(1)  # KL(initial ‖ current) per fact
        wd = hp.v_weight_decay * delta.norm(dim=1) / h_init.norm(dim=1) ** 2
        loss = nll + hp.kl_factor * kl + wd  # (n,)
        last = loss.detach()
        steps = step + 1
        done |= last < hp.v_stop_loss
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
            "z_reached": int(done.sum())}
    return z, info

