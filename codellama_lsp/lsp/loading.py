"""Loading the backend off the event loop, reporting through a callback interface.

A checkpoint takes seconds to minutes to load; the server keeps answering meanwhile
(completions come back empty, status says "loading"), and a failed load leaves the
server up with the error shown, so the user can fix the setting without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, TypeVar

from codellama_lsp.backends import open_backend
from codellama_lsp.generation import DEFAULT_CONTEXT_LENGTH, Backend
from codellama_lsp.settings import Settings

log = logging.getLogger("codellama_lsp")
T = TypeVar("T")
LoadState = Literal["not loaded", "loading", "ready", "failed"]


@dataclass
class BackendSlot:
    """The backend the server generates with, and how its loading went (shown in codellama.status)."""

    path: Path
    state: LoadState = "not loaded"
    error: str | None = None
    backend: Backend | None = None
    load_ms: float | None = None


class Progress(Protocol):
    """Where loading reports: the server turns these into work-done progress and messages."""

    async def begin(self, message: str) -> object | None: ...
    def end(self, handle: object | None, state: str) -> None: ...
    def failed(self, message: str) -> None: ...


def in_daemon_thread(fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
    """Run ``fn`` on a daemon thread, so a slow load never keeps the process alive at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="codellama-load", daemon=True).start()
    return future


def open_for(path: Path, settings: Settings) -> Backend:
    """The backend ``settings`` ask for, with its model at ``path`` (blocking)."""
    return open_backend(settings.backend, path, device=settings.device, dtype=settings.dtype,
                        context_length=DEFAULT_CONTEXT_LENGTH, url=settings.url, served_model=settings.model,
                        tokenizer=Path(settings.tokenizer).expanduser() if settings.tokenizer else None,
                        api_key_env=settings.api_key_env)


async def load_into(slot: BackendSlot, settings: Settings, progress: Progress) -> None:
    """Load ``slot.path`` as ``settings`` say, recording the outcome in ``slot``; never raises but cancellation."""
    slot.state = "loading"
    handle = await progress.begin(f"Loading model {slot.path}")
    log.info("loading model from %s (device %s, dtype %s)", slot.path, settings.device, settings.dtype)
    t0 = time.perf_counter()
    try:
        backend = await in_daemon_thread(open_for, slot.path, settings)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is reported, the server stays up
        slot.state, slot.error = "failed", str(exc)
        log.error("cannot load the model at %s: %s", slot.path, exc)
        progress.failed(f"codellama-lsp: cannot load the model at {slot.path}: {exc}. Suggestions stay empty "
                        "until the codellama.model setting (or --model) points at a valid checkpoint.")
    else:
        slot.backend, slot.state = backend, "ready"
        slot.load_ms = (time.perf_counter() - t0) * 1000
        log.info("model ready: %s on %s (%s) in %.0f ms", slot.path, backend.device, backend.dtype, slot.load_ms)
    finally:
        progress.end(handle, slot.state)
