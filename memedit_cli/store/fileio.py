"""Crash-safe file writes: temp file, fsync, rename; appends in one write.

`MEMEDIT_CRASH_AT=N` (tests only) kills the process with SIGKILL at the N-th
file-operation step of this run, so the crash harness (tests/test_crash.py)
can stop a command between any two steps and check that the repository is in
the state before or the state after.
"""

import os
import signal
from pathlib import Path

_steps = 0


def crash_point() -> None:
    """A step between two file operations: where MEMEDIT_CRASH_AT may kill the process."""
    global _steps
    at = os.environ.get("MEMEDIT_CRASH_AT")
    if not at:
        return
    _steps += 1
    if _steps == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Readers see the old file or the whole new one, never a part. `durable=False` skips the fsyncs:
    for derived data whose reader checks it (the state cache), where a power cut may lose the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    crash_point()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        crash_point()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point()
    if durable:
        fsync_dir(path.parent)


def append_line(path: Path, line: bytes) -> None:
    """Append one newline-terminated line in one write (O_APPEND), then fsync.

    The cost does not grow with the file (a log of 10,000 records is not rewritten per record).
    The line and its newline go in one write() call, so a line without its newline at the end
    of the file is an append in flight or one cut short by a crash: readers skip it while the
    writer lock is held (`Repo.records`) and report it otherwise (fsck; docs/repair.md).
    """
    data = line + b"\n"
    crash_point()
    fd = os.open(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        done = os.write(fd, data)
        while done < len(data):  # a short write (a full disk raises instead)
            done += os.write(fd, data[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    crash_point()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
