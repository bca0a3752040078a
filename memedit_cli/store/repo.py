"""The repository object: `.memedit/` on disk, its log, HEAD and lock.

    .memedit/
      config.json      format version, base model, dtype, device policy
      log.jsonl        append-only records (see log.py)
      objects/         content-addressed safetensors (see objects.py)
      cache/           derived data; safe to delete
      HEAD             the current revision id, or "base"
      reflog.jsonl     every move of HEAD
      lock             held (flock) by the process that writes

Nothing here imports torch: `log`, `status` and `show` must start fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

from memedit_cli import FORMAT_VERSION
from memedit_cli.errors import DamagedRepository, LockedError, NotARepository, RevisionError, UserError
from memedit_cli.store import log as logmod
from memedit_cli.store.fileio import append_line, fsync_dir, write_atomic
from memedit_cli.store.jsonutil import canonical
from memedit_cli.store.objects import ObjectStore

DIRNAME = ".memedit"
BASE = "base"
_HEX = re.compile(r"^[0-9a-f]{4,64}$")
_ANCESTOR = re.compile(r"^(.+?)((?:~\d*|\^)+)$")


def find_workdir(start: str | os.PathLike | None = None) -> Path:
    """`-C DIR`, else `$MEMEDIT_DIR`, else the current directory."""
    return Path(start or os.environ.get("MEMEDIT_DIR") or os.getcwd()).resolve()


class Repo:
    def __init__(self, root: Path):
        self.root = Path(root)  # the .memedit directory
        self.objects = ObjectStore(self.root / "objects")
        self._records: list[dict] | None = None
        self._by_id: dict[str, dict] = {}  # id -> record, made with _records

    # -- opening and creating -------------------------------------------------

    @classmethod
    def open(cls, workdir: str | os.PathLike | None = None, check: bool = True) -> "Repo":
        """Open the repository in `workdir` or the nearest parent that has one, as git does.

        With `check`, an unreadable config or another format version is refused
        here, for every command (`fsck` opens without it, to report the damage).
        """
        start = find_workdir(workdir)
        for d in (start, *start.parents):
            if (d / DIRNAME).is_dir():
                repo = cls(d / DIRNAME)
                if check:
                    repo.config
                return repo
        raise NotARepository(f"not a memedit repository: no {DIRNAME}/ in {start} or its parents. "
                             "Run `memedit init` there, or pass -C DIR")

    @classmethod
    def create(cls, workdir: Path, config: dict) -> "Repo":
        root = Path(workdir) / DIRNAME
        if root.exists():
            raise UserError(f"{root} already exists; this directory already holds a memedit repository")
        tmp = Path(workdir) / f".memedit.init-{os.getpid()}"
        (tmp / "objects").mkdir(parents=True)
        (tmp / "cache").mkdir()
        write_atomic(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True).encode() + b"\n")
        (tmp / "log.jsonl").write_bytes(b"")
        (tmp / "reflog.jsonl").write_bytes(b"")
        write_atomic(tmp / "HEAD", b"base\n")
        os.replace(tmp, root)  # the repository appears whole or not at all
        fsync_dir(Path(workdir))
        return cls(root)

    @property
    def config(self) -> dict:
        try:
            cfg = json.loads((self.root / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise DamagedRepository(f"{self.root}/config.json cannot be read ({e})") from None
        if cfg.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{self.root} has format version {cfg.get('format_version')}; "
                            f"this memedit reads version {FORMAT_VERSION}. Upgrade memedit")
        return cfg

    # -- the log ----------------------------------------------------------------

    def read_log_bytes(self) -> bytes:
        try:
            return (self.root / "log.jsonl").read_bytes()
        except FileNotFoundError:
            raise DamagedRepository(f"{self.root}/log.jsonl is missing") from None

    @property
    def records(self) -> list[dict]:
        """All records in log order. Any damage raises: no state is computed from a damaged log."""
        if self._records is None:
            data = self.read_log_bytes()
            if data and not data.endswith(b"\n") and self._writer_active():
                data = data[: data.rfind(b"\n") + 1]  # another process's append in flight: not there yet
            records, problems = logmod.scan(data)
            if problems:
                raise DamagedRepository(f"damaged log: {problems[0]}",
                                        "run `memedit fsck` (docs/repair.md says how to repair)")
            self._records = records
            self._by_id = {r["id"]: r for r in records}
        return self._records

    def _writer_active(self) -> bool:
        """Whether another process holds the writer lock now (this one is not the writer: it would hold it)."""
        try:
            fd = os.open(self.root / "lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def record(self, rid: str) -> dict:
        self.records
        if rid not in self._by_id:
            raise DamagedRepository(f"record {rid[:12]} is not in the log")
        return self._by_id[rid]

    def append(self, fields: dict) -> dict:
        """Append a record (objects must already be stored) and move HEAD to it. Caller holds the lock
        (`lock` re-reads the log when taken, so the records in hand are the whole log)."""
        if fields.get("parent") != self.head():
            raise UserError("HEAD moved while this command ran; run it again")
        rec = logmod.make_record(fields)
        append_line(self.root / "log.jsonl", canonical(rec))  # the bytes the id was hashed over
        self.records.append(rec)
        self._by_id[rec["id"]] = rec
        self.set_head(rec["id"], f"{rec['op']}: {len(rec.get('facts', []))} fact(s)")
        return rec

    # -- HEAD and the reflog ------------------------------------------------------

    def head(self) -> str | None:
        """The current revision id, or None for the base model."""
        try:
            value = (self.root / "HEAD").read_text().strip()
        except FileNotFoundError:
            raise DamagedRepository(f"{self.root}/HEAD is missing") from None
        if value == BASE:
            return None
        self.records
        if not re.fullmatch(r"[0-9a-f]{64}", value) or value not in self._by_id:
            raise DamagedRepository(f"HEAD names {value[:20]!r}, which is not a record in the log")
        return value

    def set_head(self, rid: str | None, reason: str) -> None:
        try:
            old = (self.root / "HEAD").read_text().strip()
        except FileNotFoundError:
            raise DamagedRepository(f"{self.root}/HEAD is missing") from None
        write_atomic(self.root / "HEAD", f"{rid or BASE}\n".encode())
        entry = {"time": logmod.now(), "from": old, "to": rid or BASE, "reason": reason}
        append_line(self.root / "reflog.jsonl", canonical(entry))

    # -- revisions ------------------------------------------------------------------

    def resolve(self, rev: str) -> str | None:
        """`base`, `HEAD`, `HEAD~N`, `HEAD^`, an id prefix (4+ hex chars), or any of these with `~N`."""
        rev = rev.strip()
        m = _ANCESTOR.match(rev)
        if m:
            rid = self.resolve(m.group(1))
            steps = sum(int(p[1:] or 1) if p.startswith("~") else 1 for p in re.findall(r"~\d*|\^", m.group(2)))
            for _ in range(steps):
                if rid is None:
                    raise RevisionError(f"{rev!r} goes back past the base model; `memedit log` shows the history")
                rid = self.record(rid)["parent"]
            return rid
        if rev == BASE:
            return None
        if rev == "HEAD":
            return self.head()
        if not _HEX.match(rev):
            raise RevisionError(f"{rev!r} is not a revision: "
                                "use an id prefix of 4+ hex characters, HEAD, HEAD~N or base")
        hits = [r["id"] for r in self.records if r["id"].startswith(rev)]
        if not hits:
            raise RevisionError(f"no revision starts with {rev!r}; `memedit log` lists them")
        if len(hits) > 1:
            raise RevisionError(f"{rev!r} is ambiguous: it starts {len(hits)} revisions "
                                f"({', '.join(h[:12] for h in hits)}); give more characters")
        return hits[0]

    def chain(self, rid: str | None) -> list[dict]:
        """Records from the first to `rid`, following parents (a checkout can fork the history)."""
        self.records
        by_id = self._by_id
        out = []
        while rid is not None:
            rec = by_id[rid]
            out.append(rec)
            rid = rec["parent"]
        return out[::-1]

    def segments_at(self, rid: str | None) -> list[dict]:
        """The ordered segments whose attachment to the base gives the state at `rid`."""
        segs: list[dict] = []
        for rec in self.chain(rid):
            if rec["op"] == "apply":
                segs.extend(rec["segments"])  # in place: a copy per record would be O(N²) at N records
            else:  # forget: keep the untouched prefix, then the segments it rebuilt
                segs = segs[: rec["keep"]] + rec["rebuilt"]
        return segs

    def facts_at(self, rid: str | None) -> dict[str, dict]:
        """Active facts at `rid`, in application order: id -> fact JSON."""
        known: dict[str, dict] = {}
        for rec in self.chain(rid):
            if rec["op"] == "apply":
                known.update({f["id"]: f for f in rec["facts"]})
        return {fid: known[fid] for seg in self.segments_at(rid) for fid in seg["facts"]}

    # -- the writer lock ------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, command: str, timeout: float | None = None):
        """Exclusive writer lock. The kernel drops a flock when its process dies, so a
        killed writer never leaves a stale lock; the file's text only says who holds it."""
        if timeout is None:
            raw = os.environ.get("MEMEDIT_LOCK_TIMEOUT", "300")
            try:
                timeout = float(raw)
            except ValueError:
                raise UserError(f"MEMEDIT_LOCK_TIMEOUT={raw!r} is not a number of seconds; "
                                "unset it or set e.g. 60") from None
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    if time.monotonic() >= deadline:
                        raise LockedError(f"the repository is locked by {holder}; waited {timeout:.0f}s. "
                                          "Try again when it finishes (MEMEDIT_LOCK_TIMEOUT sets the wait)") from None
                    if not told:
                        print(f"memedit: waiting for the lock held by {holder}", file=sys.stderr)
                        told = True
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} (memedit {command})".encode(), 0)
            self._records = None  # another writer may have appended while we waited
            yield self
        finally:
            os.close(fd)  # releases the flock
