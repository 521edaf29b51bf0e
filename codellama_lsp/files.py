"""Files written whole or not at all, nothing half-written left behind, and reads that cannot hang.

A file in the cache (the assembled model, its verification record, the batch-invariance
memo) is written to a temporary file beside it and renamed into place, so a reader sees
the old file or the new one, never part of one. A process that dies mid-way must not leave
its temporary file forever (the model's is up to 491 MB):

* while it writes, a process holds an exclusive ``flock`` on its temporary file. The
  kernel releases it when the process ends, however it ends (``kill -9`` included), so
  ``sweep`` can tell a dead writer's file (it can take the lock: removed) from a live
  concurrent writer's (it cannot: left alone), without trusting pids that may be reused;
* on SIGTERM, ``remove_partial`` (installed by ``install_sigterm_cleanup``) removes this
  process's temporary files before it dies as SIGTERM would have killed it.

``read_regular`` reads a file only when the opened file is a regular one within a size
limit: a path swapped for a FIFO (a plain read would wait for a writer forever) or a
symbolic link to ``/dev/zero`` (endless) is refused, whatever it was when last looked at.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import stat
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import BinaryIO, Iterator

log = logging.getLogger("codellama_lsp")

TEMPORARY_SUFFIXES = (".part", ".tmp")  # what ``temporary`` names its files with, and ``sweep`` removes

_partial: set[Path] = set()  # this process's temporary files being written
_partial_lock = threading.Lock()


class Refused(OSError):
    """A file that is not read: not a regular file, or larger than the limit (the message says which)."""


@contextlib.contextmanager
def temporary(target: Path, suffix: str = ".tmp") -> Iterator[tuple[BinaryIO, Path]]:
    """A locked temporary file beside ``target`` for the caller to fill and rename onto it.

    Whatever is still at the temporary path when the block ends (an exception, or no
    rename) is removed; the lock ends with the block.
    """
    out, tmp = _locked_temporary(target, suffix)
    with _partial_lock:
        _partial.add(tmp)
    try:
        with out:
            yield out, tmp
    finally:
        tmp.unlink(missing_ok=True)
        with _partial_lock:
            _partial.discard(tmp)


def _locked_temporary(target: Path, suffix: str) -> tuple[BinaryIO, Path]:
    """A new temporary file, open and locked, that is still at its path once locked.

    A ``sweep`` can take the lock in the moment between creating the file and locking it,
    and remove it; then another one is made.
    """
    while True:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(name))
        except FileNotFoundError:
            same = False
        if same:
            return os.fdopen(fd, "w+b"), Path(name)
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, whole or not at all (OSError when it cannot)."""
    with temporary(path) as (out, tmp):
        out.write(data)
        out.flush()
        os.replace(tmp, path)


def sweep(directory: Path, name: str) -> list[Path]:
    """Remove the temporary files for ``directory / name`` whose writers have ended; the ones removed.

    A file whose lock is held belongs to a live writer and stays. Nothing here is fatal:
    a cache that cannot be listed or changed (read-only) keeps its files.
    """
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for path in entries:
        if path.name.startswith(f".{name}.") and path.name.endswith(TEMPORARY_SUFFIXES) and _remove_if_unlocked(path):
            removed.append(path)
    if removed:
        log.info("removed %d half-written file(s) left in %s by processes that ended: %s", len(removed), directory,
                 ", ".join(p.name for p in removed))
    return removed


def _remove_if_unlocked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            return False
        path.unlink()
        return True
    except OSError:  # locked by a live writer, gone meanwhile, or a read-only cache
        return False
    finally:
        os.close(fd)


def remove_partial() -> None:
    """Remove the temporary files this process is writing (it is about to die)."""
    with _partial_lock:
        paths = list(_partial)
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def install_sigterm_cleanup() -> None:
    """On SIGTERM, remove this process's temporary files, then die of SIGTERM as before.

    Only the main thread may set a handler; elsewhere this does nothing.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: FrameType | None) -> None:
    remove_partial()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def read_regular(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of ``path`` and the status of the file read, if it is a regular file of at most ``limit`` bytes.

    What is checked is the file opened, not an earlier look at the path; opening does not
    wait (``O_NONBLOCK``: a FIFO without a writer opens at once, and is then refused), and
    at most ``limit`` + 1 bytes are read, so a file that grows meanwhile is refused too.
    Raises ``Refused`` (or another OSError when it cannot be opened or read).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise Refused(f"{st.st_size} bytes (more than {limit})")
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise Refused(f"more than {limit} bytes")
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
