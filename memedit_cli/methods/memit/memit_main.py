"""MEMIT (Meng et al., arXiv 2210.07229): mass editing of a band of FFN layers.

For a batch of n facts: target vectors z (compute_z.py) at block L = max(R);
then for each layer l of R in order, keys K (d_in, n) at its FFN output
projection and the residual R_l = (z − h_L) / (|R| − i) still missing at L,
and the closed-form update (float64; C₀ = E[k kᵀ] over a corpus)

    memit       ΔW_l = R_l Kᵀ (λ C₀ + K Kᵀ)⁻¹
    sequential  ΔW_l = R_l Kᵀ (λ C₀ + Kp Kpᵀ + K Kᵀ)⁻¹
    alphaedit   ΔW_l = R_l Kᵀ P (Kp Kpᵀ P + K Kᵀ P + α I)⁻¹     (arXiv 2410.02355)

where Kp are the keys of the earlier MEMIT batches in the state (stored by
each non-"memit" batch, read from the segments attached before it, so a
forget's replay sees the rebuilt ones) and P projects onto the eigenvectors
of C₀ with eigenvalue below `alphaedit_threshold`. The update is rank ≤ n and
stored factored: U = R_l (d_out, n), V (d_in, n), ΔW = U Vᵀ. With
`norm_anchor` (NAS, arXiv 2602.02543) each fact's value vector — block L's
FFN output plus δ — is rescaled to the mean norm the first batch's value
vectors had, before the solve.
"""

from __future__ import annotations

import dataclasses
import time

from memedit_cli.errors import HparamsError
from memedit_cli.lm import prefixes
from memedit_cli.lm.arch import arch_for, is_transposed, num_layers
from memedit_cli.lm.models import input_device
from memedit_cli.lm.tokens import context_length
from memedit_cli.methods.base import Footprint, WeightMethod, add_weight_deltas, weight_module
from memedit_cli.methods.memit.compute_ks import KeyReader, key_rows
from memedit_cli.methods.memit.compute_z import compute_z
from memedit_cli.methods.memit.hparams import MEMITHparams

# Per family: the band as (first block, count) scaled from the reference depth,
# and λ per key dimension: MEMIT's λ over the d_in it was tuned at. The
# regularizer's strength for a typical key is kᵀ(λC₀)⁻¹k ≈ d_in / λ, so λ must
# grow with d_in to mean the same thing; copying 15000 to a 1536-wide layer
# regularizes the update away (EasyEdit on SmolLM2-135M: Rel .25).
_FAMILY = {
    "gptj": dict(ref_depth=28, first=3, count=6, lam_per_dim=15000 / 16384),  # GPT-J 6B: layers 3-8, λ 15000
    "llama": dict(ref_depth=32, first=4, count=5, lam_per_dim=15000 / 11008),  # LLaMA-2-7B: 4-8 (EasyEdit)
    "gpt2": dict(ref_depth=48, first=13, count=5, lam_per_dim=20000 / 6400),  # GPT-2 XL: 13-17, λ 20000
}
# facts whose z are optimized together in an apply (hparams.z_batch; docs/methods/memit.md: memory and time)
Z_BATCH = 25
# C₀'s default corpus size, in keys per key dimension: FastMEMIT (arXiv 2506.04226) keeps >= 95% of
# full-statistics editing from 2× d_in keys and recommends 10×; docs/methods/memit.md measures 1×-30× here:
# on SmolLM2-135M CounterFact's Loc at 10× depended on the draw (.86, .88; .89 at 50,000 tokens), 20× was
# within .01 of 50,000 tokens on CounterFact and ZsRE.
KEYS_PER_DIM = 20
MIN_KEYS_PER_DIM = 2  # at 1 × d_in the update broke SmolLM2-135M (Rel/Gen/Loc .00/.00/.00; at 2 ×: .91/.36/.86)

# Measured for particular shapes (model_type, hidden size, blocks): docs/methods/memit.md.
MEASURED = {
    ("llama", 576, 30): dict(layers=(2, 3, 4, 5, 6), lam_per_dim=700 / 1536),  # SmolLM2-135M
}


def _d_in(model, layer: int) -> int:
    module = weight_module(model, arch_for(model.config).mlp_out_at(layer))
    return module.weight.shape[0] if is_transposed(module) else module.weight.shape[1]


def _tokens(model, layers) -> int:
    """C₀'s default token count: KEYS_PER_DIM keys per dimension of the widest key in the band."""
    return KEYS_PER_DIM * max(_d_in(model, layer) for layer in layers)


def _check_tokens(hp: MEMITHparams, model) -> None:
    width = _tokens(model, hp.layers) // KEYS_PER_DIM
    if hp.mom2_n_tokens and hp.mom2_n_tokens < MIN_KEYS_PER_DIM * width:
        raise HparamsError(f"mom2_n_tokens={hp.mom2_n_tokens} is below {MIN_KEYS_PER_DIM} × the key width "
                           f"({MIN_KEYS_PER_DIM * width}): C₀ from so few keys is near-singular and the update "
                           f"breaks the model (docs/methods/memit.md); give at least {MIN_KEYS_PER_DIM * width}, "
                           "or 0 for the default")


def _dense(module, U, V):
    """ΔW in the module's own weight layout from factors U (d_out, n), V (d_in, n)."""
    return V @ U.T if is_transposed(module) else U @ V.T


class MEMIT(WeightMethod):
    name = "memit"
    resolvable = True  # `forget --resolve`: later segments may keep their stored z (closed form only)
    hparams_class = MEMITHparams
    needs_subject = True
    measured = MEASURED

    def default_hparams(self, model) -> MEMITHparams:
        cfg = model.config
        n = num_layers(cfg)
        fam = _FAMILY[arch_for(cfg).family]
        measured = self.measured_defaults(model)
        if "layers" in measured:
            layers = measured["layers"]
        else:
            # keep at least one block above the band: z is read through the blocks above it
            first = min(max(n - 2, 0), round(fam["first"] * n / fam["ref_depth"]))
            layers = tuple(range(first, max(first + 1, min(n - 1, first + fam["count"]))))
        lam = measured.get("lam_per_dim", fam["lam_per_dim"]) * _d_in(model, layers[-1])
        return MEMITHparams(layers=layers, mom2_update_weight=round(lam, 1), mom2_n_tokens=_tokens(model, layers),
                            kl_direction="reference", z_batch=Z_BATCH)

    def resolve(self, hp: MEMITHparams, model, tok, env) -> MEMITHparams:
        n = num_layers(model.config)
        if not hp.layers or hp.layers[-1] >= n:
            raise HparamsError(f"layers must be a non-empty list of blocks between 0 and {n - 1}, "
                               f"got {list(hp.layers)}")
        _check_tokens(hp, model)  # before anything is generated or cached
        changes = {}
        if not hp.context_templates:
            changes["context_templates"] = prefixes.cached(env.load_base, hp.n_context_templates,
                                                           hp.context_template_length, env.cache_dirs, env.model_key)
        if hp.mom2_update_weight == 0 and not hp.null_space:
            changes["mom2_update_weight"] = self.default_hparams(model).mom2_update_weight
        if hp.update == "alphaedit" and hp.alphaedit_threshold == 0:
            changes["alphaedit_threshold"] = self.measured_defaults(model).get("alphaedit_threshold", 2e-2)
        if hp.mom2_n_tokens == 0:  # the log records the number
            changes["mom2_n_tokens"] = _tokens(model, hp.layers)
        return dataclasses.replace(hp, **changes)

    def _spec(self, hp: MEMITHparams, model):
        from memedit_cli.stats import CorpusSpec

        _check_tokens(hp, model)
        # rows of 256 tokens, or the whole context of a model with less
        return CorpusSpec(path=hp.mom2_corpus or None, tokens=hp.mom2_n_tokens or _tokens(model, hp.layers),
                          seq_len=min(256, context_length(model) or 256))

    def stats(self, hp: MEMITHparams, env, model) -> tuple[dict, str]:
        """(C₀ per edited layer (d_in, d_in) float64, the statistics' key), computed on the base model, cached."""
        from memedit_cli.stats import all_cached, second_moments

        spec = self._spec(hp, model)
        names = [arch_for(model.config).mlp_out_at(layer) for layer in hp.layers]
        if not all_cached(names, spec, env.model_key, env.cache_dirs):  # only now is the unedited model needed
            base, base_tok = env.load_base()
        else:  # all cached somewhere: no model runs; copies go to the cache dirs that lack them
            base, base_tok = None, None
        return second_moments(base, base_tok, names, spec, env.model_key, env.cache_dirs), spec.key()

    def precompute(self, hp: MEMITHparams, env, model) -> str:
        """`memedit stats`: C₀ for every layer of the band, cached for later applies."""
        cov, key = self.stats(hp, env, model)
        return f"statistics {key} for {len(cov)} layer(s) ({', '.join(cov)})"

    def compute(self, model, tok, facts, hp: MEMITHparams, seed: int, env, reuse=None):
        import torch

        torch.manual_seed(seed)
        arch = arch_for(model.config)
        device = input_device(model)
        z_layer = hp.layers[-1]
        info: dict = {}
        names = [arch.mlp_out_at(layer) for layer in hp.layers]
        cols = [reuse["facts"].index(f.id) for f in facts] if reuse is not None else []
        # `forget --resolve --stored-keys`: the keys too are what the batch read when it was made (the rules
        # but "memit" store them); only h is read again, on the bare prompts: 1 row a fact instead of 1 + templates
        stored = bool(reuse and reuse.get("stored_keys") and all(f"{n}.K" in reuse["tensors"] for n in names))
        if reuse is not None:  # forget: each remaining fact's z is what it was (exactly so on the same starting
            # state; on a later segment with `forget --resolve`, the stored target re-solved on the new state)
            z = reuse["tensors"]["z"][cols].to(device)
            info["z_reused"] = True
            if stored:
                info["keys_stored"] = True
        else:
            z, info = compute_z(model, tok, facts, hp, z_layer, hp.context_templates, device)
        # C₀ goes into the repository (an object the segment names): a replay reads it there, never a cache
        def statistics() -> dict:  # a new segment's C₀ and its seconds (computed, or read from a cache)
            t0 = time.perf_counter()
            cov, info["stats"] = self.stats(hp, env, model)
            info["stats_s"] = round(time.perf_counter() - t0, 2)
            return cov

        cov = env.stored("mom2", statistics)
        originals = {n: weight_module(model, n).weight.detach().clone() for n in names}
        tensors = {"z": z.float().cpu()}
        rule = "alphaedit" if hp.null_space else hp.update
        # the earlier batches' keys: each earlier segment read once, not once per layer
        earlier = _earlier_keys(env, self.name, hp) if rule != "memit" or hp.norm_anchor else []
        templates = hp.context_templates[:1] if stored else hp.context_templates  # [0]: the rows h is read on
        reader = KeyReader(model, key_rows(tok, facts, templates, device), hp.layers, keys=not stored)
        if hp.norm_anchor:  # z is stored as optimized; a replay anchors it again on its own state
            z, info["norm_anchor"], tensors["nas_anchor"] = _anchor(*reader.values(), z, earlier)
        try:
            for i, name in enumerate(names):
                keys, current = reader.read(i)  # on the model with the band's layers below i updated
                K = reuse["tensors"][f"{name}.K"][:, cols].to(current) if stored else keys.T  # (d_in, n)
                R = (z.double().to(current.device) - current).T / (len(hp.layers) - i)  # (d_out, n)
                C = cov[name].to(K.device)
                Kp = [t[f"{name}.K"] for t in earlier if f"{name}.K" in t]  # the earlier batches' keys
                # the d_in × d_in sums are made in place: at d_in = 14,336 (8B) each such float64 matrix is
                # 1.5 GiB, and `a + b + c` would hold five of them at once
                if rule == "alphaedit":
                    P = _null_space_projector(C, hp)
                    A = P @ _add_grams(K @ K.T, Kp)  # P (K Kᵀ + Σ Kp Kpᵀ)
                    A.diagonal().add_(hp.null_space_l2)
                    V = torch.linalg.solve(A, P @ K)
                    info.setdefault("null_dims", []).append(int(round(float(P.trace()))))
                else:  # "sequential" adds the earlier keys to the prior; "memit" has none
                    A = _add_grams(hp.mom2_update_weight * C, [*Kp, K])  # λC₀ + Σ Kp Kpᵀ + K Kᵀ
                    V = torch.linalg.solve(A, K)  # (d_in, n)
                del A
                if rule != "memit":
                    tensors[f"{name}.K"] = K.float().cpu()  # what later batches' Kp are made of
                U, V = R.float().cpu(), V.float().cpu()
                tensors[f"{name}.U"], tensors[f"{name}.V"] = U, V
                module = weight_module(model, name)
                add_weight_deltas(model, {f"{name}.weight": _dense(module, U, V)})  # later layers see this one
        finally:
            with torch.no_grad():
                for n, w in originals.items():
                    weight_module(model, n).weight.copy_(w)  # restore, never subtract
        return tensors, info

    def attach(self, model, tensors, hp, tok=None) -> None:
        deltas = {}
        for name in (arch_for(model.config).mlp_out_at(layer) for layer in hp.layers):
            deltas[f"{name}.weight"] = _dense(weight_module(model, name), tensors[f"{name}.U"], tensors[f"{name}.V"])
        add_weight_deltas(model, deltas)

    def footprint(self, hp: MEMITHparams, model) -> Footprint:
        return Footprint(writes=tuple(hp.layers), blocks_hparam="layers")


def _earlier_keys(env, method: str, hp: MEMITHparams) -> list[dict]:
    """Tensors of the earlier batches of `method` in the state, as the log has them attached (a forget's
    replay sees the rebuilt ones): their stored keys make Kp. The old null_space option read only the
    batches made with it, as it did."""
    return [env.segment_tensors(seg) for seg in env.attached if seg["method"] == method
            and (seg["hparams"].get("null_space") if hp.null_space else True)]


def _add_grams(total, keys: list):
    """total += Σ K Kᵀ over key matrices K (d_in, n_j), in place, in total's dtype and device; returns total."""
    for K in keys:
        K = K.to(total)
        total.addmm_(K, K.T)
    return total


# P per (C₀'s bytes, threshold), within one process: a forget's replay or a stream of batches solves many
# batches against one C₀, and each eigendecomposition costs ~1.6 s at d_in = 1,536 (one thread) and grows
# as d_in³. Projectors above the budget (d_in > ~5,800 in float64) are not kept.
_PROJECTORS: dict = {}
_PROJECTOR_BUDGET = 1 << 30  # bytes of projectors kept


def _null_space_projector(C, hp: MEMITHparams):
    """P = Û Ûᵀ over the eigenvectors of C₀ whose eigenvalue is below alphaedit_threshold (absolute, as AlphaEdit),
    or below null_space_threshold × the mean eigenvalue (the old null_space option)."""
    import hashlib

    import torch

    size = C.numel() * C.element_size()
    key = None
    if 4 * size <= _PROJECTOR_BUDGET:  # hashing C₀ costs ~1/100 of its eigendecomposition
        digest = hashlib.blake2b(C.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        key = (digest, str(C.device), hp.null_space, hp.null_space_threshold, hp.alphaedit_threshold)
        if key in _PROJECTORS:
            return _PROJECTORS[key]
    evals, evecs = torch.linalg.eigh(C)
    limit = hp.null_space_threshold * evals.mean() if hp.null_space else hp.alphaedit_threshold
    null = evecs[:, evals < limit]
    P = null @ null.T
    if key is not None:
        while _PROJECTORS and size * (len(_PROJECTORS) + 1) > _PROJECTOR_BUDGET:
            _PROJECTORS.pop(next(iter(_PROJECTORS)))  # the oldest first
        _PROJECTORS[key] = P
    return P


def _anchor(v0, h, z, earlier: list[dict]):
    """NAS: the targets z (n, d) with each value vector v* = v₀ + δ (block L's FFN output at the subject plus the
    optimized δ) rescaled to the anchor norm, or left at v₀ when ‖v*‖ > 2 × the anchor (NAS's skip); v₀ and
    h (n, d) are block L's FFN output and output at the subject on the model the batch starts from.
    The anchor is the mean ‖v*‖ (the top 5 % dropped) of the first anchored batch in the state, made
    on the model as it was then (the unedited one when MEMIT came first); later batches read it
    from there. Returns (z, a summary for the log, the anchor as a tensor to store)."""
    import torch

    vstar = v0 + (z.double().to(h.device) - h)  # z = h + δ
    norms = vstar.norm(dim=1)
    stored = [t["nas_anchor"] for t in earlier if "nas_anchor" in t]
    if stored:
        anchor = float(stored[0])
    else:
        kept = norms.sort().values[: max(1, len(norms) - int(0.05 * len(norms)))]
        anchor = float(kept.mean())
    skip = norms > 2 * anchor
    scaled = torch.where(skip[:, None], v0, vstar * (anchor / norms.clamp(min=1e-12))[:, None])
    z = (h - v0 + scaled).float()
    return z, {"anchor": round(anchor, 4), "skipped": int(skip.sum())}, torch.tensor(anchor, dtype=torch.float64)
