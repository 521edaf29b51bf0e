"""The pygls language server: LSP plumbing around the plain modules.

Each handler validates what the client sent, calls ``completion``/``docstring``
functions and the engine, and turns the outcome into LSP types. Nothing here raises
to the client for a bad document, position or setting: those get an empty result and
a log line. Documents live in ``documents.Document`` (not pygls' workspace), which
edits lines in place and converts positions in the negotiated encoding.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Awaitable

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from codellama_lsp import BUNDLED_MODEL, __version__
from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.planning import generation_request, plan, suggestion
from codellama_lsp.completion.context import TokenCounter, Window
from codellama_lsp.documents import Cursor, Document, PositionOutOfRange
from codellama_lsp.generation import Backend, GenerationRequest
from codellama_lsp.lsp.lifecycle import Anchor, Flight, Lifecycle
from codellama_lsp.lsp.loading import BackendSlot, load_into
from codellama_lsp.lsp.metrics import Metrics
from codellama_lsp.positions import negotiate
from codellama_lsp.lsp.protocol import CodeLlamaProtocol
from codellama_lsp.settings import SECTION, Settings, apply, fit_to_context, resolve_format

log = logging.getLogger("codellama_lsp")

STATUS_COMMAND = "codellama.status"
GENERATE_DOCSTRING = "Generate docstring"


class _LspProgress:
    """Loading reported as work-done progress (when the client supports it) and an error message."""

    def __init__(self, server: "CodeLlamaServer") -> None:
        self.server = server

    async def begin(self, message: str) -> str | None:
        caps = self.server.client_capabilities.window
        if not (caps and caps.work_done_progress):
            return None
        token = f"codellama-load-{uuid.uuid4()}"
        try:
            await asyncio.wait_for(self.server.work_done_progress.create_async(token), 5)
        except Exception as exc:  # noqa: BLE001 - progress is a nicety; loading goes on without it
            log.warning("window/workDoneProgress/create failed: %s", exc)
            return None
        self.server.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="codellama-lsp", message=message))
        return token

    def end(self, handle: object | None, state: str) -> None:
        if isinstance(handle, str):
            self.server.work_done_progress.end(handle, types.WorkDoneProgressEnd(message=state))

    def failed(self, message: str) -> None:
        self.server.show(types.MessageType.Error, message)


async def _logged_generation(backend: Backend, request: GenerationRequest, metrics: Metrics, what: str):
    """``backend``'s result for ``request``, or None when it failed (logged); cancellation propagates."""
    try:
        result = await backend.agenerate(request)
    except asyncio.CancelledError:
        log.debug("%s stopped: superseded or cancelled", what)
        raise
    except Exception as exc:  # noqa: BLE001 - a failed request is logged and answered empty
        log.warning("%s failed: %s", what, exc)
        metrics.count("failed")
        return None
    metrics.generated(result)
    return result


class CodeLlamaServer(LanguageServer):
    def __init__(self, settings: Settings, default_model: Path = BUNDLED_MODEL) -> None:
        super().__init__("codellama-lsp", __version__, protocol_cls=CodeLlamaProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = settings
        self.default_model = default_model
        self.slot = BackendSlot(self.model_path(settings))
        self.documents: dict[str, Document] = {}
        self.windows: dict[str, Window] = {}  # each document's last context window, for sticky edges
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.counter: TokenCounter | None = None
        self.docstrings = ds.DocstringCache()
        self.encoding = "utf-16"
        self.shutdown_requested = False
        self._load_task: asyncio.Task | None = None
        self._fit_note: str | None = None  # the last budget-cut warning shown, so it is shown once

    # -- errors -----------------------------------------------------------------------------------------
    def report_server_error(self, error: Exception, source: Any) -> None:
        """Log instead of pygls' default pop-up: bad client input is logged, not shown to the user."""
        log.error("%s: %s", getattr(source, "__name__", source), error)

    def show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    # -- settings and the backend -----------------------------------------------------------------------
    def model_path(self, settings: Settings) -> Path:
        return Path(settings.model).expanduser() if settings.model else self.default_model

    def apply_settings(self, raw: Any, source: str) -> None:
        before = self.settings
        self.settings, errors = apply(self.settings, raw)
        if errors:
            message = f"codellama-lsp: {source}: " + "; ".join(errors)
            log.warning(message)
            self.show(types.MessageType.Warning, message)
        if self.settings != before:
            log.info("settings from %s: %s", source, self.settings)
        if self.settings.load_key != before.load_key and self.slot.state != "not loaded":
            self.start_loading()

    def request_settings(self, backend: Backend) -> Settings:
        """The settings a request uses: format "auto" resolved for ``backend``'s model, and the budgets
        cut to fit its context, with a warning once."""
        fitted, note = fit_to_context(resolve_format(self.settings, backend.preferred_format), backend.context_length)
        if note is not None and note != self._fit_note:
            log.warning(note)
            self.show(types.MessageType.Warning, note)
        self._fit_note = note
        return fitted

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
            self.apply_settings(answer[0], "workspace/configuration")

    def start_loading(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()  # the newest settings win; the old thread's result is dropped
        self._load_task = asyncio.ensure_future(self.load())

    async def load(self) -> None:
        old, self.slot = self.slot.backend, BackendSlot(self.model_path(self.settings))
        try:
            await load_into(self.slot, self.settings, _LspProgress(self))
        finally:
            if old is not None:
                old.close()
        if self.slot.backend is not None:
            self.counter = TokenCounter(self.slot.backend.tokenizer.encode)
            self.windows.clear()
            self.docstrings.clear()

    # -- documents --------------------------------------------------------------------------------------
    def open_document(self, item: types.TextDocumentItem) -> None:
        self.documents[item.uri] = Document.from_text(item.uri, item.text, item.version, item.language_id, self.encoding)
        self.windows.pop(item.uri, None)

    def change_document(self, params: types.DidChangeTextDocumentParams) -> None:
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

    def close_document(self, uri: str) -> None:
        self.documents.pop(uri, None)
        self.windows.pop(uri, None)
        self.lifecycle.forget(uri)

    def locate(self, uri: str, position: types.Position, what: str) -> tuple[Document, Cursor] | None:
        """The document and cursor for a request, or None (logged) when either is unknown."""
        doc = self.documents.get(uri)
        if doc is None:
            log.warning("%s for a document that is not open: %s", what, uri)
            self.metrics.count("unknown_document")
            return None
        try:
            return doc, doc.cursor(position.line, position.character)
        except PositionOutOfRange as exc:
            log.warning("%s at %s:%s in %s: %s", what, position.line, position.character, uri, exc)
            self.metrics.count("bad_position")
            return None

    def ready(self) -> tuple[Backend, TokenCounter] | None:
        backend, counter = self.slot.backend, self.counter
        return None if backend is None or counter is None else (backend, counter)

    # -- completion -------------------------------------------------------------------------------------
    async def suggest(self, uri: str, position: types.Position) -> str:
        """The suggestion at ``position``, or "" when there is none (the reason is logged and counted)."""
        t0 = time.perf_counter()
        self.metrics.count("completion")
        if not self.settings.enabled:
            self.metrics.count("disabled")
            return ""
        found = self.locate(uri, position, "completion")
        if found is None:
            return ""
        doc, cursor = found
        line = doc.line_text(cursor.line)
        here = Anchor(cursor.line, line[: cursor.index], line[cursor.index:])
        ready = self.ready()
        start = None if ready is None else (lambda flight: self._complete(doc, cursor, *ready, flight))
        try:
            text, outcome = await self.lifecycle.suggest(uri, here, doc.version, start)
        except asyncio.CancelledError:
            self.metrics.count("cancelled")
            raise
        self.metrics.count(outcome)
        if outcome == "model_not_ready":
            log.info("completion before the model is ready (%s)", self.slot.state)
        elif outcome != "superseded":
            self.metrics.answered((time.perf_counter() - t0) * 1000)
        return text

    def _complete(self, doc: Document, cursor: Cursor, backend: Backend, counter: TokenCounter,
                  flight: Flight) -> Awaitable[str]:
        """Plan now, while the document is as the request saw it; generate in the returned awaitable."""
        settings = self.request_settings(backend)
        where = f"completion at {cursor.line}:{cursor.index} in {doc.uri}"
        try:
            p = plan(doc, cursor, settings, backend.tokenizer, counter, self.windows.get(doc.uri))
        except Exception as exc:  # noqa: BLE001 - e.g. a tokenizer without infilling pieces
            log.warning("%s: no prompt: %s", where, exc)
            return asyncio.sleep(0, "")
        self.windows[doc.uri] = p.window
        request = generation_request(p, settings, on_text=lambda text: setattr(flight, "partial", text))

        async def generate() -> str:
            result = await _logged_generation(backend, request, self.metrics, where)
            if result is None:
                return ""
            text = suggestion(result.text, p)
            log.debug("%s %s: %d/%d tokens reused, %d generated, stop %s: %r", where, p.mode, result.reused_tokens,
                      result.prompt_tokens, result.generated_tokens, result.stop_reason, text)
            return text

        return generate()

    # -- docstrings -------------------------------------------------------------------------------------
    async def docstring(self, uri: str, position: types.Position) -> tuple[Document, ds.Definition, str] | None:
        """A generated docstring for the undocumented definition at ``position``, if there is one."""
        found, ready = self.locate(uri, position, "docstring"), self.ready()
        if found is None or ready is None:
            return None
        doc, cursor = found
        d = ds.find_definition(doc, cursor.line)
        if d is None or d.has_docstring:
            return None
        key = self.docstrings.key(doc, d)
        text = self.docstrings.get(key)
        if text is None:
            backend, counter = ready
            request = ds.generation_request(doc, d, self.request_settings(backend), backend.tokenizer, counter)

            async def generate() -> str:
                result = await _logged_generation(backend, request, self.metrics, f"docstring for {d.name} in {uri}")
                return "" if result is None else ds.clean(result.text, d.style)

            outcome = await self.lifecycle.run(("docstring", uri), key, lambda _: generate())
            text = outcome[1] if outcome else ""
            if text:
                self.docstrings.put(key, text)
        return (doc, d, text) if text else None

    # -- status -----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        backend = self.slot.backend
        return {
            "version": __version__,
            "model": str(self.slot.path),
            "state": self.slot.state,
            "error": self.slot.error,
            "device": str(backend.device) if backend else self.settings.device,
            "dtype": str(backend.dtype).removeprefix("torch.") if backend else self.settings.dtype,
            "load_ms": self.slot.load_ms,
            "settings": asdict(self.settings),
            "format": resolve_format(self.settings, backend.preferred_format).format if backend else None,
            "position_encoding": self.encoding,
            "open_documents": len(self.documents),
            **self.metrics.snapshot(),
            "shared_requests": self.lifecycle.shared,
            "in_flight": self.lifecycle.running(),
            "generated_tokens": backend.generated_tokens if backend else 0,
        }


# -- handlers ---------------------------------------------------------------------------------------------

def _initialize(ls: CodeLlamaServer, params: types.InitializeParams) -> None:
    ls.encoding = negotiate([str(getattr(e, "value", e)) for e in (params.capabilities.general.position_encodings or [])]
                            if params.capabilities.general else None)
    ls.apply_settings(params.initialization_options, "initializationOptions")


async def _initialized(ls: CodeLlamaServer, params: types.InitializedParams) -> None:
    await ls.pull_configuration()
    ls.start_loading()


async def _did_change_configuration(ls: CodeLlamaServer, params: types.DidChangeConfigurationParams) -> None:
    if isinstance(params.settings, dict) and params.settings:
        ls.apply_settings(params.settings, "workspace/didChangeConfiguration")
    else:
        await ls.pull_configuration()


def _shutdown(ls: CodeLlamaServer, *args: Any) -> None:
    ls.shutdown_requested = True
    if ls.slot.backend is not None:
        ls.slot.backend.close()


def _exit(ls: CodeLlamaServer, *args: Any) -> None:
    """End at once: the engine's worker thread must not keep the process alive."""
    logging.shutdown()
    os._exit(0 if ls.shutdown_requested else 1)


async def _inline_completion(ls: CodeLlamaServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    text = await ls.suggest(params.text_document.uri, params.position)
    if not text:
        return types.InlineCompletionList(items=[])
    at = types.Range(start=params.position, end=params.position)
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=at)])


async def _completion(ls: CodeLlamaServer, params: types.CompletionParams) -> types.CompletionList:
    """The same suggestion as one item, for clients without inline completion."""
    text = await ls.suggest(params.text_document.uri, params.position)
    if not text:
        return types.CompletionList(is_incomplete=True, items=[])
    first = text.strip().splitlines()[0]
    at = types.Range(start=params.position, end=params.position)
    item = types.CompletionItem(
        label=first if len(first) <= 60 else first[:57] + "...",
        kind=types.CompletionItemKind.Text,
        detail="codellama",
        documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{text}\n```"),
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=at, new_text=text),
        filter_text="",
        sort_text="0",
        preselect=True,
    )
    # Incomplete: the client asks again as the user types, which is when suggestions change.
    return types.CompletionList(is_incomplete=True, items=[item])


async def _hover(ls: CodeLlamaServer, params: types.HoverParams) -> types.Hover | None:
    found = await ls.docstring(params.text_document.uri, params.position)
    if found is None:
        return None
    _, d, text = found
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=ds.markdown(d, text)))


def _resolves_edits(ls: CodeLlamaServer) -> bool:
    td = ls.client_capabilities.text_document
    support = td.code_action.resolve_support if td and td.code_action else None
    return bool(support and "edit" in support.properties)


async def _code_action(ls: CodeLlamaServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    doc = ls.documents.get(params.text_document.uri)
    only = params.context.only
    if doc is None or (only and not any(types.CodeActionKind.RefactorRewrite.value.startswith(k) for k in only)):
        return []
    start = params.range.start
    if not 0 <= start.line < len(doc.lines):
        return []
    d = ds.find_definition(doc, start.line)
    if d is None or d.has_docstring:
        return []
    action = types.CodeAction(title=GENERATE_DOCSTRING, kind=types.CodeActionKind.RefactorRewrite,
                              data={"uri": doc.uri, "line": start.line, "character": start.character})
    return [action] if _resolves_edits(ls) else [await _resolve_code_action(ls, action)]


async def _resolve_code_action(ls: CodeLlamaServer, action: types.CodeAction) -> types.CodeAction:
    data = action.data if isinstance(action.data, dict) else {}
    try:
        uri, position = str(data["uri"]), types.Position(line=int(data["line"]), character=int(data["character"]))
    except (KeyError, TypeError, ValueError):
        log.warning("codeAction/resolve without the data this server put there: %r", action.data)
        return action
    found = await ls.docstring(uri, position)
    if found is not None:
        doc, d, text = found
        line, insert = ds.edit(doc, d, text)
        where = types.Range(start=types.Position(line=line, character=0), end=types.Position(line=line, character=0))
        action.edit = types.WorkspaceEdit(changes={doc.uri: [types.TextEdit(range=where, new_text=insert)]})
    return action


def _status(ls: CodeLlamaServer, *args: Any) -> dict[str, Any]:
    return ls.status()


def build_server(settings: Settings, default_model: Path = BUNDLED_MODEL) -> CodeLlamaServer:
    server = CodeLlamaServer(settings, default_model)
    server.feature(types.INITIALIZE)(_initialize)
    server.feature(types.INITIALIZED)(_initialized)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(_did_change_configuration)
    server.feature(types.SHUTDOWN)(_shutdown)
    server.feature(types.EXIT)(_exit)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(_inline_completion)
    server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))(_completion)
    server.feature(types.TEXT_DOCUMENT_HOVER)(_hover)
    server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.RefactorRewrite], resolve_provider=True))(_code_action)
    server.feature(types.CODE_ACTION_RESOLVE)(_resolve_code_action)
    server.command(STATUS_COMMAND)(_status)
    return server
