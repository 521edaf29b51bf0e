"""Progress shown in the editor as LSP work-done progress: loading's (and a message when it fails), and an
Instruct action's streamed text."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Callable

from lsprotocol import types
from pygls.lsp.server import LanguageServer

log = logging.getLogger("codellama_lsp")
REPORT_EVERY_S = 0.25  # progress reports while streaming: often enough to read along, not a flood


async def created(server: LanguageServer, kind: str) -> str | None:
    """A new work-done progress token, or None when the client has no such progress or does not create it."""
    caps = server.client_capabilities.window
    if not (caps and caps.work_done_progress):
        return None
    token = f"{kind}-{uuid.uuid4()}"
    try:
        await asyncio.wait_for(server.work_done_progress.create_async(token), 5)
    except Exception as exc:  # noqa: BLE001 - progress is a nicety; the work goes on without it
        log.warning("window/workDoneProgress/create failed: %s", exc)
        return None
    return token


class LspProgress:
    """Loading reported as work-done progress (when the client supports it) and an error message."""

    def __init__(self, server: LanguageServer) -> None:
        self.server = server

    async def begin(self, message: str) -> str | None:
        token = await created(self.server, "codellama-load")
        if token is None:
            return None
        self.server.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="codellama-lsp", message=message))
        return token

    def end(self, handle: object | None, state: str) -> None:
        if isinstance(handle, str):
            self.server.work_done_progress.end(handle, types.WorkDoneProgressEnd(message=state))

    def failed(self, message: str) -> None:
        self.server.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=message))


class Streamed:
    """A generation's text as work-done progress: begun and created by the server, reported throttled."""

    def __init__(self, server: LanguageServer, title: str) -> None:
        self.server, self.title = server, title
        self.token: str | None = None
        self.last = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    async def begin(self, on_cancel: Callable[[], None]) -> None:
        token = await created(self.server, "codellama-instruct")
        if token is None:
            return
        self.token, self.loop = token, asyncio.get_running_loop()
        self.server.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title=f"codellama: {self.title}", cancellable=True, message="…"))
        self.server.work_done_progress.tokens[token].add_done_callback(lambda f: f.cancelled() and on_cancel())

    def report(self, text: str) -> None:
        """Called from the engine's thread with the text so far."""
        now = time.monotonic()
        if self.token is None or self.loop is None or now - self.last < REPORT_EVERY_S:
            return
        self.last = now
        token = self.token
        self.loop.call_soon_threadsafe(lambda: self.server.work_done_progress.report(
            token, types.WorkDoneProgressReport(message=text)))

    def end(self, message: str) -> None:
        if self.token is not None:
            self.server.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
            self.server.work_done_progress.tokens.pop(self.token, None)
