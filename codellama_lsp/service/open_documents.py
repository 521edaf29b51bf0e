"""The documents the editor has open, kept in sync by didOpen/didChange/didClose.

Documents live in ``documents.Document`` (not pygls' workspace), which edits lines in
place and converts positions in the negotiated encoding. Beside each document are the
places recently completed in it: each one's context window and snippets from other files.
A request near one of them keeps that window's edges and those snippets, so its prompt
starts as that place's did, and the engine's KV cache (or a sequence it kept for that
place) serves it: the next keystroke, and a return to a place after working elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from lsprotocol import types

from codellama_lsp.completion.context import Window
from codellama_lsp.completion.snippets import Scored
from codellama_lsp.documents import Cursor, Document, PositionOutOfRange

log = logging.getLogger("codellama_lsp")

Miss = Literal["unknown_document", "bad_position"]


# Places remembered per document: about as many as the engine keeps KV sequences for.
MAX_PLACES = 8


@dataclass(frozen=True)
class Place:
    """Where a prompt was planned in a document: its window, and the snippets it had."""

    window: Window
    snippets: tuple[Scored, ...]


class OpenDocuments:
    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.places: dict[str, list[Place]] = {}  # by document, the most recent first

    def open(self, item: types.TextDocumentItem, encoding: str) -> None:
        self.documents[item.uri] = Document.from_text(item.uri, item.text, item.version, item.language_id, encoding)
        self.places.pop(item.uri, None)

    def place_at(self, uri: str, line: int) -> Place | None:
        """The place a request at ``line`` continues: the latest whose window spans the line, else
        the latest whose window starts above it (its edge is kept if the window still fits)."""
        places = self.places.get(uri, ())
        spanning = (p for p in places if p.window.prefix_start <= line <= p.window.suffix_end)
        return next(spanning, None) or next((p for p in places if p.window.prefix_start <= line), None)

    def remember(self, uri: str, place: Place) -> None:
        """``place`` becomes the latest; one with the same window start is the same place, replaced."""
        others = [p for p in self.places.get(uri, ()) if p.window.prefix_start != place.window.prefix_start]
        self.places[uri] = [place, *others][:MAX_PLACES]

    def change(self, params: types.DidChangeTextDocumentParams) -> None:
        doc = self.documents.get(params.text_document.uri)
        if doc is None:
            log.warning("didChange for a document that is not open: %s", params.text_document.uri)
            return
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                doc.apply_change(change.text, (r.start.line, r.start.character), (r.end.line, r.end.character))
            else:
                doc.apply_change(change.text)
        doc.version = params.text_document.version

    def close(self, uri: str) -> None:
        self.documents.pop(uri, None)
        self.places.pop(uri, None)

    def locate(self, uri: str, position: types.Position, what: str) -> tuple[Document, Cursor] | Miss:
        """The document and cursor for a request, or why there is none (logged)."""
        doc = self.documents.get(uri)
        if doc is None:
            log.warning("%s for a document that is not open: %s", what, uri)
            return "unknown_document"
        try:
            return doc, doc.cursor(position.line, position.character)
        except PositionOutOfRange as exc:
            log.warning("%s at %s:%s in %s: %s", what, position.line, position.character, uri, exc)
            return "bad_position"
