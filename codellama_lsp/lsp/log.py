"""Send the server's log to the editor as ``window/logMessage``, each record with its level.

Editors file a language server's stderr as errors: Neovim writes every stderr chunk to
``:LspLog`` as ``[ERROR]``, so a healthy session's INFO lines ("loading model", "model
ready") read as failures. Through ``window/logMessage`` each record keeps its level (Error,
Warning, Info, Debug), and the editor shows it in its own LSP log at that level.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import TYPE_CHECKING, TextIO

from lsprotocol import types

if TYPE_CHECKING:
    from pygls.lsp.server import LanguageServer

MESSAGE_FORMAT = "%(name)s: %(message)s"  # the editor adds its own time stamp and level
FALLBACK_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def message_type(levelno: int) -> types.MessageType:
    """The LSP message type for a logging level (DEBUG is LSP 3.18's Debug)."""
    if levelno >= logging.ERROR:
        return types.MessageType.Error
    if levelno >= logging.WARNING:
        return types.MessageType.Warning
    if levelno >= logging.INFO:
        return types.MessageType.Info
    return types.MessageType.Debug


class LspLogHandler(logging.Handler):
    """Forwards records to the client as ``window/logMessage``.

    The protocol writer belongs to the server's event loop, and records come from any thread
    (the model loads on its own), so every record is handed to the loop with
    ``loop.call_soon_threadsafe``: no thread but the loop's ever writes to the client, and a
    thread that logs never waits for the loop. The loop is learnt from the first record
    logged on it (pygls creates it inside ``start_io``, out of reach before). Records that
    cannot be sent — before that, with no connection, or once the loop is gone — go to
    ``fallback`` (stderr), so nothing is lost silently.
    """

    def __init__(self, server: "LanguageServer", fallback: TextIO | None = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.server = server
        self.setFormatter(logging.Formatter(MESSAGE_FORMAT))
        self._fallback = logging.StreamHandler(fallback or sys.__stderr__)
        self._fallback.setFormatter(logging.Formatter(FALLBACK_FORMAT))
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set while a message is being written: a record logged by the writing itself (pygls
        # on a failed write) must not be sent again, or one failure would feed itself.
        self._sending = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "active", False):
            self._fallback.handle(record)
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            pass  # another thread: use the loop learnt before
        loop = self._loop
        if loop is None or loop.is_closed() or self.server.protocol.writer is None:
            self._fallback.handle(record)
            return
        try:
            params = types.LogMessageParams(type=message_type(record.levelno), message=self.format(record))
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            self.handleError(record)
            return
        try:
            loop.call_soon_threadsafe(self._send, params, record)
        except RuntimeError:  # the loop closed between the check and the call
            self._fallback.handle(record)

    def _send(self, params: types.LogMessageParams, record: logging.LogRecord) -> None:
        """On the loop: write the notification (or fall back when the connection has gone)."""
        if self.server.protocol.writer is None:
            self._fallback.handle(record)
            return
        self._sending.active = True
        try:
            self.server.window_log_message(params)
        except Exception:  # noqa: BLE001 - a broken pipe: the client is gone, keep the record
            self._fallback.handle(record)
        finally:
            self._sending.active = False
