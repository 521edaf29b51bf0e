"""Watching the client's process: the server ends when the editor that started it has died.

The LSP spec has the client send its ``processId`` in ``initialize`` so that a server can
exit when its parent process is gone, even while something else (a wrapper, a child of the
dead editor) still holds the server's pipes open and input never ends. The pid is polled
every ``POLL_S`` seconds with signal 0 (which only checks that it exists); a pid that is
not there at ``initialize`` is not watched, as the client may run in another PID namespace
(a container) where its pid means nothing here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("codellama_lsp")

POLL_S = 2.0


def watch_client(server: Any, pid: int | None) -> None:
    """From the ``initialize`` handler: end the session once the process ``pid`` has ended (None: nothing to watch)."""
    if pid is None or pid <= 0 or pid == os.getpid():
        return
    if not alive(pid):
        log.info("the client's process %d is not visible from this server; it is not watched", pid)
        return
    asyncio.ensure_future(_watch(server, pid))


async def _watch(server: Any, pid: int) -> None:
    while alive(pid):
        await asyncio.sleep(POLL_S)
    server.protocol.stop_serving(f"the client's process {pid} has ended")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie (ended, not yet reaped by its parent) is not."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # it exists, under another user
        return True
    except (OSError, OverflowError):
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux's process state "Z"; elsewhere (no /proc) a zombie counts as running until it is reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
