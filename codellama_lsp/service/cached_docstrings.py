"""Docstrings for hover and the "Generate docstring" action: cached, generated once per definition, never misplaced.

A docstring is asked for at a position of one version of a document; the document may
change before or while the model writes it. The definition is then found again by its
header text (``docstring.definition_for``, ``definitions.relocate``), and dropped when it cannot be, so
the edit the server returns never lands in the wrong place.
"""

from __future__ import annotations

import logging
from typing import Callable

from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.definitions import Definition, header_text, relocate
from codellama_lsp.completion import instruct_prompts as prompts
from codellama_lsp.completion.chat import Chat
from codellama_lsp.documents import Document
from codellama_lsp.service.lifecycle import Lifecycle
from codellama_lsp.loading import Ready
from codellama_lsp.completion.postprocess import UNFINISHED_PROSE
from codellama_lsp.service.metrics import Metrics, counted_generation
from codellama_lsp.service.open_documents import OpenDocument
from codellama_lsp.settings import Settings

log = logging.getLogger("codellama_lsp")


class Docstrings:
    def __init__(self, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics

    async def generate(self, record: OpenDocument, line: int, version: int | None, header: str | None, ready: Ready,
                       settings: Settings, chat: Chat, current: Callable[[str], Document | None]
                       ) -> tuple[Document, Definition, str] | None:
        """The docstring for the definition at ``line`` of ``record``'s document as of ``version``, and where
        it now is; kept in ``record``.

        ``current(uri)`` gives the document as it is after generation, which may have changed.
        Written by infilling, or by the chat model when the ``docstrings`` setting says
        "instruct" and the model has a chat layout.
        """
        doc = record.document
        d = ds.definition_for(doc, line, version, header)
        if d is None:
            return None
        header = header_text(doc, d)
        text = record.docstrings.get(header)
        if text is None:
            backend, computed_for = ready.backend, doc.version
            asks_chat = settings.docstrings == "instruct" and chat.available
            request = ds.instruct_request(doc, d, settings, chat, backend.tokenizer) if asks_chat else \
                ds.generation_request(doc, d, settings, ready.template, backend.tokenizer, ready.counter_for(doc.uri))

            log.debug("docstring for %s in %s by %s", d.name, doc.uri, "the chat model" if asks_chat else "infilling")

            async def run() -> str:
                result = await counted_generation(backend, request, self.metrics, f"docstring for {d.name} in {doc.uri}")
                if result is None:
                    return ""
                return ds.clean(prompts.docstring_text(result.text) if asks_chat else result.text, d.style,
                                unfinished=result.stop_reason in UNFINISHED_PROSE)

            outcome = await self.lifecycle.run(("docstring", doc.uri), (doc.uri, header), lambda _: run())
            text = outcome[1] if outcome else ""
            if text:
                record.keep_docstring(header, text)
            now = current(doc.uri)
            if now is not doc or doc.version != computed_for:  # edited (or reopened) while generating
                d = relocate(now, header) if now is not None else None
                if d is None or d.has_docstring:
                    log.info("docstring for %s in %s dropped: the document changed and the definition is gone",
                             header.strip()[:80], doc.uri)
                    return None
                doc = now
        return (doc, d, text) if text else None
