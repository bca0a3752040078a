"""Memory per edit method, computed from what the code allocates (an estimate: nothing measured on a GPU).

    python benchmarks/memory_plan.py [--model Llama-3.1-8B ...] [--config PATH/config.json ...]
                                     [--dtype bfloat16] [--facts 10] [--tokens 16] [--target-tokens 2]
                                     [--after-subject 6]

For each model (a built-in name or a Hugging Face config.json) it builds the
model on PyTorch's meta device (no weights are allocated), takes each method's
default hyperparameters from the method itself (`default_hparams`: the band
MEMIT edits, WISE's and ft's block, ...), and prints, per method, every
tensor the method adds to the base weights during `apply` (and when the state
is attached for `ask`), with its shape, dtype, device and bytes, and the peak:
the largest sum of the parts alive in one phase of the computation. Phases:
ft train/step (forward-backward, Adam's step); MEMIT z (the target vectors),
stats (C₀ sampled and summed; skipped when C₀ is cached), load (C₀ read and
stored as an object), solve and write (per layer of the band); WISE edit and
update (backward, SGD step); Larimar encode; then attach (the state rebuilt
for `ask`) and ask (a forward). "On an edited state, cold caches" adds the
second copy of the base model that MEMIT's and WISE's `resolve` load when
segments are already attached and what they compute on the unedited model
(context templates, prefixes, WISE's output norm) is not in a cache yet
(SECOND_BASE); with those cached, as after any earlier apply on the machine,
nothing more is loaded.

A workload is one apply batch of `--facts` facts of `--tokens` tokens (prompt
and target) with `--target-tokens` target tokens, `--after-subject` of them
from the subject's last token on (what MEMIT's z loop runs above its band).
Activations kept for backward are counted per token and block of a LLaMA-style
block under SDPA attention (`block_bytes`; tests/test_memory_plan.py checks it
against what autograd keeps on a tiny model). Left out: the CUDA context and
kernels (~0.5-1 GiB), the caching allocator's fragmentation and reserve,
library workspaces (cuBLAS, cuSOLVER beyond what is named), the forward-only
transients of one block, and small tensors (token ids, masks, MEMIT's δ and keys).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from memedit_cli.lm.arch import arch_for, is_transposed, num_layers
from memedit_cli.methods.base import weight_module
from memedit_cli.methods.ft import FT
from memedit_cli.methods.larimar import Larimar
from memedit_cli.methods.memit import MEMIT
from memedit_cli.methods.wise.wise_main import WISE
from memedit_cli.stats.samples import GEN_BATCH  # sequences per sampling batch of C₀'s default corpus

# LlamaConfig fields of the named models (their config.json files, abridged)
NAMED = {
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
    "Llama-3.1-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
}
BYTES = {torch.float64: 8, torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.int64: 8, torch.int32: 4,
         torch.uint8: 1, torch.bool: 1}
STATS_ROW = 256  # MEMIT._spec: C₀'s rows (sampled sequences) of 256 tokens
MINILM = dict(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
              max_position_embeddings=512, type_vocab_size=2)  # all-MiniLM-L6-v2's config.json
APPLY = {"train", "step", "z", "stats", "load", "solve", "write", "edit", "update", "encode"}
ASK = {"attach", "ask"}
# on a cache miss resolve() calls env.load_base(), which on a state with segments attached loads a second
# copy of the base model (replay.method_env's `fresh`), kept for the rest of the apply: MEMIT's context
# templates, WISE's prefixes, unrelated prompts and output norm
SECOND_BASE = {"memit", "memit update=alphaedit", "wise"}


@dataclass(frozen=True)
class Shape:
    """What the formulas read from a model: sizes, the FFN output projection's weight layout, dtype."""

    name: str
    d: int  # hidden size
    d_ff: int  # FFN width: the input of the projection ft/MEMIT/WISE edit
    w_shape: tuple  # that projection's weight, in its own layout ((d, d_ff) for nn.Linear)
    layers: int
    q_dim: int  # heads × head size
    kv_dim: int  # kv heads × head size
    vocab: int
    params: int
    gated: bool  # SiLU-gated FFN (LLaMA family): three FFN activations kept for backward, else one
    rms: bool  # RMSNorm computed in float32 (LLaMA family)
    dtype: torch.dtype


@dataclass(frozen=True)
class Workload:
    facts: int = 10
    tokens: int = 16  # prompt + target tokens of a fact
    target_tokens: int = 2
    after_subject: int = 6  # tokens from the subject's last token to the end of the row


@dataclass(frozen=True)
class Part:
    name: str
    phases: tuple  # the phases it is alive in (see APPLY and ASK); ("stored",) for repository objects
    device: str  # gpu (the model's device), cpu, or disk
    dtype: str
    shape: str  # the shape formula, evaluated
    nbytes: int


def part(name, phases, device, dtype, shape, count=1, nbytes=None) -> Part:
    """A part of `count` tensors of `shape` and `dtype` (or `nbytes` for what is not one tensor)."""
    if nbytes is None:
        nbytes = count * math.prod(shape) * BYTES[dtype]
    text = shape if isinstance(shape, str) else f"{'%d × ' % count if count != 1 else ''}{tuple(shape)}"
    dt = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    return Part(name, tuple(phases.split()), device, dt, text, int(nbytes))


def shape_of(config, dtype=torch.bfloat16) -> tuple[Shape, torch.nn.Module]:
    """(Shape, the model on the meta device) of a transformers config."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    module = weight_module(model, arch_for(config).mlp_out_at(0))
    w = tuple(module.weight.shape)
    d_ff, d = (w[0], w[1]) if is_transposed(module) else (w[1], w[0])
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    llama = arch_for(config).family == "llama"
    return Shape(getattr(config, "name_or_path", "") or config.model_type, d, d_ff, w, num_layers(config),
                 heads * head_dim, kv * head_dim, config.vocab_size, sum(p.numel() for p in model.parameters()),
                 gated=llama, rms=llama, dtype=dtype), model


def block_bytes(s: Shape) -> int:
    """Bytes one block keeps for backward per token, its weights frozen (a frozen Linear keeps no input):
    the inputs of its two norms (float32 under RMSNorm), SDPA's q, k, v (k, v repeated to every head) and
    output, and the FFN's activation input (gated: also its output and the up projection)."""
    b = BYTES[s.dtype]
    return 2 * s.d * (4 if s.rms else b) + 4 * s.q_dim * b + (3 if s.gated else 1) * s.d_ff * b


def upper_bytes(s: Shape, tokens: int, blocks: int) -> int:
    """Kept for backward over `tokens` positions by `blocks` blocks and the final norm."""
    return tokens * (blocks * block_bytes(s) + 4 * s.d)


def logit_bytes(s: Shape, rows: int) -> int:
    """Logits of `rows` positions (model dtype), their float32 log-softmax (kept) and its gradients."""
    return rows * s.vocab * (BYTES[s.dtype] + 12)


def kv_bytes(s: Shape, tokens: int, layers: int) -> int:
    return tokens * layers * 2 * s.kv_dim * BYTES[s.dtype]


def ft_parts(s: Shape, hp, w: Workload) -> list[Part]:
    f32, above, n, T = torch.float32, s.layers - 1 - hp.layer, w.facts, w.tokens
    return [
        part("ΔW (float32) and its gradient", "train step", "gpu", f32, s.w_shape, 2),
        part("Adam moments exp_avg, exp_avg_sq", "train step", "gpu", f32, s.w_shape, 2),
        part("Adam step temporary (denominator)", "step", "gpu", f32, s.w_shape),
        part("FFN input as float32, kept for ΔW's gradient", "train", "gpu", f32, (n, T, s.d_ff)),
        part(f"activations kept, blocks {hp.layer + 1}..{s.layers - 1}", "train", "gpu", s.dtype,
             f"{n}×{T} tok × {above} blocks", nbytes=upper_bytes(s, n * T, above)),
        part("logits at every position, float32 log-softmax", "train", "gpu", "mixed", f"({n}, {T}, {s.vocab})",
             nbytes=logit_bytes(s, n * T)),
        part("attach: W + ΔW summed in float32", "attach", "gpu", f32, s.w_shape, 3),
        part("attach: ΔW read from its object (bytes, tensor)", "attach", "cpu", f32, s.w_shape, 2),
        part("stored: ΔW", "stored", "disk", f32, s.w_shape),
    ]


def memit_parts(s: Shape, hp, w: Workload) -> list[Part]:
    f64, f32, n, r, L = torch.float64, torch.float32, w.facts, len(hp.layers), hp.layers[-1]
    above, C = s.layers - 1 - L, (s.d_ff, s.d_ff)
    templates = 1 + hp.n_context_templates  # the bare prompt and the generated prefixes

    def split(k):  # (tokens before each subject, tokens from it on) of k facts' rows
        before = k * templates * (w.tokens - w.after_subject) + k * (templates - 1) * (hp.context_template_length + 2)
        before += k * (w.tokens - w.after_subject)  # the KL rows "{subject} is a"
        return before, k * templates * w.after_subject + k * 3

    before, _ = split(n)
    nz = min(n, hp.z_batch) if hp.z_batch else n  # z is optimized in passes of z_batch facts
    zbefore, after = split(nz)
    alpha = hp.update == "alphaedit" or hp.null_space
    parts = [
        part("prefix KV cache (positions before each subject)", "z", "gpu", s.dtype,
             f"{zbefore} tok × {s.layers} blocks", nbytes=kv_bytes(s, zbefore, s.layers)),
        part(f"activations kept, blocks {L + 1}..{s.layers - 1} (from the subject on)", "z", "gpu", s.dtype,
             f"{after} tok × {above} blocks (+ prefix k, v)",
             nbytes=upper_bytes(s, after, above) + zbefore * above * 2 * s.q_dim * BYTES[s.dtype]),
        part("logits at target and KL positions", "z", "gpu", "mixed",
             f"({nz * templates * w.target_tokens + nz}, {s.vocab})",
             nbytes=logit_bytes(s, nz * templates * w.target_tokens + nz) + nz * s.vocab * 4),
        part("C₀ running sums Σkkᵀ, every layer of the band", "stats", "gpu", f64, C, r),
        part("C₀ = sum / count (one layer at a time)", "stats", "gpu", f64, C),
        part(f"sampling KV cache ({GEN_BATCH} sequences × {STATS_ROW} tokens)", "stats", "gpu", s.dtype,
             f"{GEN_BATCH * STATS_ROW} tok × {s.layers} blocks", nbytes=kv_bytes(s, GEN_BATCH * STATS_ROW, s.layers)),
        # compute_ks.KeyReader: each row's block inputs at the band's blocks but the last, kept between the
        # layers' reads (rows cut after the subject: the same tokens as the prefix cache's `before`)
        part(f"key reads: block inputs kept at {r - 1} blocks of the band", "solve write", "gpu", s.dtype,
             f"{before} tok × {r - 1} blocks", nbytes=before * s.d * BYTES[s.dtype] * (r - 1)),
        part("original weights of the band, kept to restore", "solve write", "gpu", s.dtype, s.w_shape, r),
        part("C₀ of the layer solved", "solve write", "gpu", f64, C),
        # memit_main.compute sums in place: A = λC₀ + Σ Kp Kpᵀ + KKᵀ, then solve's LU copy of it (alphaedit:
        # P, G = KKᵀ + Σ Kp Kpᵀ and A = P G at the product; P, A and the LU copy at the solve)
        part("solve: " + ("P, G or the LU copy, A = P G" if alpha else "A = λC₀ + Σ Kp Kpᵀ + KKᵀ, its LU copy"),
             "solve", "gpu", f64, C, 3 if alpha else 2),
        part("W + ΔW summed in float32 (one layer)", "write attach", "gpu", f32, s.w_shape, 3),
        part("C₀ of the band on the CPU", "stats load solve write", "cpu", f64, C, r),
        part("C₀ serialized for the repository object", "stats load", "cpu", torch.uint8, (r * s.d_ff ** 2 * 8,)),
        part("attach: ΔW = U Vᵀ (one layer)", "attach", "cpu", f32, s.w_shape),
        part("stored: z", "stored", "disk", f32, (n, s.d)),
        part("stored: U per layer", "stored", "disk", f32, (s.d, n), r),
        part("stored: V per layer", "stored", "disk", f32, (s.d_ff, n), r),
    ]
    if hp.update != "memit" or hp.null_space:
        parts.append(part("stored: keys K per layer", "stored", "disk", f32, (s.d_ff, n), r))
    parts.append(part("stored: C₀ object (mom2), once per band and corpus", "stored", "disk", f64, C, r))
    parts.append(part("C₀ statistics caches (repository, per-user)", "cache", "disk", f64, C, 2 * r))
    return parts


def wise_parts(s: Shape, hp, w: Workload) -> list[Part]:
    f32, b, above, n = torch.float32, BYTES[s.dtype], s.layers - 1 - hp.layer, w.facts
    rows = len(hp.prefixes) or hp.n_prefixes + 1  # the bare prompt and the generated prefixes, one edit at a time
    tok = rows * w.tokens + (rows - 1) * (hp.prefix_length + 2)
    numel = math.prod(s.w_shape)
    if hp.mask == "topk":
        nnz = min(hp.mask_k * n, s.d_ff) * s.d  # the union of the edits' columns, at most mask_k each
    else:
        nnz = round(hp.mask_ratio * numel)
    parts = [
        part("D (float32), its gradient, the mask as float32", "edit update", "gpu", f32, s.w_shape, 3),
        part("mask (bool)", "edit update", "gpu", torch.bool, s.w_shape),
        part("update temporaries: grad·mask, decay·D, their sum", "update", "gpu", f32, s.w_shape, 3),
        part("FFN input of the edit's rows (kept), and as float32", "edit", "gpu", "mixed",
             f"{tok} tok × {s.d_ff}", nbytes=tok * s.d_ff * (b + 4)),
        part(f"activations kept, blocks {hp.layer + 1}..{s.layers - 1}", "edit", "gpu", s.dtype,
             f"{tok} tok × {above} blocks", nbytes=upper_bytes(s, tok, above)),
        part("logits at target positions", "edit", "gpu", "mixed", f"({rows * w.target_tokens}, {s.vocab})",
             nbytes=logit_bytes(s, rows * w.target_tokens)),
    ]
    if hp.mask == "random":
        parts.append(part("mask drawn on the CPU (uniform float32, bool)", "edit", "cpu", "mixed",
                          str(s.w_shape), nbytes=numel * 5))
    sparse = 2 * nnz < numel
    parts.append(part("side memory: int32 index + values" if sparse else "side memory (dense)", "ask", "gpu",
                      "mixed" if sparse else s.dtype, f"({nnz},) × 2" if sparse else str(s.w_shape),
                      nbytes=nnz * (4 + b) if sparse else numel * b))
    if sparse and hp.router == "activation":
        parts.append(part("memory densified at every forward, int64 index", "ask", "gpu", "mixed",
                          str(s.w_shape), nbytes=numel * b + nnz * 8))
    parts.append(part("shards kept for rebuilds: int64 index + float32 values", "attach ask", "cpu", "mixed",
                      f"({nnz},) × 2", nbytes=nnz * 12))
    if hp.mask == "random":
        parts.append(part("attach: mask bits unpacked", "attach", "cpu", torch.uint8, s.w_shape))
    parts.append(part("stored: values inside the mask", "stored", "disk", f32, (nnz,)))
    if hp.mask == "topk":
        parts.append(part("stored: mask columns", "stored", "disk", torch.int64, (min(hp.mask_k * n, s.d_ff),)))
    else:
        parts.append(part("stored: mask, packed bits", "stored", "disk", torch.uint8, (math.ceil(numel / 8),)))
    parts += [part("stored: routing scores", "stored", "disk", f32, (n,)),
              part("stored: shape", "stored", "disk", torch.int64, (2,))]
    if hp.router == "keys":
        parts.append(part("stored: keys (float32) and their thresholds", "stored", "disk", f32, (n, s.d_ff + 1)))
    return parts


def minilm_params(c: dict) -> int:
    """BertModel's parameters (embeddings, blocks, pooler) from its config."""
    h, i = c["hidden_size"], c["intermediate_size"]
    embeddings = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"]) * h + 2 * h
    block = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return embeddings + c["num_hidden_layers"] * block + h * h + h


def larimar_parts(s: Shape, hp, w: Workload, encoder: str = "minilm") -> list[Part]:
    f64, f32, n = torch.float64, torch.float32, w.facts
    C = MINILM["hidden_size"] if encoder == "minilm" else s.d
    K = hp.memory_size if n <= hp.memory_size else 2 ** math.ceil(math.log2(n))
    context = hp.context.count("{prompt}") * (w.tokens + 1) + 1  # each "{prompt} {target}." and the "\n"
    parts = []
    if encoder == "minilm":
        parts.append(part("all-MiniLM-L6-v2 encoder weights", "encode ask", "gpu", f32, (minilm_params(MINILM),)))
    else:
        parts.append(part("hidden states of every block (output_hidden_states)", "encode", "gpu", s.dtype,
                          (s.layers + 1, 16, w.tokens, s.d)))
    return parts + [
        part("read context in the KV cache (one in-scope prompt)", "ask", "gpu", s.dtype,
             f"{context} tok × {s.layers} blocks", nbytes=kv_bytes(s, context, s.layers)),
        part("M_ref, its pseudo-inverse, M (float64), M as float32, M⁺", "attach ask", "cpu", "mixed",
             f"{(K, C)} × 5", nbytes=K * C * (8 + 8 + 8 + 4 + 8)),
        part("Gram ZᵀZ", "attach", "cpu", f64, (C, C)),
        part("episodes and relations (float64/float32 copies)", "attach ask", "cpu", "mixed", f"{(n, C)} × 4",
             nbytes=n * C * (8 + 4 + 4 + 4)),
        part("stored: episodes and relations", "stored", "disk", f32, (n, C), 2),
        part("stored: context tokens", "stored", "disk", torch.int64, (n * context,)),
    ]


def peak(parts: list[Part], phases: set, device: str = "gpu") -> tuple[int, str]:
    """(bytes, phase): the largest sum of `device` parts alive in one of `phases`."""
    sums = {ph: sum(p.nbytes for p in parts if p.device == device and ph in p.phases) for ph in phases}
    best = max(sums, key=lambda ph: (sums[ph], ph))
    return sums[best], best


def plans(s: Shape, model, w: Workload) -> dict[str, list[Part]]:
    """Per method (with its defaults for this model), its parts."""
    from memedit_cli.methods.larimar.encoder import minilm_dir

    memit = MEMIT().default_hparams(model)
    return {
        "ft": ft_parts(s, FT().default_hparams(model), w),
        "memit": memit_parts(s, memit, w),
        "memit update=alphaedit": memit_parts(s, dataclasses.replace(memit, update="alphaedit"), w),
        "wise": wise_parts(s, WISE().default_hparams(model), w),
        # encoder=auto: MiniLM when its package is installed, as Larimar.resolve decides
        "larimar": larimar_parts(s, Larimar().default_hparams(model), w, "minilm" if minilm_dir() else "model"),
    }


def size(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def report(s: Shape, model, w: Workload) -> list[str]:
    weights = s.params * BYTES[s.dtype]
    out = [f"### {s.name}, {str(s.dtype).removeprefix('torch.')}: d={s.d}, d_ff={s.d_ff}, {s.layers} blocks, "
           f"V={s.vocab}; {w.facts} facts × {w.tokens} tokens", "",
           f"Base weights: {s.params / 1e9:.2f}B parameters, {size(weights)} on the GPU.", "",
           "| method | phase | part | shape | dtype | device | bytes |", "|---|---|---|---|---|---|---|"]
    summary, shown = [], set()
    for method, parts in plans(s, model, w).items():
        for p in parts:
            if p not in shown:  # a variant (memit update=alphaedit) lists only the parts it changes
                out.append(f"| {method} | {' '.join(p.phases)} | {p.name} | {p.shape} | {p.dtype} | {p.device} | "
                           f"{size(p.nbytes)} |")
            shown.add(p)
        cached = any("stats" in p.phases for p in parts)  # MEMIT: C₀ already computed (`memedit stats`)
        rows = [(method, APPLY)] + ([(f"{method}, C₀ cached", APPLY - {"stats"})] if cached else [])
        for label, phases in rows:
            apply_b, apply_ph = peak(parts, phases)
            ask_b, _ = peak(parts, ASK)
            cpu_b, _ = peak(parts, phases | ASK, "cpu")
            disk = sum(p.nbytes for p in parts if p.device == "disk")  # objects, and caches
            edited = size(2 * weights + apply_b) if method in SECOND_BASE else "same"
            summary.append(f"| {label} | {size(apply_b)} ({apply_ph}) | {size(weights + apply_b)} | {edited} | "
                           f"{size(ask_b)} | {size(cpu_b)} | {size(disk)} |")
    out += ["", "| method | apply: peak beyond weights (phase) | apply: total | apply on an edited state, cold caches "
            "| ask: beyond weights | CPU beyond the model | on disk after one apply |", "|---|---|---|---|---|---|---|",
            *summary, ""]
    return out


def main(argv=None) -> None:
    from transformers import AutoConfig, LlamaConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", choices=sorted(NAMED), help="a built-in config (repeatable)")
    ap.add_argument("--config", action="append", default=[], help="a Hugging Face config.json (repeatable)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--facts", type=int, default=Workload.facts, help="facts in one apply batch")
    ap.add_argument("--tokens", type=int, default=Workload.tokens, help="prompt + target tokens of a fact")
    ap.add_argument("--target-tokens", type=int, default=Workload.target_tokens)
    ap.add_argument("--after-subject", type=int, default=Workload.after_subject,
                    help="tokens from the subject's last token to the end of a row")
    args = ap.parse_args(argv)
    w = Workload(args.facts, args.tokens, args.target_tokens, args.after_subject)
    configs = [(name, LlamaConfig(**NAMED[name])) for name in (args.model or ([] if args.config else NAMED))]
    for path in map(Path, args.config):
        file = path / "config.json" if path.is_dir() else path
        configs.append((json.loads(file.read_text()).get("_name_or_path") or str(path),
                        AutoConfig.from_pretrained(str(file))))
    lines = []
    for name, config in configs:
        s, model = shape_of(config, getattr(torch, args.dtype))
        lines += report(dataclasses.replace(s, name=name), model, w)
    print("\n".join(lines).rstrip())


if __name__ == "__main__":
    main()
