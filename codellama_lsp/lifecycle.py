"""Request lifecycle: one live computation per document, shared or superseded; typed-through reuse.

Editors send a request per keystroke, and some send two per keystroke (an inline
completion and a completion for the same place). A request for the place a running
computation is already answering waits for that computation instead of starting a new
one; a request for a new place supersedes it: the old computation's task is cancelled,
which sets the engine request's cancel event, and the engine stops within one decode
step. A request still queued behind another on the engine is skipped without computing.

When the user types the first characters of the suggestion on screen, the rest of it
is still the best suggestion: it comes back at once, without a model call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shown:
    """The last suggestion returned for a document, and where it was anchored."""

    line: int
    head: str  # the cursor line's text before the cursor
    tail: str  # the cursor line's text after the cursor
    text: str


@dataclass
class _Flight:
    ident: Hashable
    task: asyncio.Future
    waiters: int = 0


class Lifecycle:
    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}
        self._shown: dict[str, Shown] = {}
        self.shared = 0  # requests answered by a computation another request started

    async def run(self, key: str, ident: Hashable, start: Callable[[], Awaitable[T]]) -> T | None:
        """The result of ``start()`` for ``ident``, computed once per key at a time; None if superseded.

        Cancelling the awaiting request (``$/cancelRequest``) cancels the computation too,
        unless another request is still waiting for it.
        """
        flight = self._flights.get(key)
        if flight is not None and flight.ident == ident and not flight.task.done():
            self.shared += 1
        else:
            if flight is not None:
                flight.task.cancel()
            flight = self._flights[key] = _Flight(ident, asyncio.ensure_future(start()))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # this request itself was cancelled
                if flight.waiters == 1:
                    flight.task.cancel()
                raise
            return None  # the computation was superseded by a newer request
        finally:
            flight.waiters -= 1
            if self._flights.get(key) is flight and flight.task.done():
                del self._flights[key]

    def remember(self, uri: str, shown: Shown) -> None:
        self._shown[uri] = shown

    def typed_through(self, uri: str, line: int, head: str, tail: str) -> str | None:
        """The rest of the shown suggestion if the user has typed its beginning since."""
        shown = self._shown.get(uri)
        if shown is None or shown.line != line or shown.tail != tail or not head.startswith(shown.head):
            return None
        typed = head[len(shown.head):]
        if typed and len(typed) < len(shown.text) and shown.text.startswith(typed):
            return shown.text[len(typed):]
        return None

    def forget(self, uri: str) -> None:
        """A closed document: drop its suggestion and stop its computations."""
        self._shown.pop(uri, None)
        for key in [k for k in self._flights if k == uri or k.endswith(" " + uri)]:
            self._flights.pop(key).task.cancel()
