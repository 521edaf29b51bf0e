"""The pygls language server: LSP wiring around the completion service.

Each handler gets the document, calls the service (``service/completion_service.py``) or a
plain function, and converts the result (``convert``). Nothing here raises to the client for
a bad document, position or setting: those get an empty result and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from codellama_lsp import __version__
from codellama_lsp.completion.definitions import Definition, find_definition, header_text
from codellama_lsp.completion.instruct_prompts import TITLES
from codellama_lsp.documents import Document
from codellama_lsp.lsp import convert, instruct_actions
from codellama_lsp.lsp.log import attach_to_running_loop as attach_log_to_client
from codellama_lsp.lsp.parent import watch_client
from codellama_lsp.lsp.progress import LspProgress, Streamed
from codellama_lsp.lsp.protocol import CURSOR_REST, REQUEST_ID, CodeLlamaProtocol
from codellama_lsp.positions import negotiate
from codellama_lsp.service.completion_service import CompletionService
from codellama_lsp.settings import SECTION, Settings
from codellama_lsp.workspace import uri_path

log = logging.getLogger("codellama_lsp")

STATUS_COMMAND = "codellama.status"


class CodeLlamaServer(LanguageServer):
    def __init__(self, settings: Settings, default_model: Path | None = None) -> None:
        super().__init__("codellama-lsp", __version__, protocol_cls=CodeLlamaProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.service = CompletionService(settings, LspProgress(self), self.warn, default_model)
        self.encoding = "utf-16"
        self.shutdown_requested = False
        self.commands: dict[Any, asyncio.Task] = {}  # running codellama.instruct commands by request id

    # -- errors -----------------------------------------------------------------------------------------
    def report_server_error(self, error: Exception, source: Any) -> None:
        """Log instead of pygls' default pop-up: bad client input is logged, not shown to the user."""
        log.error("%s: %s", getattr(source, "__name__", source), error)

    def warn(self, message: str) -> None:
        log.warning(message)
        self.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning, message=message))

    # -- settings ---------------------------------------------------------------------------------------
    async def pull_configuration(self) -> None:
        caps = self.client_capabilities.workspace
        if not (caps and caps.configuration):
            return
        try:
            answer = await asyncio.wait_for(self.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])), 5)
        except Exception as exc:  # noqa: BLE001 - a client that cannot answer keeps the current settings
            log.warning("workspace/configuration failed: %s", exc)
            return
        if answer and answer[0] is not None:
            self.service.apply_settings(answer[0], "workspace/configuration")

    # -- documents (called by the protocol) -------------------------------------------------------------
    def open_document(self, item: types.TextDocumentItem) -> None:
        self.service.open(item.uri, item.text, item.version, item.language_id, self.encoding)

    def change_document(self, params: types.DidChangeTextDocumentParams) -> None:
        self.service.change(params.text_document.uri, params.text_document.version, [
            (c.text, ((c.range.start.line, c.range.start.character), (c.range.end.line, c.range.end.character))
             if isinstance(c, types.TextDocumentContentChangePartial) else None) for c in params.content_changes])

    def close_document(self, uri: str) -> None:
        self.service.close(uri)

    # -- Instruct actions: the editor side of ``instruct_actions.Editor`` -------------------------------
    def document(self, uri: str) -> Document | None:
        return self.service.docs.document(uri)

    async def apply(self, doc: Document, edits: list[types.TextEdit], label: str) -> bool:
        """Send the edits with workspace/applyEdit; whether the client applied them (it refuses a stale version)."""
        edit = convert.workspace_edit(self.client_capabilities, doc, edits)
        try:
            answer = await self.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=label))
        except Exception as exc:  # noqa: BLE001 - a client that cannot apply edits gets the edit in the answer
            log.warning("workspace/applyEdit failed: %s", exc)
            return False
        return bool(answer and answer.applied)

    def progress(self, title: str) -> Streamed:
        return Streamed(self, title)

    def cancel_request(self, msg_id: Any) -> None:
        task = self.commands.get(msg_id)
        if task is not None:
            task.cancel()

    async def run_instruct(self, args: Any) -> dict[str, Any]:
        """An Instruct action's answer; cancelled by ``$/cancelRequest`` of its executeCommand request."""
        msg_id, task = REQUEST_ID.get(), asyncio.current_task()
        if msg_id is None or task is None:
            return await self._instruct(args)
        self.commands[msg_id] = task
        try:
            return await self._instruct(args)
        finally:
            self.commands.pop(msg_id, None)

    async def _instruct(self, args: Any) -> dict[str, Any]:
        call = instruct_actions.parse_call(args)
        if isinstance(call, str):
            log.warning("%s", call)
            return {"error": call}
        service = self.service
        ready, chat = service.slot.ready, service.chat()
        if ready is None or not chat.available:
            return {"error": f"no Instruct actions: {chat.describe()}"}
        settings = service.request_settings(ready.backend)
        try:
            return await instruct_actions.run(self, call, ready, chat, settings, service.metrics)
        except asyncio.CancelledError:
            service.metrics.count("cancelled")
            raise

    async def docstring(self, uri: str, position: types.Position, version: int | None = None,
                        header: str | None = None) -> tuple[Document, Definition, str] | None:
        return await self.service.docstring(uri, position.line, position.character, version, header)


# -- handlers ---------------------------------------------------------------------------------------------

def _initialize(ls: CodeLlamaServer, params: types.InitializeParams) -> None:
    attach_log_to_client()  # the log may go to the client from now on (see lsp/log.py)
    ls.encoding = negotiate([str(getattr(e, "value", e)) for e in (params.capabilities.general.position_encodings or [])]
                            if params.capabilities.general else None)
    ls.service.apply_settings(params.initialization_options, "initializationOptions")
    ls.service.repo.root = workspace_root(params)
    watch_client(ls, params.process_id)  # the client's death ends the server (lsp/parent.py)


def workspace_root(params: types.InitializeParams) -> Path | None:
    """The first workspace folder, else the root URI or path: where imports resolve and paths are relative to."""
    folders = params.workspace_folders or []
    for uri in [f.uri for f in folders] + ([params.root_uri] if params.root_uri else []):
        path = uri_path(uri)
        if path is not None:
            return path
    return Path(params.root_path) if params.root_path else None


def _did_save(ls: CodeLlamaServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.service.repo.saved(params.text_document.uri)


async def _initialized(ls: CodeLlamaServer, params: types.InitializedParams) -> None:
    await ls.pull_configuration()
    ls.service.start_loading()


async def _did_change_configuration(ls: CodeLlamaServer, params: types.DidChangeConfigurationParams) -> None:
    if isinstance(params.settings, dict) and params.settings:
        ls.service.apply_settings(params.settings, "workspace/didChangeConfiguration")
    else:
        await ls.pull_configuration()


def _shutdown(ls: CodeLlamaServer, *args: Any) -> None:
    ls.shutdown_requested = True
    ls.service.close_backend()


def _exit(ls: CodeLlamaServer, *args: Any) -> None:
    """End at once: the engine's worker thread must not keep the process alive."""
    logging.shutdown()
    os._exit(0 if ls.shutdown_requested else 1)


def _cursor_rest(ls: CodeLlamaServer, params: types.TextDocumentPositionParams) -> None:
    ls.service.warm(params.text_document.uri, params.position.line, params.position.character)


async def _suggest(ls: CodeLlamaServer, params: types.TextDocumentPositionParams) -> str:
    return await ls.service.suggest(params.text_document.uri, params.position.line, params.position.character)


async def _inline_completion(ls: CodeLlamaServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    return convert.inline_list(await _suggest(ls, params), params.position)


async def _completion(ls: CodeLlamaServer, params: types.CompletionParams) -> types.CompletionList:
    return convert.completion_list(await _suggest(ls, params), params.position)


async def _hover(ls: CodeLlamaServer, params: types.HoverParams) -> types.Hover | None:
    found = await ls.docstring(params.text_document.uri, params.position)
    return None if found is None else convert.hover(found[1], found[2])


async def _code_action(ls: CodeLlamaServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    doc, start = ls.document(params.text_document.uri), params.range.start
    if doc is None or not 0 <= start.line < len(doc.lines):
        return []
    only = params.context.only
    actions = [convert.instruct_action(TITLES[a], a, arg, instruct_actions.COMMAND)
               for a, arg in instruct_actions.offered(doc, params.range, params.context.diagnostics, ls.service.chat())
               if convert.admits(only, convert.INSTRUCT_KINDS[a])]
    d = find_definition(doc, start.line)
    if d is None or d.has_docstring or not convert.admits(only, types.CodeActionKind.RefactorRewrite.value):
        return actions
    action = convert.docstring_action(doc.uri, start, doc.version, header_text(doc, d))
    resolved = action if convert.resolves_edits(ls.client_capabilities) else await _resolve_code_action(ls, action)
    return [resolved, *actions]


async def _resolve_code_action(ls: CodeLlamaServer, action: types.CodeAction) -> types.CodeAction:
    place = convert.action_place(action)
    if place is None:
        log.warning("codeAction/resolve without the data this server put there: %r", action.data)
        return action
    found = await ls.docstring(place.uri, place.position, place.version, place.header)
    if found is not None:
        action.edit = convert.docstring_edit(*found, ls.client_capabilities)
    return action


async def _instruct(ls: CodeLlamaServer, *args: Any) -> dict[str, Any]:
    return await ls.run_instruct(args)


def _status(ls: CodeLlamaServer, *args: Any) -> dict[str, Any]:
    return convert.status(ls.service.snapshot(), ls.encoding)


def build_server(settings: Settings, default_model: Path | None = None) -> CodeLlamaServer:
    server = CodeLlamaServer(settings, default_model)
    server.feature(types.INITIALIZE)(_initialize)
    server.feature(types.INITIALIZED)(_initialized)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(_did_change_configuration)
    server.feature(types.SHUTDOWN)(_shutdown)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE)(_did_save)
    server.feature(types.EXIT)(_exit)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(_inline_completion)
    server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))(_completion)
    server.feature(types.TEXT_DOCUMENT_HOVER)(_hover)
    server.feature(CURSOR_REST)(_cursor_rest)
    server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.RefactorRewrite, *convert.INSTRUCT_KINDS.values()],
        resolve_provider=True))(_code_action)
    server.feature(types.CODE_ACTION_RESOLVE)(_resolve_code_action)
    server.command(STATUS_COMMAND)(_status)
    server.command(instruct_actions.COMMAND)(_instruct)
    return server
