"""The token stream behind the statistics: a text corpus (.txt documents split on
blank lines, or JSONL with a "text" field) tokenized and cut to an exact length.
Without a corpus the keys come from the model's own samples, taken while it
samples (samples.py); no stream is made."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from memedit_cli.errors import UserError
from memedit_cli.stats.dist import broadcast_object, coll_device
from memedit_cli.stats.store import SAMPLES_ID


@dataclass(frozen=True)
class CorpusSpec:
    """What the statistics are computed over."""

    # .txt (documents split on blank lines) or .jsonl/.json ({"text": ...} per line); None: model samples
    path: str | None
    tokens: int  # number of tokens to accumulate
    seq_len: int = 256  # tokens per row

    def __post_init__(self):
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise UserError(f"the statistics corpus needs tokens >= 1, got {self.tokens!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise UserError(f"the statistics corpus needs seq_len >= 1, got {self.seq_len!r}")

    def key(self) -> str:
        """Stable id: the corpus (file content hash, or the sampling scheme), tokens and row length."""
        source = file_digest(self.path)[:16] if self.path is not None else SAMPLES_ID
        return f"{source}-t{self.tokens}-s{self.seq_len}"


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str) -> str:
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


def corpus_tokens(tok, path: str, n: int) -> torch.Tensor:
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


def token_stream(tok, spec, rank, world) -> torch.Tensor:
    """spec.tokens token ids of the corpus file (CPU, int64), the same on every rank (built on rank 0, then
    broadcast)."""
    stream, error = None, None
    if rank == 0:
        try:
            stream = corpus_tokens(tok, spec.path, spec.tokens)
        except UserError as e:
            if world == 1:
                raise
            error = e
    if world > 1:
        error = broadcast_object(error, rank, world)  # every rank fails alike, none waits forever
        if error is not None:
            raise error
        buf = stream.clone() if rank == 0 else torch.empty(spec.tokens, dtype=torch.long)
        buf = buf.to(coll_device())
        torch.distributed.broadcast(buf, 0)
        stream = buf.cpu()
    return stream
