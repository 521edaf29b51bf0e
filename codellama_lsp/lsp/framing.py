"""LSP base-protocol framing: a reader that survives any byte stream, and a writer of strict JSON.

pygls' own read loop (``pygls.io_.run_async``) matches one exact header spelling,
allocates whatever a ``Content-Length`` says, and on any other input silently waits
forever; it also parses every nested object with a JSON-RPC hook. This module replaces
that loop for stdio and TCP:

* Headers follow the LSP base protocol (``name: value`` lines ending in CRLF, then an
  empty line). Names are case-insensitive and the space after the colon is optional, as
  in HTTP (RFC 9110 section 5.1, RFC 9112 section 5). Unknown headers are ignored.
* A frame that cannot be delimited (no, duplicated, negative, non-numeric or oversized
  ``Content-Length``, a header line ending in a bare LF, bytes that are not a header) is
  logged once, and the reader resynchronises at the next ``Content-Length`` header.
  Bytes skipped meanwhile are discarded as they arrive, so no declared length is ever
  allocated: a frame above ``MAX_FRAME_BYTES`` costs nothing but the time to read it.
* A ``Content-Length`` that runs into the next frame's header (too large) is detected
  when that header arrives, and the bytes before it are handed on as a broken frame so
  a request in them can still be answered. One that is too small leaves a body that
  does not parse (answered with a parse error) and garbage before the next header.
* A frame that stays incomplete while the input is quiet is logged (``STALL_SECONDS``)
  rather than waited on in silence; if what arrived is already a whole JSON message the
  frame is handed on as broken, so its request is answered instead of hanging.

JSON is parsed strictly (``loads``): UTF-8 only, no NaN/Infinity, no number that would
become infinite. The writer (``dumps``) refuses non-finite numbers too, so every byte
on stdout is standard JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from pygls.server import JsonRPCServer

log = logging.getLogger("codellama_lsp.framing")

MAX_FRAME_BYTES = 64 * 2**20  # one message's body; a 64 MiB didOpen is far beyond any source file
MAX_HEADER_BYTES = 8 * 2**10  # a whole header block
STALL_SECONDS = 2.0  # an incomplete frame this long without input is logged (and handed on if whole)
READ_CHUNK = 1 << 16
MAX_ECHO = 200  # characters of client-sent text repeated in a log line or an error message

# Where a header block may start, for resynchronising: the one header every frame has.
_RESYNC = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
# A complete Content-Length header line, for spotting the next frame inside a body that is too long.
_NEXT_HEADER = re.compile(rb"content-length[ \t]*:[ \t]*[0-9]+[ \t]*\r\n", re.IGNORECASE)
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr`` of client-sent text, cut to ``limit`` characters: a 3 MB method name must not reach the log whole."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    shown = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{shown}… ({len(text)} characters)"


class CappedFormatter(logging.Formatter):
    """Log lines cut to ``limit`` characters, tracebacks included.

    The last line of defence for item-by-item caps: pygls logs exceptions whose messages
    repeat what the client sent (a 3 MB method or command name), and one such line must
    not cost megabytes of log per message.
    """

    def __init__(self, fmt: str | None = None, limit: int = 8000) -> None:
        super().__init__(fmt)
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if len(text) <= self.limit:
            return text
        half = self.limit // 2
        return f"{text[:half]} … [{len(text) - 2 * half} characters cut] … {text[-half:]}"


@dataclass(frozen=True)
class Message:
    """A well-delimited frame whose body parsed as JSON."""

    value: Any


@dataclass(frozen=True)
class BrokenFrame:
    """Bytes that are not a well-formed frame, and why.

    ``body`` is set when there is something that may be a message: a body that does not
    parse (``parse_error``; JSON-RPC answers -32700), or a whole message whose
    Content-Length was wrong (answerable by its id).
    """

    error: str
    body: bytes | None = None
    parse_error: bool = False


Event = Message | BrokenFrame


class FrameParser:
    """Splits a byte stream into messages; never raises, never buffers more than a frame (or a header block).

    ``feed`` takes bytes as they arrive and returns what they completed. The parser is in
    one of three states: reading a header block, reading a body of known length, or
    skipping to the next ``Content-Length`` header after an error.
    """

    def __init__(self, max_frame: int = MAX_FRAME_BYTES, max_header: int = MAX_HEADER_BYTES) -> None:
        self.max_frame = max_frame
        self.max_header = max_header
        self._buf = bytearray()
        self._length: int | None = None  # reading a body of this many bytes
        self._searched = 0  # body bytes already searched for a following header
        self._skipping = False
        self._skipped = 0
        self._skip_from = 0

    @property
    def idle(self) -> bool:
        """Between frames, with nothing buffered."""
        return self._length is None and not self._skipping and not self._buf

    def describe(self) -> str:
        """Where the parser is, for the log when input stalls or ends."""
        if self._length is not None:
            return f"a frame with Content-Length {self._length} has {len(self._buf)} bytes so far"
        if self._skipping:
            return f"skipped {self._skipped} bytes looking for the next Content-Length header"
        return f"{len(self._buf)} bytes of an incomplete header block"

    def stalled(self) -> BrokenFrame | None:
        """The input went quiet mid-body: hand on the partial body if it already is a whole message.

        A client that sent a Content-Length larger than its body would otherwise wait for
        an answer while the server waits for the rest of the body.
        """
        if self._length is None or not self._buf:
            return None
        try:
            loads(bytes(self._buf))
        except ParseError:
            return None
        length, body = self._length, bytes(self._buf)
        self._done(len(body))
        return BrokenFrame(f"Content-Length is {length} but the {len(body)}-byte body is a whole JSON message "
                           f"and nothing followed it for {STALL_SECONDS:g} s (Content-Length counts the body's "
                           "UTF-8 bytes)", body)

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while True:
            if self._skipping:
                if not self._skip():
                    return events
                continue
            event = self._header() if self._length is None else self._body()
            if event is None:
                return events
            if not isinstance(event, bool):
                events.append(event)

    def _error(self, message: str, block: int = 0) -> BrokenFrame:
        """A frame that cannot be delimited: drop its ``block`` header bytes and skip to the next Content-Length
        header (a second Content-Length in the same block is no better than the first)."""
        del self._buf[:block]
        self._skipping, self._skipped, self._length = True, block, None
        self._skip_from = 0 if block else 1  # the offending header is gone, or it is at offset 0: not there again
        return BrokenFrame(message)

    def _skip(self) -> bool:
        """Drop bytes up to the next Content-Length header; False when more input is needed."""
        found = _NEXT_HEADER.search(self._buf, self._skip_from)
        if found is None:
            drop = max(self._skip_from, len(self._buf) - 64)  # keep enough for a header line split across reads
            drop = min(drop, len(self._buf))
            self._skip_from = 0
            self._skipped += drop
            del self._buf[:drop]
            return False
        self._skipped += found.start()
        log.debug("framing: resynchronised at a Content-Length header after skipping %d bytes", self._skipped)
        del self._buf[: found.start()]
        self._skipping = False
        return True

    def _header(self) -> BrokenFrame | bool | None:
        """Parse a complete header block: True when a body follows, None when more input is needed."""
        buf = self._buf
        while buf.startswith(b"\r\n"):  # a stray line end between frames is harmless
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        lf = buf.find(b"\n", 0, end + 4 if end >= 0 else len(buf))
        if lf >= 0 and (lf == 0 or buf[lf - 1] != 0x0D):
            line = bytes(buf[:lf])
            if not _FIELD.fullmatch(line):
                return self._error(f"bytes before a header, starting {echo(line[:40])}")
            return self._error(f"header line {echo(line[:60])} ends with a bare LF; LSP header lines end with CRLF")
        if end < 0:
            first = bytes(buf[: buf.find(b"\r")]) if b"\r" in buf else bytes(buf)
            if len(buf) > self.max_header:
                return self._error(f"no end of the header block within {self.max_header} bytes")
            if buf and not _could_start_header(first):
                return self._error(f"bytes before a header, starting {echo(first[:40])}")
            return None
        if end > self.max_header:
            return self._error(f"a header block of {end} bytes exceeds {self.max_header}")
        length: int | None = None
        digits = 0
        for i, line in enumerate(bytes(buf[:end]).split(b"\r\n")):
            m = _FIELD.fullmatch(line)
            if m is None:
                return self._error(f"{'bytes before a header' if i == 0 else 'malformed header line'}: "
                                   f"{echo(line[:60])}", end + 4 if i else 0)
            name, value = m.group(1).lower(), m.group(2)
            if name == b"content-length":
                if length is not None:
                    return self._error("Content-Length given twice in one header block", end + 4)
                if not value.isdigit():
                    return self._error(f"Content-Length {echo(value[:40])} is not a non-negative integer", end + 4)
                # No int() of a million-digit value: anything over 20 digits is over the maximum anyway.
                length, digits = (int(value) if len(value) <= 20 else self.max_frame + 1), len(value)
            elif name == b"content-type":
                charset = re.search(rb"charset\s*=\s*\"?([^\";\s]+)", value, re.IGNORECASE)
                if charset and charset.group(1).lower().replace(b"-", b"") != b"utf8":
                    log.warning("framing: Content-Type charset %s ignored: bodies are read as UTF-8",
                                echo(charset.group(1).decode("latin-1")))
        if length is None:
            return self._error("a header block without Content-Length", end + 4)
        if length > self.max_frame:
            shown = length if digits <= 20 else f"of {digits} digits"
            return self._error(f"Content-Length {shown} exceeds the {self.max_frame}-byte maximum frame; "
                               "the frame is skipped", end + 4)
        del buf[: end + 4]
        self._length, self._searched = length, 0
        return True

    def _body(self) -> Event | None:
        assert self._length is not None
        buf, n = self._buf, self._length
        if len(buf) < n:
            # The next frame's header inside the declared body: the length was too large.
            found = _NEXT_HEADER.search(buf, max(0, self._searched - 64))
            self._searched = len(buf)
            if found is None:
                return None
            return self._overrun(found.start())
        body = bytes(buf[:n])
        try:
            value = loads(body)
        except ParseError as exc:
            found = _RESYNC.search(body)
            at = found.start() if found is not None else _header_start_at_end(body)
            if at is not None:  # the next frame's header inside the body: the length was too large
                return self._overrun(at)
            self._done(n)
            return BrokenFrame(f"parse error: {exc}", body, parse_error=True)
        self._done(n)
        return Message(value)

    def _overrun(self, at: int) -> BrokenFrame:
        length, body = self._length, bytes(self._buf[:at])
        self._done(at)
        return BrokenFrame(f"Content-Length is {length} but a Content-Length header follows after {at} bytes of "
                           "body (Content-Length counts the body's UTF-8 bytes)", body)

    def _done(self, consumed: int) -> None:
        del self._buf[:consumed]
        self._length, self._searched = None, 0


def _header_start_at_end(body: bytes) -> int | None:
    """Where the body's last bytes begin a ``Content-Length`` header cut off by a too-large length, if they do."""
    tail = body[-len(b"content-length"):].lower()
    for i in range(len(tail)):
        if b"content-length".startswith(tail[i:]):
            return len(body) - len(tail) + i
    return None


def _could_start_header(first_line: bytes) -> bool:
    """Whether an incomplete first line can still become ``name: value``."""
    name, colon, _ = first_line.partition(b":")
    return re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]*", name) is not None and (bool(colon) or len(name) <= 64)


# -- strict JSON ------------------------------------------------------------------------------------------

class ParseError(ValueError):
    """A body that is not standard JSON in UTF-8."""


def _constant(name: str) -> Any:
    raise ParseError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ParseError(f"number {echo(text, 40)} is out of range")
    return value


def loads(body: bytes) -> Any:
    """Parse ``body`` as standard JSON: UTF-8, no NaN or Infinity, no number that overflows to infinity."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite)
    except ParseError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digits limit, nesting
        raise ParseError(str(exc).splitlines()[0][:MAX_ECHO] if str(exc) else type(exc).__name__) from None


def dumps(message: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """A framed message: the JSON body (non-finite numbers refused with ValueError) and its header."""
    body = json.dumps(message, default=default, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


# -- I/O --------------------------------------------------------------------------------------------------

class FrameWriter:
    """Writes whole frames to a binary stream; one lock, so frames from several threads never interleave."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._stream.write(data)
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            try:
                self._stream.close()
            except OSError:
                pass


class AsyncFrameWriter:
    """The same for an asyncio stream (TCP)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.close()


async def serve(server: "JsonRPCServer", read: Callable[[], Awaitable[bytes]], max_frame: int = MAX_FRAME_BYTES) -> None:
    """Read frames until end of input (or the server stops, or ``protocol.stop_serving`` is called: the client's
    output or process is gone) and hand each to the protocol.

    The protocol must provide ``handle_json(value)`` for each message and
    ``handle_broken_frame(frame)`` for the rest (``codellama_lsp.protocol.CodeLlamaProtocol`` does).
    """
    protocol: Any = server.protocol
    parser = FrameParser(max_frame=max_frame)
    stop = server._stop_event
    stopped = _stopper(protocol)
    pending: asyncio.Future[bytes] | None = None
    warned = False
    while stop is None or not stop.is_set():
        if pending is None:
            pending = asyncio.ensure_future(read())
        done, _ = await asyncio.wait({pending, stopped}, timeout=None if parser.idle else STALL_SECONDS,
                                     return_when=asyncio.FIRST_COMPLETED)
        if stopped.done():
            log.warning("%s; stopping", stopped.result())
            break
        if pending not in done:  # quiet mid-frame
            broken = parser.stalled()
            if broken is not None:
                log.error("framing: %s", broken.error)
                protocol.handle_broken_frame(broken)
            elif not warned:
                log.warning("framing: no input for %g s and %s; waiting", STALL_SECONDS, parser.describe())
                warned = True
            continue
        try:
            data = pending.result()
        except (OSError, ValueError) as exc:  # the stream broke or was closed under us
            log.info("input ended: %s", exc)
            break
        pending, warned = None, False
        if not data:
            if not parser.idle:
                log.error("framing: input ended mid-frame: %s", parser.describe())
            break
        for event in parser.feed(data):
            if isinstance(event, Message):
                protocol.handle_json(event.value)
            else:
                log.error("framing: %s", event.error)
                protocol.handle_broken_frame(event)
            # As pygls' loop did between reads: a handler started by this message runs up to its first
            # await before the next message is applied, so a request sees the document it was sent for.
            await asyncio.sleep(0)


def _stopper(protocol: Any) -> "asyncio.Future[str]":
    """A future that ``protocol.stop_serving(reason)`` settles, from any thread: it ends ``serve``'s loop."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()

    def settle(reason: str) -> None:
        if not stopped.done():
            stopped.set_result(reason)

    def on_stop(reason: str) -> None:
        try:
            loop.call_soon_threadsafe(settle, reason)
        except RuntimeError:  # the loop has closed: serving has ended already
            pass

    protocol.on_stop = on_stop
    return stopped


def start_stdio(server: "JsonRPCServer", stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """Serve LSP over ``stdin``/``stdout`` until input ends; pygls' ``start_io`` with this module's reader."""
    server._stop_event = threading.Event()
    server.protocol.set_writer(FrameWriter(stdout), include_headers=True)
    fd = stdin.fileno()
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codellama-stdin")

    async def read() -> bytes:
        return await asyncio.get_running_loop().run_in_executor(reader, os.read, fd, READ_CHUNK)

    log.debug("serving LSP on stdio (frames up to %d bytes)", MAX_FRAME_BYTES)
    try:
        asyncio.run(serve(server, read))
    except BrokenPipeError:
        log.error("the client closed its end of stdout; stopping")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        reader.shutdown(wait=False)
        server.shutdown()


def start_tcp(server: "JsonRPCServer", host: str, port: int) -> None:
    """Serve LSP to TCP clients on ``host``:``port`` with this module's reader (one client at a time)."""
    server._stop_event = stop = threading.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.protocol.set_writer(AsyncFrameWriter(writer), include_headers=True)
        await serve(server, lambda: reader.read(READ_CHUNK))
        server.shutdown()

    async def main() -> None:
        server._server = await asyncio.start_server(connection, host, port)
        log.info("listening on %s:%s", host, port)
        async with server._server:
            await server._server.serve_forever()

    try:
        asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        pass
    finally:
        stop.set()


