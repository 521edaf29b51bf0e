"""The completion service: settings, the model, one record per open document, and plan → generate → suggestion.

It knows nothing of LSP: the language server (``lsp/server.py``) and ``codellama-lsp complete``
both call it, so the terminal and the editor go the same path. What it must tell the user
(a setting it refused, a budget cut to fit the context) goes to ``warn``; loading reports to
a ``Progress``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from codellama_lsp.completion.chat import Chat, detect_chat
from codellama_lsp.completion.confidence import confidence
from codellama_lsp.completion.definitions import Definition
from codellama_lsp.completion.planning import Sources, generation_request, plan, settled, shown
from codellama_lsp.completion.snippets import Scored
from codellama_lsp.documents import Cursor, Document
from codellama_lsp.generation import Backend
from codellama_lsp.loading import BackendSlot, Progress, Ready, default_model_path, load_into, size_prompt_cache
from codellama_lsp.positions import Encoding
from codellama_lsp.service.cached_docstrings import Docstrings
from codellama_lsp.service.lifecycle import Ahead, Anchor, Flight, Lifecycle
from codellama_lsp.service.metrics import Metrics, counted_generation
from codellama_lsp.service.open_documents import Change, OpenDocument, OpenDocuments, Place
from codellama_lsp.settings import Settings, apply, for_backend
from codellama_lsp.workspace import Workspace

log = logging.getLogger("codellama_lsp")

# A prefetch begins once the user has paused this long (reading the suggestion, about to accept
# it), not between keystrokes: a prefill under way cannot stop, and would delay the next one.
PREFETCH_PAUSE_S = 0.3


def anchor_at(doc: Document, cursor: Cursor) -> Anchor:
    line = doc.line_text(cursor.line)
    return Anchor(cursor.line, line[: cursor.index], line[cursor.index:])


@dataclass(frozen=True)
class Snapshot:
    """What ``codellama.status`` reports, taken at one moment: the model's slot, the settings (as given and
    as requests use them), the chat layout, and the counters."""

    slot: BackendSlot
    settings: Settings
    in_force: Settings
    chat: Chat | None
    open_documents: int
    metrics: dict[str, object]
    shared_requests: int
    prefetches: int
    in_flight: dict[str, int]
    last_context: tuple[str, tuple[Scored, ...], str]
    root: Path | None


class CompletionService:
    def __init__(self, settings: Settings, progress: Progress, warn: Callable[[str], None],
                 default_model: Path | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self.warn = warn
        self.default_model = default_model or default_model_path()
        self.slot = BackendSlot(self.model_path(settings))
        self.docs = OpenDocuments()
        self.repo = Workspace()
        # The last suggestion's document, snippets and header of imports (for the status).
        self.last_context: tuple[str, tuple[Scored, ...], str] = ("", (), "")
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.docstrings = Docstrings(self.lifecycle, self.metrics)
        self._load_task: asyncio.Task | None = None
        self._fit_note: str | None = None  # the last budget-cut warning shown, so it is shown once

    # -- settings and the model -------------------------------------------------------------------------
    def model_path(self, settings: Settings) -> Path:
        return Path(settings.model).expanduser() if settings.model else self.default_model

    def apply_settings(self, raw: Any, source: str) -> None:
        before = self.settings
        self.settings, errors = apply(self.settings, raw)
        if errors:
            self.warn(f"codellama-lsp: {source}: " + "; ".join(errors))
        if self.settings != before:
            log.info("settings from %s: %s", source, self.settings)
            self.lifecycle.forget_answers()
        if self.settings.load_key != before.load_key and self.slot.state != "not loaded":
            self.start_loading()
        elif self.slot.backend is not None:
            size_prompt_cache(self.slot.backend, self.settings)

    def request_settings(self, backend: Backend) -> Settings:
        """The settings a request uses: the budgets of ``backend``'s device where the client set none,
        format "auto" resolved for its model, and the budgets cut to fit its context, with a warning once."""
        fitted, note = for_backend(self.settings, backend)
        if note is not None and note != self._fit_note:
            self.warn(note)
        self._fit_note = note
        return fitted

    def start_loading(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # the newest settings win; the old thread's result is dropped
        self._load_task = asyncio.ensure_future(self.load())

    async def load(self) -> None:
        old, self.slot = self.slot.backend, BackendSlot(self.model_path(self.settings))
        if old is not None:
            # First, so that the new model's memory is planned without the old one's (it serves
            # nothing meanwhile: the slot is already the new one's).
            old.close()
        await load_into(self.slot, self.settings, self.progress)
        if self.slot.ready is not None:
            self.docs.forget_computed()

    def close_backend(self) -> None:
        if self.slot.backend is not None:
            self.slot.backend.close()

    def chat(self) -> Chat:
        """The loaded model's chat layout (``chat`` setting), or none and why: what status and actions use."""
        ready = self.slot.ready
        return Chat(None, f"the model is {self.slot.state}") if ready is None else \
            detect_chat(ready.backend.tokenizer, self.settings.chat)

    # -- documents --------------------------------------------------------------------------------------
    def open(self, uri: str, text: str, version: int | None, language_id: str, encoding: Encoding) -> None:
        self.docs.open(uri, text, version, language_id, encoding)

    def change(self, uri: str, version: int | None, changes: Sequence[Change]) -> None:
        self.docs.change(uri, version, changes)
        for text, where in changes:
            if where is not None:
                self.repo.edited(uri, where[0][0] + text.count("\n"))

    def close(self, uri: str) -> None:
        """A closed document: its record goes, and so do its entries in the stores shared across documents
        (recent edits, running computations, counted tokens)."""
        self.docs.close(uri)
        self.repo.forget(uri)
        self.lifecycle.forget(uri)
        if self.slot.ready is not None:
            self.slot.ready.counter.forget(uri)

    def locate(self, uri: str, line: int, character: int, what: str) -> tuple[OpenDocument, Cursor] | None:
        """The document and cursor for a request, or None (logged and counted) when either is unknown."""
        found = self.docs.locate(uri, line, character, what)
        if isinstance(found, str):
            self.metrics.count(found)
            return None
        return found

    # -- completion -------------------------------------------------------------------------------------
    async def suggest(self, uri: str, line: int, character: int) -> str:
        """The suggestion at ``line``:``character``, or "" when there is none (the reason is logged and counted)."""
        t0 = time.perf_counter()
        self.metrics.count("completion")
        if not self.settings.enabled:
            self.metrics.count("disabled")
            return ""
        found = self.locate(uri, line, character, "completion")
        if found is None:
            return ""
        doc, cursor = found[0].document, found[1]
        here = anchor_at(doc, cursor)
        version = doc.version
        ready = self.slot.ready
        start = None if ready is None else (lambda flight: self._complete(doc, cursor, ready, flight))
        try:
            text, outcome = await self.lifecycle.suggest(uri, here, version, start, doc.digest)
        except asyncio.CancelledError:
            self.metrics.count("cancelled")
            raise
        self.metrics.count(outcome)
        if outcome == "model_not_ready":
            log.info("completion before the model is ready (%s)", self.slot.state)
        elif outcome != "superseded":
            self.metrics.answered((time.perf_counter() - t0) * 1000)
        if (text and ready is not None and self.settings.prefetch and doc.version == version
                and outcome in ("answered", "typed_ahead", "prefetched", "typed_through", "revisited")):
            self._prefetch(doc, cursor, text, ready)
        return text

    def _prefetch(self, doc: Document, cursor: Cursor, shown: str, ready: Ready) -> None:
        """Compute, once the user pauses, the suggestion at the end of ``shown`` once it is typed or accepted."""
        version = doc.version

        def prepare() -> tuple[Ahead, Callable[[Flight], Awaitable[str | None]]] | None:
            if doc.version != version:  # edited during the pause, without asking for a suggestion
                return None
            ahead_doc, end = doc.inserted(cursor, shown)
            return (Ahead(anchor_at(ahead_doc, end), ahead_doc.digest()),
                    lambda flight: self._complete(ahead_doc, end, ready, flight, what="prefetch"))

        self.lifecycle.prefetch(doc.uri, prepare, PREFETCH_PAUSE_S)

    def warm(self, uri: str, line: int, character: int) -> None:
        """Compute the suggestion where the cursor rests, before it is asked for (llama.vim's CursorHold warm-up).

        The user is reading; by the time they type, the prompt at this place is in the KV cache
        and its suggestion is ready. It is the lowest-priority work: a prefetch at the cursor's
        own place, which any request cancels (between prefill chunks, keeping what was computed).
        """
        ready = self.slot.ready
        if ready is None or not self.settings.enabled:
            return
        found = self.locate(uri, line, character, "warm-up")
        if found is None:
            return
        doc, cursor = found[0].document, found[1]
        version, here = doc.version, anchor_at(doc, cursor)

        def prepare() -> tuple[Ahead, Callable[[Flight], Awaitable[str | None]]] | None:
            if doc.version != version:
                return None
            return (Ahead(here, doc.digest()),
                    lambda flight: self._complete(doc, cursor, ready, flight, what="warm-up"))

        if self.lifecycle.warm(uri, here, prepare, doc.digest):
            self.metrics.count("warm_up")

    def _complete(self, doc: Document, cursor: Cursor, ready: Ready, flight: Flight,
                  what: str = "completion") -> Awaitable[str | None]:
        """Plan now, while the document is as the request saw it; generate in the returned awaitable.

        A prefetch (``what``) plans a document that is not the editor's yet, so its plan is not
        kept as the document's window, snippets and status context. A prefetch or a warm-up is
        not where the user types yet (``generation_request``'s ``typing``). None: no answer to
        keep (the prompt or the backend failed, or the budget ended it before anything whole),
        so asked again, it is computed again.
        """
        backend = ready.backend
        settings = self.request_settings(backend)
        where = f"{what} at {cursor.line}:{cursor.index} in {doc.uri}"
        ws, record = self.repo, self.docs.get(doc.uri)
        place = record.place_at(cursor.line) if record is not None else None
        sources = None if settings.context_tokens <= 0 else Sources(  # off: no scan of the document at all
            ws.name, ws.relative(doc.uri), lambda lines: ws.candidates(doc, lines, self.docs.documents()),
            place.snippets if place else None, ws.import_lines(doc), ws.import_spans(doc))
        try:
            p = plan(doc, cursor, settings, ready.template, backend.tokenizer, ready.counter_for(doc.uri),
                     place.window if place else None, sources, heal=settings.token_healing and backend.heals)
        except Exception as exc:  # noqa: BLE001 - e.g. a tokenizer without infilling pieces
            log.warning("%s: no prompt: %s", where, exc)
            return asyncio.sleep(0, None)
        if what != "prefetch":
            if record is not None:
                record.remember(Place(p.window, p.snippets))
            self.last_context = (doc.uri, p.snippets, p.header)
        request = generation_request(p, settings, on_text=lambda text: setattr(flight, "partial", text),
                                     typing=what == "completion", gated=True)

        async def generate() -> str | None:
            result = await counted_generation(backend, request, self.metrics, where)
            if result is None:
                return None
            text = shown(result, p)
            if not settled(result, text):
                return None  # nothing whole by the budget: not kept, so a return asks again
            if log.isEnabledFor(logging.DEBUG):
                try:
                    sure = confidence(result.token_ids, result.logprobs, backend.tokenizer.decode_infilling)
                except Exception:  # noqa: BLE001 - a reload closed the backend meanwhile; only the log wanted it
                    sure = None
                log.debug("%s %s: %d/%d tokens reused, %d generated, stop %s, confidence %s: %r", where, p.mode,
                          result.reused_tokens, result.prompt_tokens, result.generated_tokens, result.stop_reason,
                          None if sure is None else round(sure, 3), text)
            if result.stop_reason == "unsure":  # the engine stopped at a first-line token below minConfidence
                self.metrics.count("unsure")  # hidden: the model was guessing
                return ""
            return text

        return generate()

    # -- docstrings -------------------------------------------------------------------------------------
    async def docstring(self, uri: str, line: int, character: int, version: int | None = None,
                        header: str | None = None) -> tuple[Document, Definition, str] | None:
        """A generated docstring for the undocumented definition at ``line`` of document ``version``."""
        ready, record = self.slot.ready, self.docs.get(uri)
        if ready is None:
            return None
        if record is None or version is None or record.document.version == version:
            found = self.locate(uri, line, character, "docstring")
            if found is None:
                return None
            record = found[0]
        return await self.docstrings.generate(record, line, version, header, ready,
                                              self.request_settings(ready.backend), self.chat(), self.docs.document)

    # -- status -----------------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        backend = self.slot.backend
        return Snapshot(
            slot=self.slot, settings=self.settings,
            # What requests use: the device's budgets where the client set none, "auto" resolved.
            in_force=self.request_settings(backend) if backend else self.settings,
            chat=self.chat() if self.slot.ready is not None else None, open_documents=len(self.docs),
            metrics=self.metrics.snapshot(), shared_requests=self.lifecycle.shared,
            prefetches=self.lifecycle.prefetches, in_flight=self.lifecycle.running(),
            last_context=self.last_context, root=self.repo.root)
