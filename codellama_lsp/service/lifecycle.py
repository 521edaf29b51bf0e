"""Request lifecycle: one live computation per document, shared or superseded; typed-through reuse.

Editors send a request per keystroke, and some send two per keystroke (an inline
completion and a completion for the same place). A request for the place a running
computation is already answering waits for that computation instead of starting a new
one; a request for a new place supersedes it: the old computation's task is cancelled,
which sets the engine request's cancel event, and the engine stops within one decode
step. A request still queued behind another on the engine is skipped without computing.

When the user types the first characters of the suggestion on screen, the rest of it
is still the best suggestion: it comes back at once, without a model call. The same
holds for a suggestion still being generated: a keystroke that matches the start of
what the model has written so far waits for that generation rather than cancelling it.

Once a suggestion is shown and the user pauses, the next one is computed ahead (a prefetch,
as llama.vim does): the suggestion at its end, in the document as it will be once the shown
text is typed or accepted. A request there, in exactly that document, gets it at once or
joins it; any new computation cancels a prefetch still running, so the engine is free for
what was asked. It waits for the pause because a computation cannot stop in the middle of
a prefill: begun while the user types on, it would hold up the next keystroke's request.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable, Hashable, Literal, TypeVar

T = TypeVar("T")

# What a computation is for, and the document: one live computation per key.
Key = tuple[Literal["completion", "docstring"], str]
# How a suggestion request was answered, counted in codellama.status.
Outcome = Literal["typed_through", "model_not_ready", "superseded", "answered", "typed_ahead", "empty", "prefetched",
                  "revisited"]
# Answers kept per document, by place and text: as many as the places a document remembers
# (service.open_documents), so a return to any of them in unchanged text is answered at once.
ANSWERS_PER_DOCUMENT = 8


@dataclass(frozen=True)
class Anchor:
    """Where a suggestion is asked for: the cursor's line and the text either side of it."""

    line: int
    head: str  # the cursor line's text before the cursor
    tail: str  # the cursor line's text after the cursor


@dataclass(frozen=True)
class Shown:
    """The last suggestion returned for a document, and where it was anchored."""

    anchor: Anchor
    text: str


def typed_since(anchor: Anchor, here: Anchor) -> str | None:
    """What the user typed at ``anchor`` to get to ``here``; None if ``here`` is elsewhere."""
    if anchor.line != here.line or anchor.tail != here.tail or not here.head.startswith(anchor.head):
        return None
    return here.head[len(anchor.head):]


def rest_after_typing(text: str, typed: str | None) -> str | None:
    """What remains of suggestion ``text`` once ``typed`` (a non-empty proper prefix of it) is typed."""
    return text[len(typed):] if typed and len(typed) < len(text) and text.startswith(typed) else None


@dataclass(frozen=True)
class Ahead:
    """A place in a text: the suggestion at ``anchor`` of the document whose text has digest ``digest``."""

    anchor: Anchor
    digest: str
    prefetched: bool = field(default=False, compare=False)  # computed ahead (a prefetch or warm-up), not asked


@dataclass(eq=False)
class Flight:
    """A running computation: what it answers, and what it has produced so far if it streams."""

    ident: Hashable
    task: asyncio.Future | None = None
    waiters: int = 0
    partial: str = ""
    guess: bool = False  # a prefetch
    ahead: Ahead | None = None  # what a prefetch answers, once past its wait for the user's pause


class Lifecycle:
    def __init__(self, grace_s: float = 0.05) -> None:
        # Editors cancel the previous request just before sending the next keystroke's: a
        # computation left without requests runs this much longer, so that the next request
        # can still join it (or supersede it at once).
        self.grace_s = grace_s
        self._flights: dict[Key, Flight] = {}
        self._shown: dict[str, Shown] = {}  # by document
        # By document: suggestions known for a place in a text (a finished prefetch or warm-up, an answer,
        # the rest of one typed through), oldest first.
        self._answers: dict[str, dict[Ahead, str]] = {}
        self.shared = 0  # requests answered by a computation another request started
        self.prefetches = 0  # prefetches that began computing

    def running(self) -> dict[str, int]:
        """Computations under way (a completion by its document, others as "kind uri"), and the
        characters each has streamed so far."""
        return {uri if kind == "completion" else f"{kind} {uri}": len(f.partial)
                for (kind, uri), f in self._flights.items() if f.task is not None and not f.task.done()}

    async def suggest(self, uri: str, here: Anchor, version: int | None,
                      start: Callable[[Flight], Awaitable[str | None]] | None,
                      digest: Callable[[], str] = str) -> tuple[str, Outcome]:
        """The whole answer policy for a suggestion at ``here``: the text to show, and how it came.

        The rest of the shown suggestion when the user typed its start; else a prefetch for
        this place in this document (``digest`` gives its text's), finished or running; else the
        running generation when the user typed what it already wrote (``typed_ahead``), else a
        new one from ``start`` (None: no model yet). What is computed is remembered for
        typed-through, and cut by what was typed while it ran. ``start`` gives None where it has no
        answer to keep (a failure, or nothing whole by the time budget): a return asks again.
        """
        waiting = self._flights.get(("completion", uri))
        if waiting is not None and waiting.guess and waiting.ahead is None:
            waiting.task.cancel()  # the user did not pause: a keystroke restarts the wait
            del self._flights[("completion", uri)]
        text_digest = functools.cache(digest)  # O(document), once a request
        rest = self.typed_through(uri, here)
        if rest is not None:
            self._keep(uri, Ahead(here, text_digest()), rest)
            return rest, "typed_through"
        if start is None:
            return "", "model_not_ready"

        def is_here(ahead: Ahead | None) -> bool:
            """A suggestion for this place in this text."""
            return ahead is not None and ahead.anchor == here and ahead.digest == text_digest()

        known = self._answers.get(uri, {})
        if any(ahead.anchor == here for ahead in known):
            found = next(((ahead, text) for ahead, text in known.items() if is_here(ahead)), None)
            if found is not None:  # the same place in the same text: the same suggestion, computed before
                self.remember(uri, Shown(here, found[1]))
                return found[1], "prefetched" if found[0].prefetched else "revisited"

        def joins(flight: Flight) -> bool:
            """A prefetch of this very request, or the user typed what the running generation has
            already written (typed ahead): wait for it."""
            if flight.guess:
                return is_here(flight.ahead)
            return rest_after_typing(flight.partial, typed_since(flight.ident[0], here)) is not None

        asked_in = text_digest()  # now: the document is edited in place while the answer is computed
        outcome = await self.run(("completion", uri), (here, version), start, joins)
        if outcome is None:
            return "", "superseded"
        (anchor, _), answer = outcome
        text = answer or ""
        self.remember(uri, Shown(anchor, text))
        if anchor == here:
            if answer is not None:
                self._keep(uri, Ahead(here, asked_in), answer)
            return text, "answered" if text else "empty"
        # Answered by a generation started before the last keystrokes.
        return rest_after_typing(text, typed_since(anchor, here)) or "", "typed_ahead"

    def warm(self, uri: str, here: Anchor,
             prepare: Callable[[], tuple[Ahead, Callable[[Flight], Awaitable[str | None]]] | None],
             digest: Callable[[], str] = str) -> bool:
        """Compute the suggestion at ``here``, where the cursor rests, unless it is known or coming.

        Nothing is done where the shown suggestion was asked for or a suggestion is kept for this
        place in this text (``digest`` gives its text's), or while a request computes; a prefetch
        under way elsewhere is a guess about a place the user has left, and gives way. Whether a
        warm-up started.
        """
        shown = self._shown.get(uri)
        if shown is not None and shown.anchor == here:
            return False
        known = [a for a in self._answers.get(uri, {}) if a.anchor == here]
        if known and any(a.digest == digest() for a in known):
            return False
        key: Key = ("completion", uri)
        flight = self._flights.get(key)
        if flight is not None and not flight.task.done():
            if not flight.guess or (flight.ahead is not None and flight.ahead.anchor == here):
                return False
            flight.task.cancel()
            del self._flights[key]
        self.prefetch(uri, prepare, 0.0)
        return True

    def prefetch(self, uri: str, prepare: Callable[[], tuple[Ahead, Callable[[Flight], Awaitable[str | None]]] | None],
                 pause_s: float) -> None:
        """Compute a suggestion ahead in the background once ``pause_s`` pass without a request
        for ``uri``, unless a computation is running for it.

        ``prepare``, called after the pause, says what (an ``Ahead``) and how (a start), or
        None when there is nothing to compute any more: the work of building the document
        ahead stays off the keystroke that showed the suggestion. The text is kept for
        ``suggest``; a request that arrives while it runs joins it.
        """
        key: Key = ("completion", uri)
        flight = self._flights.get(key)
        if flight is not None and not flight.task.done():
            return
        flight = self._flights[key] = Flight(None, guess=True)

        async def after_a_pause() -> str | None:
            await asyncio.sleep(pause_s)
            prepared = prepare()
            if prepared is None:
                return None
            flight.ahead, start = prepared
            flight.ident = (flight.ahead.anchor, None)
            self.prefetches += 1
            return await start(flight)

        def keep(task: asyncio.Future) -> None:
            if self._flights.get(key) is flight and flight.waiters == 0:
                del self._flights[key]
            if (not task.cancelled() and task.exception() is None and flight.ahead is not None
                    and task.result() is not None):
                self._keep(uri, replace(flight.ahead, prefetched=True), task.result())

        flight.task = asyncio.ensure_future(after_a_pause())
        flight.task.add_done_callback(keep)

    async def run(self, key: Key, ident: Hashable, start: Callable[[Flight], Awaitable[T]],
                  joins: Callable[[Flight], bool] | None = None) -> tuple[Hashable, T] | None:
        """Answer ``ident`` under ``key``: (the ident actually computed, its result), or None if superseded.

        A running computation for the same ident, or one ``joins`` accepts, is awaited
        instead of starting another; any other running computation under ``key`` is
        cancelled. ``start`` is called at once, so it sees the state of this moment.
        Cancelling the awaiting request (``$/cancelRequest``) cancels the computation too,
        after ``grace_s``, unless another request is waiting for it by then.
        """
        flight = self._flights.get(key)
        if flight is not None and not flight.task.done() and (flight.ident == ident or (joins and joins(flight))):
            self.shared += 1
        else:
            if flight is not None:
                flight.task.cancel()
            for other in self._flights.values():  # the engine is for what was asked, not for guesses
                if other.guess and other is not flight:
                    other.task.cancel()
            flight = self._flights[key] = Flight(ident)
            flight.task = asyncio.ensure_future(start(flight))
        flight.waiters += 1
        try:
            return flight.ident, await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # this request itself was cancelled
                if flight.waiters == 1:
                    asyncio.get_running_loop().call_later(self.grace_s, self._drop_if_orphaned, flight)
                raise
            return None  # the computation was superseded by a newer request
        finally:
            flight.waiters -= 1
            if self._flights.get(key) is flight and flight.task.done():
                del self._flights[key]

    @staticmethod
    def _drop_if_orphaned(flight: Flight) -> None:
        if flight.waiters == 0:
            flight.task.cancel()

    def remember(self, uri: str, shown: Shown) -> None:
        self._shown[uri] = shown

    def _keep(self, uri: str, ahead: Ahead, text: str) -> None:
        """Keep ``text`` as the suggestion at ``ahead``'s place in its text, an empty one too: asked again, the
        model writes the same, and a hidden guess stays hidden (what may change comes as None, not kept)."""
        answers = self._answers.setdefault(uri, {})
        answers.pop(ahead, None)
        answers[ahead] = text
        while len(answers) > ANSWERS_PER_DOCUMENT:
            del answers[next(iter(answers))]

    def typed_through(self, uri: str, here: Anchor) -> str | None:
        """The rest of the shown suggestion if the user has typed its beginning since."""
        shown = self._shown.get(uri)
        return None if shown is None else rest_after_typing(shown.text, typed_since(shown.anchor, here))

    def forget_answers(self) -> None:
        """New settings: suggestions computed, or being guessed, under the old ones are not what the new
        ones give."""
        self._shown.clear()
        self._answers.clear()
        for key in [k for k, f in self._flights.items() if f.guess]:
            self._flights.pop(key).task.cancel()

    def forget(self, uri: str) -> None:
        """A closed document: drop its suggestion and stop its computations."""
        self._shown.pop(uri, None)
        self._answers.pop(uri, None)
        for key in [k for k in self._flights if k[1] == uri]:
            self._flights.pop(key).task.cancel()
