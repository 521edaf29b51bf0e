"""The documents the editor has open, one record each, kept in sync by open/change/close.

Documents live in ``documents.Document`` (not pygls' workspace), which edits lines in
place and converts positions in the negotiated encoding. Beside each document are the
places recently completed in it: each one's context window and snippets from other files.
A request near one of them keeps that window's edges and those snippets, so its prompt
starts as that place's did, and the engine's KV cache (or a sequence it kept for that
place) serves it: the next keystroke, and a return to a place after working elsewhere.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Sequence

from codellama_lsp.completion.context import Window
from codellama_lsp.completion.snippets import Scored
from codellama_lsp.documents import Cursor, Document, PositionOutOfRange
from codellama_lsp.positions import Encoding

log = logging.getLogger("codellama_lsp")

Miss = Literal["unknown_document", "bad_position"]
# One content change: the new text, and the (line, character) range it replaces (None: the whole document).
Change = tuple[str, tuple[tuple[int, int], tuple[int, int]] | None]


# Places remembered per document: about as many as the engine keeps KV sequences for.
MAX_PLACES = 8
# Generated docstrings kept per document (a header may be a whole minified file's first line).
MAX_DOCSTRINGS = 64


@dataclass(frozen=True)
class Place:
    """Where a prompt was planned in a document: its window, and the snippets it had."""

    window: Window
    snippets: tuple[Scored, ...]


@dataclass
class OpenDocument:
    """One open document: its text, the places recently completed in it (the most recent first), and the
    docstrings generated for it by definition header, so hover and the code action share one.

    Docstrings are keyed by the header's text, not its line: typing elsewhere keeps the entry,
    editing the signature drops it. Bounded; the oldest entry goes first.
    """

    document: Document
    places: list[Place] = field(default_factory=list)
    docstrings: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def place_at(self, line: int) -> Place | None:
        """The place a request at ``line`` continues: the latest whose window spans the line, else
        the latest whose window starts above it (its edge is kept if the window still fits)."""
        spanning = (p for p in self.places if p.window.prefix_start <= line <= p.window.suffix_end)
        return next(spanning, None) or next((p for p in self.places if p.window.prefix_start <= line), None)

    def remember(self, place: Place) -> None:
        """``place`` becomes the latest; one with the same window start is the same place, replaced."""
        others = [p for p in self.places if p.window.prefix_start != place.window.prefix_start]
        self.places = [place, *others][:MAX_PLACES]

    def keep_docstring(self, header: str, text: str) -> None:
        self.docstrings[header] = text
        if len(self.docstrings) > MAX_DOCSTRINGS:
            self.docstrings.popitem(last=False)

    def forget_computed(self) -> None:
        """Drop what the model computed for this document (another model was loaded)."""
        self.places.clear()
        self.docstrings.clear()


class OpenDocuments:
    def __init__(self) -> None:
        self._open: dict[str, OpenDocument] = {}

    def __len__(self) -> int:
        return len(self._open)

    def open(self, uri: str, text: str, version: int | None, language_id: str, encoding: Encoding) -> None:
        self._open[uri] = OpenDocument(Document.from_text(uri, text, version, language_id, encoding))

    def get(self, uri: str) -> OpenDocument | None:
        return self._open.get(uri)

    def document(self, uri: str) -> Document | None:
        record = self._open.get(uri)
        return None if record is None else record.document

    def documents(self) -> dict[str, Document]:
        return {uri: record.document for uri, record in self._open.items()}

    def change(self, uri: str, version: int | None, changes: Sequence[Change]) -> None:
        doc = self.document(uri)
        if doc is None:
            log.warning("didChange for a document that is not open: %s", uri)
            return
        for text, where in changes:
            if where is None:
                doc.apply_change(text)
            else:
                doc.apply_change(text, *where)
        doc.version = version

    def close(self, uri: str) -> None:
        self._open.pop(uri, None)

    def forget_computed(self) -> None:
        for record in self._open.values():
            record.forget_computed()

    def locate(self, uri: str, line: int, character: int, what: str) -> tuple[OpenDocument, Cursor] | Miss:
        """The document and cursor for a request, or why there is none (logged)."""
        record = self._open.get(uri)
        if record is None:
            log.warning("%s for a document that is not open: %s", what, uri)
            return "unknown_document"
        try:
            return record, record.document.cursor(line, character)
        except PositionOutOfRange as exc:
            log.warning("%s at %s:%s in %s: %s", what, line, character, uri, exc)
            return "bad_position"
