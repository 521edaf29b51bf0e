"""The documents the editor has open, kept in sync by didOpen/didChange/didClose.

Documents live in ``documents.Document`` (not pygls' workspace), which edits lines in
place and converts positions in the negotiated encoding. Each document's last context
window is kept beside it, so the next keystroke's window keeps its edges (and the KV
cache its prefix).
"""

from __future__ import annotations

import logging
from typing import Literal

from lsprotocol import types

from codellama_lsp.completion.context import Window
from codellama_lsp.completion.snippets import Scored
from codellama_lsp.documents import Cursor, Document, PositionOutOfRange

log = logging.getLogger("codellama_lsp")

Miss = Literal["unknown_document", "bad_position"]


class OpenDocuments:
    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.windows: dict[str, Window] = {}  # each document's last context window, for sticky edges
        self.snippets: dict[str, tuple[Scored, ...]] = {}  # each document's last snippets from other files, kept likewise

    def open(self, item: types.TextDocumentItem, encoding: str) -> None:
        self.documents[item.uri] = Document.from_text(item.uri, item.text, item.version, item.language_id, encoding)
        self.windows.pop(item.uri, None)
        self.snippets.pop(item.uri, None)

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
        self.windows.pop(uri, None)
        self.snippets.pop(uri, None)

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
