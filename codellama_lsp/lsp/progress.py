"""Loading's progress shown in the editor: LSP work-done progress, and a message when it fails."""

from __future__ import annotations

import asyncio
import logging
import uuid

from lsprotocol import types
from pygls.lsp.server import LanguageServer

log = logging.getLogger("codellama_lsp")


class LspProgress:
    """Loading reported as work-done progress (when the client supports it) and an error message."""

    def __init__(self, server: LanguageServer) -> None:
        self.server = server

    async def begin(self, message: str) -> str | None:
        caps = self.server.client_capabilities.window
        if not (caps and caps.work_done_progress):
            return None
        token = f"codellama-load-{uuid.uuid4()}"
        try:
            await asyncio.wait_for(self.server.work_done_progress.create_async(token), 5)
        except Exception as exc:  # noqa: BLE001 - progress is a nicety; loading goes on without it
            log.warning("window/workDoneProgress/create failed: %s", exc)
            return None
        self.server.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="codellama-lsp", message=message))
        return token

    def end(self, handle: object | None, state: str) -> None:
        if isinstance(handle, str):
            self.server.work_done_progress.end(handle, types.WorkDoneProgressEnd(message=state))

    def failed(self, message: str) -> None:
        self.server.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=message))
