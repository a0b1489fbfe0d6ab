"""A run directory's files, shared by ``search`` and ``train``: one process at a time (an exclusive lock held for
the run's life), ``log.jsonl`` written in whole lines and read back despite a torn last line, and the orphans of a
save that was killed removed at the next start.

Example::

    with RunLock(run_dir):           # a second run on run_dir is refused, naming this one's PID
        remove_orphans(run_dir)
        append_line(run_dir / "log.jsonl", {"epoch": 1})
    records = read_log(run_dir)      # a torn last line is dropped with a warning naming the file
"""

import fcntl
import json
import logging
import os
from pathlib import Path

from .checkpoint import TMP_PREFIX, atomic_write_text, file_mode

LOCK_FILE = ".lock"
log = logging.getLogger(__name__)


class RunLocked(RuntimeError):
    """Another live process holds the run directory."""


class RunLock:
    """``fcntl.flock`` on ``run_dir/.lock`` while active: the OS releases it when the process dies, so a killed
    run never leaves a stale lock. The file holds the holder's PID, for the refusal's message."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent} is in use by another dnas-fast run (PID {holder}); wait for it to end or pick "
                "another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor releases the lock
        self._fd = None
        return False


def remove_orphans(run_dir) -> list[Path]:
    """Delete the temporary files of atomic writes a kill interrupted (call under :class:`RunLock`)."""
    orphans = sorted(Path(run_dir).glob(TMP_PREFIX + "*"))
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def append_line(path, record: dict) -> None:
    """Append ``record`` as one JSON line in one write, flushed and fsynced: a crash or a full disk leaves at most
    a torn last line, which :func:`read_log` drops."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(run_dir) -> list[dict]:
    """The records of ``run_dir/log.jsonl``. A torn last line (a crash mid-append) is dropped with a warning
    naming the file; any other line that is not a JSON object is a ValueError naming the file and line."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {run_dir}: is it a dnas-fast run directory?")
    raw = path.read_bytes()
    lines = raw.decode(errors="replace").split("\n")
    torn = not raw.endswith(b"\n") and lines[-1].strip()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if torn and number == len(lines):
                log.warning("%s: dropped a torn last line (%d bytes), written when a run was stopped", path, len(line))
                break
            raise ValueError(f"{path} line {number} is not JSON ({err}): the log is corrupt") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} is not a JSON object: the log is corrupt")
        records.append(record)
    return records


def truncate_log(run_dir, epochs_done: int) -> None:
    """Keep the header and the lines of the epochs a checkpoint holds (a run killed between its log line and its
    checkpoint wrote one more), rewritten atomically."""
    path = Path(run_dir) / "log.jsonl"
    if path.exists():
        kept = [r for r in read_log(run_dir) if r.get("epoch", 0) <= epochs_done]  # the header has no epoch
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


__all__ = ["RunLock", "RunLocked", "append_line", "read_log", "remove_orphans", "truncate_log"]
