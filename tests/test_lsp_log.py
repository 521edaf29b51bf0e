"""lsp.log.LspLogHandler: records reach the client as window/logMessage, from any thread."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

from pygls.lsp.server import LanguageServer

from codellama_lsp.lsp.log import LspLogHandler


class Capture:
    """A protocol writer that keeps what the server writes (framed JSON-RPC)."""

    def __init__(self, fail: bool = False) -> None:
        self.data = b""
        self.fail = fail
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.fail:
            raise BrokenPipeError("the client went away")
        self.data += data

    def close(self) -> None:
        pass

    def messages(self) -> list[dict]:
        out, rest = [], self.data
        while rest:
            header, _, rest = rest.partition(b"\r\n\r\n")
            length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            out.append(json.loads(rest[:length]))
            rest = rest[length:]
        return out


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"codellama_lsp.test_lsp_log.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return log


def test_held_until_initialize_then_levels_and_other_threads() -> None:
    server = LanguageServer("t", "0")
    writer = Capture()
    fallback = io.StringIO()
    handler = LspLogHandler(server, fallback=fallback)
    log = _logger(handler)

    log.info("before initialize")  # the server may not notify the client yet: held, not written

    async def main() -> None:
        server.protocol.set_writer(writer)
        log.debug("still before")
        await asyncio.sleep(0)
        assert writer.data == b""
        handler.attach(asyncio.get_running_loop())  # what the initialize handler does
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e %s", "x")
        worker = threading.Thread(target=lambda: [log.info("thread %d", k) for k in range(50)])
        worker.start()
        await asyncio.get_running_loop().run_in_executor(None, worker.join)
        await asyncio.sleep(0)  # the loop runs the sends the thread handed it

    asyncio.run(main())
    sent = [(m["params"]["type"], m["params"]["message"]) for m in writer.messages() if m.get("method") == "window/logMessage"]
    prefix = f"{log.name}: "
    assert sent[:6] == [(3, prefix + "before initialize"), (5, prefix + "still before"), (5, prefix + "d"),
                        (3, prefix + "i"), (2, prefix + "w"), (1, prefix + "e x")]
    # Every record from the other thread arrived, in order, written by the loop.
    assert [m for _, m in sent[6:]] == [f"{prefix}thread {k}" for k in range(50)]
    assert fallback.getvalue() == ""


def test_never_initialized_records_go_to_stderr_at_exit() -> None:
    fallback = io.StringIO()
    handler = LspLogHandler(LanguageServer("t", "0"), fallback=fallback)
    log = _logger(handler)
    for k in range(LspLogHandler.HELD + 3):
        log.info("early %d", k)
    assert fallback.getvalue().count("early") == 3  # past what is held: written at once
    handler.close()
    assert fallback.getvalue().count("early") == LspLogHandler.HELD + 3


def test_a_failed_write_falls_back_without_feeding_itself() -> None:
    """The client is gone: the record goes to stderr, and pygls' own log of the failed write
    (which reaches this handler too) is not sent again, so one failure stays one failure."""
    server = LanguageServer("t", "0")
    fallback = io.StringIO()
    handler = LspLogHandler(server, fallback=fallback)
    log = _logger(handler)
    writer = Capture(fail=True)
    pygls_log = logging.getLogger("pygls")
    pygls_log.addHandler(handler)
    try:
        async def main() -> None:
            server.protocol.set_writer(writer)
            handler.attach(asyncio.get_running_loop())
            log.warning("cannot be written")
            for _ in range(20):
                await asyncio.sleep(0)

        asyncio.run(main())
    finally:
        pygls_log.removeHandler(handler)
    text = fallback.getvalue()
    assert "WARNING" in text and "cannot be written" in text, text
    assert writer.writes == 1, text
