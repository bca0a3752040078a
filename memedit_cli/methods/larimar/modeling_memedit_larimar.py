"""Larimar episodic memory for a Hugging Face causal LM exported by memedit.

This file is copied into `memedit export --merged` folders and loaded with

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

by people who need not have memedit installed, so it imports only torch,
transformers and safetensors. memedit_cli builds on `LarimarDecoder` and the
encoders from this file, so memedit and the export choose episodes with one
piece of code.

How a frozen decoder reads the memory (training-free conditioning):

1. A new sequence (empty cache) is read as text (the base tokenizer decodes
   its real tokens) and encoded to z_q (C,): all-MiniLM-L6-v2 on the text,
   or the decoder's own mean-pooled hidden state entering block
   `encoder_layer`.
2. Scope. `"scope": "subject"`: a row is in scope when a written episode's
   subject occurs in its text (case-insensitive, as whole words) and the
   text with that subject replaced by "X" encodes within
   `relation_threshold` (cosine) of the episode's own prompt with its subject
   replaced (`relations`); of the episodes that pass, the row reads the one
   whose relation is nearest. `"scope": "similarity"`: the cosine of z_q to
   its nearest written episode must reach `threshold`, and the row reads the
   episode nearest to the memory readout z_r = (z_q M⁺) M (M: K × C, the
   least-squares memory of all episodes); with K ≥ n episodes that is z_q's
   own nearest episode, so this is nearest-neighbour retrieval of the
   written facts. Out of scope, the decoder runs untouched: the output is
   the base model's, bit for bit.
3. `"mode": "context"`: the episode's context text (its tokens, stored) is
   put before the sequence as extra cache positions. The caller still sees
   its own length: outputs are cut back to its positions, and later cached
   calls get the prefix's mask and position offset added, so generation
   continues after it.

`config.memedit_larimar` holds the settings:

    {"threshold": 0.7, "scope": "subject", "relation_threshold": 0.7,
     "encoder": "minilm" | "model", "encoder_layer": 15,
     "encoder_dir": "larimar_encoder", "tensors": "memedit_larimar.safetensors"}

and the tensors file holds `episodes` (n, C) float32, `memory` (K, C)
float32, the context tokens of episode i as
`context_ids[context_offsets[i]:context_offsets[i + 1]]` (int64), its
subject as UTF-8 bytes `subjects[subject_offsets[i]:subject_offsets[i + 1]]`
(uint8) and its relation encoding `relations` (n, C) float32, those two
with scope=subject only (exports with scope=similarity, and those written
before the subject scope, have neither).

With `"mode": "prefix"` (experimental), an in-scope row reads no text: a
trained `PrefixAdapter` (`adapter.proj.weight`, `adapter.proj.bias`,
`adapter.m` in the tensors file) turns the readout z_r into m key/value
positions per layer, put in the cache before the sequence.
"""

import inspect
import re
from pathlib import Path

import torch
from torch import nn

# the decoder's cache argument: transformers 5.24 renamed past_key_values (still accepted) to cache
CACHE_ARGS = ("cache", "past_key_values")
PLACEHOLDER = "X"  # stands for the subject when a prompt's relation is encoded


# scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, CJK, kana): no word boundary to ask for
UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u2e80-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
WORD = rf"[^\W{UNSPACED}]"  # a word character of a script written with spaces
_WORD = re.compile(WORD)


def subject_spans(text: str, subject: str) -> list[tuple[int, int]]:
    """Where the text names the subject: as whole words, any case ("the eiffel tower is in" names "Eiffel
    Tower"); in a script without spaces ("埃菲尔铁塔位于"), or where the subject meets one ("用iPhone拍照"),
    wherever it occurs. Non-overlapping (start, end) spans, left to right. A substring search and a look
    at the two neighbouring characters: no pattern is compiled per subject, so a state of thousands of
    episodes loads without compiling thousands of regular expressions."""
    low, sub = text.lower(), subject.lower()
    if not sub:
        return []
    if len(low) != len(text) or len(sub) != len(subject):  # lowercasing changed a length ("İ"): by pattern
        before = rf"(?<!{WORD})" if _WORD.match(subject[:1]) else ""
        after = rf"(?!{WORD})" if _WORD.match(subject[-1:]) else ""
        return [m.span() for m in re.finditer(before + re.escape(subject) + after, text, re.IGNORECASE)]
    first, last = bool(_WORD.match(sub[0])), bool(_WORD.match(sub[-1]))
    spans, i = [], low.find(sub)
    while i >= 0:
        j = i + len(sub)
        inside = (first and i > 0 and _WORD.match(low[i - 1])) or (last and j < len(low) and _WORD.match(low[j]))
        if not inside:
            spans.append((i, j))
        i = low.find(sub, j if not inside else i + 1)
    return spans


def without_subject(text: str, subject: str) -> str:
    """The text with its subject replaced by PLACEHOLDER: what is left of a prompt is its relation."""
    out, at = [], 0
    for i, j in subject_spans(text, subject):
        out += [text[at:i], PLACEHOLDER]
        at = j
    return "".join(out) + text[at:]


def pack_texts(texts) -> tuple[torch.Tensor, torch.Tensor]:
    """Strings -> (UTF-8 bytes (N,) uint8, offsets (n + 1,) int64): text in a safetensors file."""
    data = [t.encode("utf-8") for t in texts]
    flat = b"".join(data)
    offsets = torch.tensor([0] + [len(d) for d in data], dtype=torch.int64).cumsum(0)
    return torch.frombuffer(bytearray(flat), dtype=torch.uint8) if flat else torch.zeros(0, dtype=torch.uint8), offsets


def unpack_texts(data, offsets) -> list[str]:
    raw = bytes(data.tolist())
    return [raw[int(a):int(b)].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]


def mean_pool(hidden, attention_mask) -> torch.Tensor:
    """(B, T, C), (B, T) -> (B, C) unit vectors: the mean over real positions, normalized."""
    m = attention_mask.to(hidden)[..., None]  # hidden may come from a block on another GPU (device_map)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    return nn.functional.normalize(mean.float(), dim=-1)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling over tokens, then normalize."""

    def __init__(self, folder, device="cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device
        self.dim = self.model.config.hidden_size

    def encode(self, texts, batch: int = 64) -> torch.Tensor:
        """(n, 384) float32 unit vectors, on the CPU."""
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(list(texts[i:i + batch]), return_tensors="pt", padding=True, truncation=True,
                           max_length=256).to(self.device)
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            out.append(mean_pool(hidden, enc["attention_mask"]).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def nearest(queries, episodes) -> tuple[torch.Tensor, torch.Tensor]:
    """The scope detector's measure (the paper's ESD): the cosine similarity of each query (n, C) to its
    nearest episode (m, C), and that episode's index; with no episodes, -inf and -1."""
    q = nn.functional.normalize(queries.float(), dim=-1)
    if len(episodes) == 0:
        return torch.full((len(q),), float("-inf")), torch.full((len(q),), -1, dtype=torch.long)
    return (q @ nn.functional.normalize(episodes.float(), dim=-1).T).max(1)


def decoder_encode(decoder, input_ids, attention_mask, layer: int) -> torch.Tensor:
    """(B, hidden) float32 unit vectors: the mean of the hidden states entering block `layer` of an
    unwrapped decoder (LlamaModel, GPT2Model...), over real positions."""
    with torch.no_grad():
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return mean_pool(out.hidden_states[layer], attention_mask).cpu()


def layer_devices(decoder) -> list:
    """The device of each block of a decoder (LlamaModel's `layers`, GPT-2's `h`, ...) or of a causal LM around
    one: a cache's layer i must sit where block i computes, which under device_map may be another GPU."""
    for name, blocks in decoder.named_modules():
        if isinstance(blocks, nn.ModuleList) and name.rpartition(".")[2] in ("layers", "h"):
            return [next(b.parameters()).device for b in blocks]
    raise ValueError(f"no list of blocks found in {type(decoder).__name__}")


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a decoder's attention cache."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    return layers, kv, getattr(config, "head_dim", None) or hidden // heads


class PrefixAdapter(nn.Module):
    """mode=prefix (experimental): a readout z_r (B, C) -> per layer, keys and values (B, kv_heads, m, head_dim)."""

    def __init__(self, dim: int, layers: int, heads: int, head_dim: int, m: int = 1):
        super().__init__()
        self.shape, self.m = (layers, 2, heads, m, head_dim), m
        self.proj = nn.Linear(dim, layers * 2 * heads * m * head_dim)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, zr) -> list[tuple[torch.Tensor, torch.Tensor]]:
        kv = self.proj(zr.to(self.proj.weight.dtype)).view(zr.shape[0], *self.shape)
        return [(kv[:, i, 0], kv[:, i, 1]) for i in range(self.shape[0])]

    @classmethod
    def from_tensors(cls, tensors: dict, config) -> "PrefixAdapter":
        """The adapter stored as `adapter.proj.weight` / `adapter.proj.bias` (and `adapter.m`)."""
        w = tensors["adapter.proj.weight"]
        m = int(tensors["adapter.m"])
        adapter = cls(w.shape[1], *kv_shape(config), m)
        adapter.proj.load_state_dict({"weight": w.float(), "bias": tensors["adapter.proj.bias"].float()})
        return adapter.eval().requires_grad_(False)


class LarimarDecoder(nn.Module):
    """A decoder (the module `base`, unchanged) that reads the episodic memory before a sequence.

    Attributes the decoder has (layers, embed_tokens, config...) are reached through it, so
    module paths such as `model.layers.3.mlp` keep working on the wrapped model.
    """

    def __init__(self, base: nn.Module, settings: dict):
        super().__init__()
        self.base = base
        self.settings = dict(settings)
        self.episodes = torch.zeros(0, 1)  # (n, C) float32, unit rows
        self.memory = torch.zeros(0, 1)  # (K, C) float32
        self.context_ids = torch.zeros(0, dtype=torch.long)  # all episodes' context tokens, concatenated
        self.context_offsets = torch.zeros(1, dtype=torch.long)  # (n + 1,)
        self.subjects = None  # scope=subject: the episodes' subjects, one string each
        self.relations = None  # scope=subject: (n, C) float32 unit rows, each prompt without its subject
        self._runtime = {}  # tokenizer, encoder, M⁺: plain attributes, so they stay out of the state dict
        self._signature = inspect.signature(base.forward)  # once: forward runs for every generated token
        self._seq = None  # the sequence being generated: {"ids", "prefix_mask", "episodes"}
        self.last_episodes = None  # (B,) long: the episode each row of the last new sequence read, -1 for none

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base" or "_modules" not in self.__dict__:
                raise
            return getattr(self._modules["base"], name)

    def set_memory(self, episodes, memory, context_ids, context_offsets, subjects=None, relations=None) -> None:
        """`subjects`: one string per episode and `relations` (n, C), needed by scope=subject."""
        self.episodes = nn.functional.normalize(episodes.float().cpu(), dim=-1)
        self.memory = memory.float().cpu()
        self.context_ids = context_ids.long().cpu()
        self.context_offsets = context_offsets.long().cpu()
        if self.settings.get("scope", "similarity") == "subject":
            if subjects is None or relations is None:
                raise ValueError("scope=subject needs each episode's subject and relation encoding")
            self.subjects = list(subjects)
            self._runtime["lower"] = [sub.lower() for sub in subjects]
            self.relations = nn.functional.normalize(relations.float().cpu(), dim=-1)
        self._runtime["memory_pinv"] = None  # computed on the first read: attaching many segments pays it once
        self._seq = None

    def bind(self, tokenizer=None, encoder=None) -> None:
        """What encoding a query needs: the base tokenizer (to read the text) and MiniLM (encoder=minilm)."""
        self._runtime.update(tokenizer=tokenizer, encoder=encoder)

    # -- choosing episodes ---------------------------------------------------------------------

    def texts(self, input_ids, attention_mask) -> list[str]:
        """The rows' real tokens as text."""
        tok = self._runtime.get("tokenizer")
        if tok is None:
            raise RuntimeError("this Larimar memory reads prompts as text: call bind(tokenizer, encoder) first")
        return [tok.decode(row[m.bool()].tolist(), skip_special_tokens=True)
                for row, m in zip(input_ids.cpu(), attention_mask.cpu())]

    def encode(self, input_ids, attention_mask, texts=None) -> torch.Tensor:
        """(B, C) query encodings of the rows' real tokens."""
        if self.settings["encoder"] == "model":
            return decoder_encode(self.base, input_ids, attention_mask, self.settings["encoder_layer"])
        return self.encode_texts(texts if texts is not None else self.texts(input_ids, attention_mask))

    def encode_texts(self, texts) -> torch.Tensor:
        """(n, C) encodings of texts, as the episodes' were made."""
        if self.settings["encoder"] == "model":
            tok, device = self._runtime["tokenizer"], next(self.base.parameters()).device
            rows = [tok(t, return_tensors="pt").to(device) for t in texts]  # one at a time: no padding
            return torch.cat([decoder_encode(self.base, r["input_ids"], r["attention_mask"],
                                             self.settings["encoder_layer"]) for r in rows])
        encoder = self._runtime.get("encoder")
        if encoder is None:
            raise RuntimeError("this Larimar memory encodes queries with MiniLM: call bind(tokenizer, encoder) first")
        return encoder.encode(texts)

    def by_subject(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """scope=subject: (B,) the episode each text reads (-1: none) and (B,) its relation similarity.
        Candidates are the episodes whose subject the text names; each distinct subject is taken out of
        the text once and the rest encoded, then compared with the candidates' relations."""
        chosen = torch.full((len(texts),), -1, dtype=torch.long)
        sims = torch.full((len(texts),), float("-inf"))
        lower = self._runtime["lower"]
        for b, text in enumerate(texts):
            low = text.lower()  # the substring test first: the word-boundary look only where it can match
            cands = [j for j, sub in enumerate(lower) if sub in low and subject_spans(text, self.subjects[j])]
            if not cands:
                continue
            distinct = sorted({lower[j] for j in cands})
            q = nn.functional.normalize(self.encode_texts([without_subject(text, sub) for sub in distinct]).float(),
                                        dim=-1)  # (d, C)
            row = {sub: i for i, sub in enumerate(distinct)}
            sim = (q[[row[lower[j]] for j in cands]] * self.relations[cands]).sum(-1)  # (len(cands),)
            k = int(sim.argmax())
            sims[b] = sim[k]
            if sim[k] >= self.settings["relation_threshold"]:
                chosen[b] = cands[k]
        return chosen, sims

    def choose(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B,) the episode each row reads (-1: out of scope), (B,) the scope's similarity, (B, C) readouts."""
        B = input_ids.shape[0]
        zr = torch.zeros(B, self.episodes.shape[1])
        if len(self.episodes) == 0:
            return torch.full((B,), -1, dtype=torch.long), torch.full((B,), float("-inf")), zr
        subject = self.settings.get("scope", "similarity") == "subject"
        texts = self.texts(input_ids, attention_mask) if subject or self.settings["encoder"] != "model" else None
        if subject:
            chosen, best = self.by_subject(texts)
            if self.settings.get("mode", "context") != "prefix" or not (chosen >= 0).any():
                return chosen, best, zr  # the chosen episode's text is read (or nothing is): no readout needed
            # mode=prefix: the memory is read with the chosen episode's encoding, so the readout that
            # conditions the decoder is of the episode the scope chose, not of whatever the prompt resembles
            zq = self.episodes[chosen.clamp(min=0)]  # (B, C), unit
        else:
            zq = self.encode(input_ids, attention_mask, texts).float()  # (B, C), unit
        if self._runtime.get("memory_pinv") is None:
            # from the float32 M that an export ships, so memedit and the export read alike; M has
            # rank ≤ min(n, C) < K, so directions below rtol are cut
            self._runtime["memory_pinv"] = torch.linalg.pinv(self.memory.double(), rtol=1e-6)  # (C, K)
        zr = ((zq.double() @ self._runtime["memory_pinv"]) @ self.memory.double()).float()  # (B, C) readout
        if subject:
            return chosen, best, torch.where((chosen >= 0)[:, None], zr, torch.zeros_like(zr))
        best, _ = nearest(zq, self.episodes)  # scope: the nearest written episode
        read = (nn.functional.normalize(zr, dim=-1) @ self.episodes.T).argmax(1)
        chosen = torch.where(best >= self.settings["threshold"], read, torch.full_like(read, -1))
        return chosen, best, zr

    def _prefix(self, chosen, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) context tokens, left-padded, and their (B, P) mask; rows that read nothing are all padding."""
        rows = [self.context_ids[self.context_offsets[e]:self.context_offsets[e + 1]] if e >= 0
                else self.context_ids[:0] for e in chosen.tolist()]
        P = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), P, dtype=torch.long)
        mask = torch.zeros(len(rows), P, dtype=torch.long)
        for i, r in enumerate(rows):
            if len(r):
                ids[i, P - len(r):], mask[i, P - len(r):] = r, 1
        return ids.to(device), mask.to(device)

    # -- forward -------------------------------------------------------------------------------

    def forward(self, *args, **kwargs):
        if self._runtime.get("hidden"):  # memedit computes another method's edit: the plain decoder
            return self.base(*args, **kwargs)
        a = self._signature.bind_partial(*args, **kwargs).arguments
        a.update(a.pop("kwargs", {}))
        ids, embeds = a.get("input_ids"), a.get("inputs_embeds")
        past = next((a[n] for n in CACHE_ARGS if a.get(n) is not None), None)
        past_len = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        x = ids if ids is not None else embeds
        B, T = x.shape[:2]
        if past_len == 0 and not self._continues(ids):
            self._seq = None
            self.last_episodes = None
            if ids is not None:
                mask = a.get("attention_mask")
                chosen, _, zr = self.choose(ids, torch.ones_like(ids) if mask is None or mask.dim() != 2 else mask)
                self.last_episodes = chosen
                if (chosen >= 0).any():
                    self._seq = {"ids": ids.detach().clone(), "chosen": chosen, "readout": zr}
                    if self.settings.get("mode", "context") == "prefix":
                        m = self._runtime["adapter"].m
                        self._seq["prefix_mask"] = (chosen >= 0).long()[:, None].expand(B, m).to(ids.device)
                    else:
                        self._seq["prefix_ids"], self._seq["prefix_mask"] = self._prefix(chosen, ids.device)
        if self._seq is None or self._seq["prefix_mask"].shape[0] != B:
            return self.base(**a)  # nothing read: the base decoder exactly
        pmask = self._seq["prefix_mask"]
        P, shift = pmask.shape[1], pmask.sum(1, keepdim=True)  # (B, 1) real prefix positions per row
        fresh = past_len == 0  # the prefix goes in now (with a cache, later calls find it there)
        mask = a.get("attention_mask")
        if mask is None or mask.dim() != 2:
            mask = torch.ones(B, past_len - (0 if fresh else P) + T, dtype=torch.long, device=x.device)
        full = torch.cat([pmask.to(mask.dtype), mask], 1)  # (B, P + the caller's length)
        pos = a.get("position_ids")
        if pos is None:  # positions count real tokens only, as generate counts them under left padding
            pos = (full.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        else:
            pos = pos.expand(B, -1) + shift
        a["attention_mask"], a["position_ids"] = full, pos
        if not fresh:
            return self.base(**a)
        if "prefix_ids" not in self._seq:  # mode=prefix: the adapter's keys/values fill the cache's first P places
            if past is None:
                from transformers import DynamicCache

                name = next((n for n in CACHE_ARGS if n in self._signature.parameters), CACHE_ARGS[-1])
                past = a[name] = DynamicCache(config=self.base.config)
            dtype = next(self.base.parameters()).dtype
            devices = layer_devices(self.base)
            for layer, (k, v) in enumerate(self._runtime["adapter"](self._seq["readout"].to(x.device))):
                past.update(k.to(devices[layer], dtype), v.to(devices[layer], dtype), layer)
            return self.base(**a)
        pids = self._seq["prefix_ids"]  # mode=context: the episode's tokens go in before the caller's
        a["position_ids"] = torch.cat([(pmask.cumsum(-1) - 1).clamp(min=0), pos], 1)
        if ids is not None:
            a["input_ids"] = torch.cat([pids, ids], 1)
        else:
            a["inputs_embeds"] = torch.cat([self.base.get_input_embeddings()(pids).to(embeds.dtype), embeds], 1)
        return _cut(self.base(**a), P)

    def _continues(self, ids) -> bool:
        """Without a cache, a call whose rows extend the current sequence's rows continues it."""
        s = self._seq
        return (s is not None and ids is not None and ids.shape[0] == s["ids"].shape[0]
                and ids.shape[1] > s["ids"].shape[1] and torch.equal(ids[:, :s["ids"].shape[1]], s["ids"]))


def _cut(out, P: int):
    """Drop the first P positions (the read episode) from a decoder output's per-position tensors."""
    out.last_hidden_state = out.last_hidden_state[:, P:]
    if getattr(out, "hidden_states", None) is not None:
        out.hidden_states = tuple(h[:, P:] for h in out.hidden_states)
    if getattr(out, "attentions", None) is not None:
        out.attentions = tuple(h[:, :, P:] for h in out.attentions)
    return out


def wrap(model, settings: dict) -> LarimarDecoder:
    """Replace the model's decoder (`model.<base_model_prefix>`) by a LarimarDecoder around it; idempotent."""
    name = model.base_model_prefix
    decoder = getattr(model, name)
    if not isinstance(decoder, LarimarDecoder):
        decoder = LarimarDecoder(decoder, settings)
        setattr(model, name, decoder)
    return decoder


def unwrap(model) -> LarimarDecoder | None:
    """Put the plain decoder back; returns the wrapper that was there (None if none)."""
    name = model.base_model_prefix
    decoder = getattr(model, name)
    if not isinstance(decoder, LarimarDecoder):
        return None
    setattr(model, name, decoder.base)
    return decoder


class _LarimarMixin:
    """from_pretrained loads the stock model, then wraps its decoder with the shipped memory."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            raise ValueError("a memedit Larimar export loads from a local folder (download it first)")
        settings = model.config.memedit_larimar
        t = load_file(str(folder / settings["tensors"]))
        decoder = wrap(model, settings)
        subjects = unpack_texts(t["subjects"], t["subject_offsets"]) if "subjects" in t else None
        decoder.set_memory(t["episodes"], t["memory"], t["context_ids"], t["context_offsets"], subjects,
                           t.get("relations"))
        if settings.get("mode") == "prefix":
            decoder._runtime["adapter"] = PrefixAdapter.from_tensors(t, model.config).to(
                next(model.parameters()).device)
        encoder = None
        if settings["encoder"] == "minilm":
            encoder = MiniLMEncoder(folder / settings["encoder_dir"], next(model.parameters()).device)
        decoder.bind(AutoTokenizer.from_pretrained(folder), encoder)
        return model


# `Larimar<Stock>`, e.g. LarimarLlamaForCausalLM, is made on first use from transformers' own `<Stock>`
# class (an export's auto_map names it).
PREFIX = "Larimar"


def __getattr__(name):
    import transformers

    stock = getattr(transformers, name[len(PREFIX):], None) if name.startswith(PREFIX) else None
    if not (isinstance(stock, type) and hasattr(stock, "from_pretrained")):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = type(name, (_LarimarMixin, stock), {"__module__": __name__})
    return cls
