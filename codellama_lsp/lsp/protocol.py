"""pygls' LanguageServerProtocol, with our own document store and errors for malformed requests.

Kept apart from ``server.py`` so the JSON-RPC layer (what a client may send and what it
gets back) can be hardened without touching the handlers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

if TYPE_CHECKING:
    from codellama_lsp.lsp.server import CodeLlamaServer

log = logging.getLogger("codellama_lsp")


class CodeLlamaProtocol(LanguageServerProtocol):
    """pygls' protocol with our own document store and errors for malformed requests."""

    _server: "CodeLlamaServer"

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        self._server.open_document(params.text_document)
        yield from ()

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        self._server.change_document(params)
        yield from ()

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        self._server.close_document(params.text_document.uri)
        yield from ()

    def structure_message(self, data: dict[str, Any]):
        """Answer a request whose params do not fit its method with InvalidParams, not silence."""
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" in data and "method" in data:
                cause = exc.__cause__ or exc
                message = f"invalid params for {data['method']}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
                log.warning("%s (request %s)", message, data["id"])
                self._send_response(data["id"], error=JsonRpcInvalidParams(message).to_response_error())
            raise
