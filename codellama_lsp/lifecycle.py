"""Request lifecycle: one live request per document, and typed-through reuse.

Editors send a completion request per keystroke. Only the newest one matters, so a new
request for a document sets the cancel event of the one before it; the engine checks
that event before every decode step, and a request still queued behind another is
skipped without computing anything.

When the user types the first characters of the suggestion on screen, the rest of it
is still the best suggestion: it comes back at once, without a model call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Shown:
    """The last suggestion returned for a document, and where it was anchored."""

    line: int
    head: str  # the cursor line's text before the cursor
    tail: str  # the cursor line's text after the cursor
    text: str


class Lifecycle:
    def __init__(self) -> None:
        self._live: dict[str, threading.Event] = {}
        self._shown: dict[str, Shown] = {}

    def begin(self, key: str) -> threading.Event:
        """Register a new request under ``key``, cancelling the one it supersedes."""
        old = self._live.get(key)
        if old is not None:
            old.set()
        cancel = threading.Event()
        self._live[key] = cancel
        return cancel

    def end(self, key: str, cancel: threading.Event) -> None:
        if self._live.get(key) is cancel:
            del self._live[key]

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
        self._shown.pop(uri, None)
        for key in [k for k in self._live if k == uri or k.endswith(" " + uri)]:
            self._live.pop(key).set()
