"""Send the server's log to the editor as ``window/logMessage``, each record with its level.

Editors file a language server's stderr as errors: Neovim writes every stderr chunk to
``:LspLog`` as ``[ERROR]``, so a healthy session's INFO lines ("loading model", "model
ready") read as failures. Through ``window/logMessage`` each record keeps its level (Error,
Warning, Info, Debug), and the editor shows it in its own LSP log at that level.
"""

from __future__ import annotations

import asyncio
import collections
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

    Until the client has sent ``initialize`` the server may not notify it, so records are held
    (at most ``HELD``) and sent once ``attach`` is called from the ``initialize`` handler, on
    the server's event loop. From then on every record, whatever thread logs it (the model
    loads on its own), is handed to that loop with ``loop.call_soon_threadsafe``: no thread but
    the loop's ever writes to the client, and a thread that logs never waits for the loop.
    Records that cannot be sent (too many held, no connection, the loop gone) go to
    ``fallback`` (stderr), and so do records still held when the handler closes: nothing is
    lost silently.
    """

    HELD = 200

    def __init__(self, server: "LanguageServer", fallback: TextIO | None = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.server = server
        self.setFormatter(logging.Formatter(MESSAGE_FORMAT))
        self._fallback = logging.StreamHandler(fallback or sys.__stderr__)
        self._fallback.setFormatter(logging.Formatter(FALLBACK_FORMAT))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: collections.deque[logging.LogRecord] = collections.deque()
        self._held_lock = threading.Lock()
        # Set while a message is being written: a record logged by the writing itself (pygls
        # on a failed write) must not be sent again, or one failure would feed itself.
        self._sending = threading.local()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start sending (called on ``loop``, from the ``initialize`` handler); held records go first."""
        with self._held_lock:
            self._loop = loop
            held, self._held = list(self._held), collections.deque()
        for record in held:
            self._hand_over(loop, record)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "active", False):
            self._fallback.handle(record)
            return
        with self._held_lock:
            loop = self._loop
            if loop is None:
                if len(self._held) < self.HELD:
                    self._held.append(record)
                    return
                loop = None
        if loop is None:
            self._fallback.handle(record)
            return
        self._hand_over(loop, record)

    def _hand_over(self, loop: asyncio.AbstractEventLoop, record: logging.LogRecord) -> None:
        if loop.is_closed():
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

    def close(self) -> None:
        """At exit: records that were never sent (no ``initialize`` came) go to the fallback."""
        with self._held_lock:
            held, self._held = list(self._held), collections.deque()
        for record in held:
            self._fallback.handle(record)
        self._fallback.flush()
        super().close()


def attach_to_running_loop() -> None:
    """Let the root logger's ``LspLogHandler`` (if logging goes to the client) start sending.

    Called by the ``initialize`` handler: the first moment the server may notify the client,
    and one that runs on the server's event loop.
    """
    loop = asyncio.get_running_loop()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LspLogHandler):
            handler.attach(loop)
