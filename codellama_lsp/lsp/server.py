"""The pygls language server: LSP wiring around plain modules.

Each handler gets the document, calls a plain function (``completion.planning``,
``completion.docstring``, ``lifecycle``) and converts the result (``convert``). Nothing
here raises to the client for a bad document, position or setting: those get an empty
result and a log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from codellama_lsp import __version__
from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.planning import Sources, generation_request, plan, shown
from codellama_lsp.completion.snippets import Scored
from codellama_lsp.documents import Cursor, Document
from codellama_lsp.generation import Backend
from codellama_lsp.lsp import convert
from codellama_lsp.completion.chat import Chat, detect_chat
from codellama_lsp.completion.instruct import TITLES
from codellama_lsp.lsp import instruct
from codellama_lsp.lsp.docstrings import Docstrings
from codellama_lsp.lsp.lifecycle import Ahead, Anchor, Flight, Lifecycle
from codellama_lsp.lsp.loading import BackendSlot, Ready, default_model_path, load_into, size_prompt_cache
from codellama_lsp.lsp.log import attach_to_running_loop as attach_log_to_client
from codellama_lsp.lsp.metrics import Metrics, counted_generation
from codellama_lsp.lsp.progress import LspProgress
from codellama_lsp.positions import negotiate
from codellama_lsp.lsp.protocol import CURSOR_REST, REQUEST_ID, CodeLlamaProtocol
from codellama_lsp.lsp.open_documents import OpenDocuments, Place
from codellama_lsp.lsp.parent import watch_client
from codellama_lsp.settings import SECTION, Settings, apply, fit_to_context, for_device, resolve_format
from codellama_lsp.workspace import Workspace, uri_path

log = logging.getLogger("codellama_lsp")

STATUS_COMMAND = "codellama.status"
# A prefetch begins once the user has paused this long (reading the suggestion, about to accept
# it), not between keystrokes: a prefill under way cannot stop, and would delay the next one.
PREFETCH_PAUSE_S = 0.3


def anchor_at(doc: Document, cursor: Cursor) -> Anchor:
    line = doc.line_text(cursor.line)
    return Anchor(cursor.line, line[: cursor.index], line[cursor.index:])


class CodeLlamaServer(LanguageServer):
    def __init__(self, settings: Settings, default_model: Path | None = None) -> None:
        super().__init__("codellama-lsp", __version__, protocol_cls=CodeLlamaProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = settings
        self.default_model = default_model or default_model_path()
        self.slot = BackendSlot(self.model_path(settings))
        self.docs = OpenDocuments()
        self.repo = Workspace()
        # The last suggestion's document, snippets and header of imports (for the status).
        self.last_context: tuple[str, tuple[Scored, ...], str] = ("", (), "")
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.docstrings = Docstrings(self.lifecycle, self.metrics)
        self.encoding = "utf-16"
        self.shutdown_requested = False
        self._load_task: asyncio.Task | None = None
        self._fit_note: str | None = None  # the last budget-cut warning shown, so it is shown once
        self.commands: dict[Any, asyncio.Task] = {}  # running codellama.instruct commands by request id

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
        elif self.slot.backend is not None:
            size_prompt_cache(self.slot.backend, self.settings)

    def request_settings(self, backend: Backend) -> Settings:
        """The settings a request uses: the budgets of ``backend``'s device where the client set none,
        format "auto" resolved for its model, and the budgets cut to fit its context, with a warning once."""
        own = for_device(self.settings, on_cpu=str(backend.device) == "cpu")
        fitted, note = fit_to_context(resolve_format(own, backend.preferred_format), backend.context_length)
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
            await load_into(self.slot, self.settings, LspProgress(self))
        finally:
            if old is not None:
                old.close()
        if self.slot.ready is not None:
            self.docs.places.clear()
            self.docstrings.clear()

    # -- documents --------------------------------------------------------------------------------------
    def open_document(self, item: types.TextDocumentItem) -> None:
        self.docs.open(item, self.encoding)

    def change_document(self, params: types.DidChangeTextDocumentParams) -> None:
        self.docs.change(params)
        uri = params.text_document.uri
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                self.repo.edited(uri, change.range.start.line + change.text.count("\n"))

    def close_document(self, uri: str) -> None:
        self.docs.close(uri)
        self.repo.forget(uri)
        self.lifecycle.forget(uri)
        self.docstrings.forget(uri)
        if self.slot.ready is not None:
            self.slot.ready.counter.forget(uri)

    def locate(self, uri: str, position: types.Position, what: str) -> tuple[Document, Cursor] | None:
        """The document and cursor for a request, or None (logged and counted) when either is unknown."""
        found = self.docs.locate(uri, position, what)
        if isinstance(found, str):
            self.metrics.count(found)
            return None
        return found

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
                and outcome in ("answered", "typed_ahead", "prefetched", "typed_through")):
            self._prefetch(doc, cursor, text, ready)
        return text

    def _prefetch(self, doc: Document, cursor: Cursor, shown: str, ready: Ready) -> None:
        """Compute, once the user pauses, the suggestion at the end of ``shown`` once it is typed or accepted."""
        version = doc.version

        def prepare() -> tuple[Ahead, Callable[[Flight], Awaitable[str]]] | None:
            if doc.version != version:  # edited during the pause, without asking for a suggestion
                return None
            ahead_doc, end = doc.inserted(cursor, shown)
            return (Ahead(anchor_at(ahead_doc, end), ahead_doc.digest()),
                    lambda flight: self._complete(ahead_doc, end, ready, flight, what="prefetch"))

        self.lifecycle.prefetch(doc.uri, prepare, PREFETCH_PAUSE_S)

    def warm(self, uri: str, position: types.Position) -> None:
        """Compute the suggestion where the cursor rests, before it is asked for (llama.vim's CursorHold warm-up).

        The user is reading; by the time they type, the prompt at this place is in the KV cache
        and its suggestion is ready. It is the lowest-priority work: a prefetch at the cursor's
        own place, which any request cancels (between prefill chunks, keeping what was computed).
        """
        ready = self.slot.ready
        if ready is None or not self.settings.enabled:
            return
        found = self.locate(uri, position, "warm-up")
        if found is None:
            return
        doc, cursor = found
        version, here = doc.version, anchor_at(doc, cursor)

        def prepare() -> tuple[Ahead, Callable[[Flight], Awaitable[str]]] | None:
            if doc.version != version:
                return None
            return (Ahead(here, doc.digest()),
                    lambda flight: self._complete(doc, cursor, ready, flight, what="warm-up"))

        if self.lifecycle.warm(uri, here, prepare):
            self.metrics.count("warm_up")

    def _complete(self, doc: Document, cursor: Cursor, ready: Ready, flight: Flight,
                  what: str = "completion") -> Awaitable[str]:
        """Plan now, while the document is as the request saw it; generate in the returned awaitable.

        A prefetch (``what``) plans a document that is not the editor's yet, so its plan is not
        kept as the document's window, snippets and status context. A prefetch or a warm-up is
        not where the user types yet (``generation_request``'s ``typing``).
        """
        backend = ready.backend
        settings = self.request_settings(backend)
        where = f"{what} at {cursor.line}:{cursor.index} in {doc.uri}"
        documents, ws = self.docs.documents, self.repo
        place = self.docs.place_at(doc.uri, cursor.line)
        sources = None if settings.context_tokens <= 0 else Sources(  # off: no scan of the document at all
            ws.name, ws.relative(doc.uri), lambda lines: ws.candidates(doc, lines, documents),
            place.snippets if place else None, ws.import_lines(doc), ws.import_spans(doc))
        try:
            p = plan(doc, cursor, settings, ready.template, backend.tokenizer, ready.counter_for(doc.uri),
                     place.window if place else None, sources, heal=settings.token_healing and backend.heals)
        except Exception as exc:  # noqa: BLE001 - e.g. a tokenizer without infilling pieces
            log.warning("%s: no prompt: %s", where, exc)
            return asyncio.sleep(0, "")
        if what != "prefetch":
            self.docs.remember(doc.uri, Place(p.window, p.snippets))
            self.last_context = (doc.uri, p.snippets, p.header)
        request = generation_request(p, settings, on_text=lambda text: setattr(flight, "partial", text),
                                     typing=what == "completion")

        async def generate() -> str:
            result = await counted_generation(backend, request, self.metrics, where)
            if result is None:
                return ""
            text = shown(result, p)
            log.debug("%s %s: %d/%d tokens reused, %d generated, stop %s: %r", where, p.mode, result.reused_tokens,
                      result.prompt_tokens, result.generated_tokens, result.stop_reason, text)
            return text

        return generate()

    # -- Instruct actions -------------------------------------------------------------------------------
    def chat(self) -> Chat:
        """The loaded model's chat layout (``chat`` setting), or none and why: what status and actions use."""
        ready = self.slot.ready
        return Chat(None, f"the model is {self.slot.state}") if ready is None else \
            detect_chat(ready.backend.tokenizer, self.settings.chat)

    async def apply(self, edit: types.WorkspaceEdit, label: str) -> bool:
        """Send ``edit`` with workspace/applyEdit; whether the client applied it (it refuses a stale version)."""
        try:
            answer = await self.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=label))
        except Exception as exc:  # noqa: BLE001 - a client that cannot apply edits gets the edit in the answer
            log.warning("workspace/applyEdit failed: %s", exc)
            return False
        return bool(answer and answer.applied)

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
        call = instruct.parse_call(args)
        if isinstance(call, str):
            log.warning("%s", call)
            return {"error": call}
        ready, chat = self.slot.ready, self.chat()
        if ready is None or not chat.available:
            return {"error": f"no Instruct actions: {chat.describe()}"}
        settings = self.request_settings(ready.backend)
        try:
            return await instruct.run(self, call, ready, chat, settings, self.metrics)
        except asyncio.CancelledError:
            self.metrics.count("cancelled")
            raise

    # -- docstrings -------------------------------------------------------------------------------------
    async def docstring(self, uri: str, position: types.Position, version: int | None = None,
                        header: str | None = None) -> tuple[Document, ds.Definition, str] | None:
        """A generated docstring for the undocumented definition at ``position`` of document ``version``."""
        ready, doc = self.slot.ready, self.docs.documents.get(uri)
        if ready is None:
            return None
        if doc is None or version is None or doc.version == version:
            found = self.locate(uri, position, "docstring")
            if found is None:
                return None
            doc = found[0]
        return await self.docstrings.generate(doc, position.line, version, header, ready,
                                              self.request_settings(ready.backend), self.chat(), self.docs.documents.get)


# -- handlers ---------------------------------------------------------------------------------------------

def _initialize(ls: CodeLlamaServer, params: types.InitializeParams) -> None:
    attach_log_to_client()  # the log may go to the client from now on (see lsp/log.py)
    ls.encoding = negotiate([str(getattr(e, "value", e)) for e in (params.capabilities.general.position_encodings or [])]
                            if params.capabilities.general else None)
    ls.apply_settings(params.initialization_options, "initializationOptions")
    ls.repo.root = workspace_root(params)
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
    ls.repo.saved(params.text_document.uri)


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


def _cursor_rest(ls: CodeLlamaServer, params: types.TextDocumentPositionParams) -> None:
    ls.warm(params.text_document.uri, params.position)


async def _inline_completion(ls: CodeLlamaServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    return convert.inline_list(await ls.suggest(params.text_document.uri, params.position), params.position)


async def _completion(ls: CodeLlamaServer, params: types.CompletionParams) -> types.CompletionList:
    return convert.completion_list(await ls.suggest(params.text_document.uri, params.position), params.position)


async def _hover(ls: CodeLlamaServer, params: types.HoverParams) -> types.Hover | None:
    found = await ls.docstring(params.text_document.uri, params.position)
    return None if found is None else convert.hover(found[1], found[2])


async def _code_action(ls: CodeLlamaServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    doc, start = ls.docs.documents.get(params.text_document.uri), params.range.start
    if doc is None or not 0 <= start.line < len(doc.lines):
        return []
    only = params.context.only
    actions = [convert.instruct_action(TITLES[a], a, arg, instruct.COMMAND)
               for a, arg in instruct.offered(doc, params.range, params.context.diagnostics, ls.chat())
               if convert.admits(only, convert.INSTRUCT_KINDS[a])]
    d = ds.find_definition(doc, start.line)
    if d is None or d.has_docstring or not convert.admits(only, types.CodeActionKind.RefactorRewrite.value):
        return actions
    action = convert.docstring_action(doc.uri, start, doc.version, ds.header_text(doc, d))
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
    return convert.status(ls)


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
    server.command(instruct.COMMAND)(_instruct)
    return server
