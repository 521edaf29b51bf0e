"""A scripted HTTP/1.1 server on 127.0.0.1 that plays recorded inference-server answers.

Tests of the remote backends point them at it: it records each request (path, headers,
JSON body) and answers with a JSON body, a server-sent event stream (optionally slow,
or cut off mid-stream), an HTTP error, or nothing at all. It notices when the client
closes the connection, which is how cancellation shows on the wire.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable

PHRASES = {200: "OK", 401: "Unauthorized", 404: "Not Found", 422: "Unprocessable Entity", 500: "Internal Server Error",
           503: "Service Unavailable"}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able, or bytes sent as they are
    events: list[Any] | None = None  # SSE: each a JSON-able payload, or a raw string after "data:"
    event_delay_s: float = 0.0
    cut_after: int | None = None  # drop the connection after this many events, mid-stream
    hang: bool = False  # send nothing until the client gives up


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body)


class StubServer:
    def __init__(self, reply: Reply | Callable[[Seen], Reply], ssl_context: ssl.SSLContext | None = None) -> None:
        self.reply = reply
        self.ssl_context = ssl_context
        self.seen: list[Seen] = []
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def __aenter__(self) -> "StubServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()
            return
        seen = Seen(method, path, headers, body)
        self.seen.append(seen)
        watcher = asyncio.ensure_future(self._watch_close(reader, seen))
        reply = self.reply(seen) if callable(self.reply) else self.reply
        try:
            await self._answer(writer, reply, seen)
        except ConnectionError:
            pass
        finally:
            await asyncio.sleep(0.05)
            watcher.cancel()
            writer.close()

    @staticmethod
    async def _watch_close(reader: asyncio.StreamReader, seen: Seen) -> None:
        if not await reader.read(1):
            seen.client_closed.set()

    async def _answer(self, writer: asyncio.StreamWriter, reply: Reply, seen: Seen) -> None:
        if reply.hang:
            await seen.client_closed.wait()
            return
        status = f"HTTP/1.1 {reply.status} {PHRASES.get(reply.status, 'Status')}\r\nConnection: close\r\n"
        if reply.events is None:
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            writer.write(f"{status}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            return
        writer.write(f"{status}Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for n, event in enumerate(reply.events):
            if reply.cut_after is not None and n == reply.cut_after:
                writer.transport.abort()  # the server goes away mid-answer
                return
            if seen.client_closed.is_set():
                return
            data = (event if isinstance(event, str) else f"data:{json.dumps(event)}") + "\n\n"
            raw = data.encode()
            writer.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            await writer.drain()
            await asyncio.sleep(reply.event_delay_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
