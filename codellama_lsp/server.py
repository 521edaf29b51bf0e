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
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from . import BUNDLED_MODEL, __version__
from . import docstring as ds
from .completion import Plan, generation_request, plan, suggestion
from .context import TokenCounter, Window
from .documents import Cursor, Document, PositionOutOfRange
from .backends import Backend, open_backend
from .engine import GenerationRequest
from .lifecycle import Anchor, Flight, Lifecycle, Shown, rest_after_typing, typed_since
from .metrics import Metrics
from .positions import negotiate
from .prompt import infilling_tokens
from .protocol import CodeLlamaProtocol
from .settings import SECTION, Settings, apply, fit_to_context, resolve_format

log = logging.getLogger("codellama_lsp")

STATUS_COMMAND = "codellama.status"
GENERATE_DOCSTRING = "Generate docstring"
DOCSTRING_MAX_TOKENS = 128
DOCSTRING_TIME_BUDGET_MS = 5000.0
CONTEXT_LENGTH = 4096

T = TypeVar("T")


@dataclass
class ModelState:
    path: Path
    state: str = "not loaded"  # not loaded | loading | ready | failed
    error: str | None = None
    engine: Backend | None = None  # the local engine, or a connection to an inference server
    load_ms: float | None = None


async def _const(value: T) -> T:
    return value


def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
    """Run ``fn`` on a daemon thread, so a slow load never keeps the process alive at exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="codellama-load", daemon=True).start()
    return future


class CodeLlamaServer(LanguageServer):
    def __init__(self, settings: Settings, default_model: Path = BUNDLED_MODEL) -> None:
        super().__init__("codellama-lsp", __version__, protocol_cls=CodeLlamaProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = settings
        self.default_model = default_model
        self.model = ModelState(self.model_path(settings))
        self.documents: dict[str, Document] = {}
        self.windows: dict[str, Window] = {}  # each document's last context window, for sticky edges
        self.lifecycle = Lifecycle()
        self.metrics = Metrics()
        self.counter: TokenCounter | None = None
        self.encoding = "utf-16"
        self.shutdown_requested = False
        self._load_task: asyncio.Task | None = None
        self._docstrings: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._fit_note: str | None = None  # the last budget-cut warning shown, so it is shown once

    # -- errors -----------------------------------------------------------------------------------------
    def report_server_error(self, error: Exception, source: Any) -> None:
        """Log instead of pygls' default pop-up: bad client input is logged, not shown to the user."""
        log.error("%s: %s", getattr(source, "__name__", source), error)

    def show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    # -- settings and the model -------------------------------------------------------------------------
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
        if self.settings.load_key != before.load_key and self.model.state != "not loaded":
            self.start_loading()

    def request_settings(self, engine: Backend) -> Settings:
        """The settings a request uses: format "auto" resolved for ``engine``'s model, and the budgets
        cut to fit its context, with a warning once."""
        fitted, note = fit_to_context(resolve_format(self.settings, engine.preferred_format), engine.context_length)
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
        self._load_task = asyncio.ensure_future(self.load_model())

    async def load_model(self) -> None:
        settings = self.settings
        path = self.model_path(settings)
        old = self.model.engine
        self.model = ModelState(path, state="loading")
        token = await self._begin_progress(f"Loading model {path}")
        log.info("loading model from %s (device %s, dtype %s)", path, settings.device, settings.dtype)
        t0 = time.perf_counter()
        try:
            engine = await _in_daemon_thread(self._load_engine, path, settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure is reported, the server stays up
            self.model.state, self.model.error = "failed", str(exc)
            log.error("cannot load the model at %s: %s", path, exc)
            self.show(types.MessageType.Error,
                      f"codellama-lsp: cannot load the model at {path}: {exc}. Suggestions stay empty until "
                      "the codellama.model setting (or --model) points at a valid checkpoint.")
        else:
            self.model.engine, self.model.state = engine, "ready"
            self.model.load_ms = (time.perf_counter() - t0) * 1000
            self.counter = TokenCounter(engine.tokenizer.encode)
            self.windows.clear()
            self._docstrings.clear()
            log.info("model ready: %s on %s (%s) in %.0f ms", path, engine.device, engine.dtype, self.model.load_ms)
        finally:
            if old is not None:
                old.close()
            if token is not None:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=self.model.state))

    @staticmethod
    def _load_engine(path: Path, settings: Settings) -> Backend:
        return open_backend(settings.backend, path, device=settings.device, dtype=settings.dtype,
                            context_length=CONTEXT_LENGTH, url=settings.url, served_model=settings.model,
                            tokenizer=Path(settings.tokenizer).expanduser() if settings.tokenizer else None,
                            api_key_env=settings.api_key_env)

    async def _begin_progress(self, message: str) -> str | None:
        caps = self.client_capabilities.window
        if not (caps and caps.work_done_progress):
            return None
        token = f"codellama-load-{uuid.uuid4()}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), 5)
        except Exception as exc:  # noqa: BLE001 - progress is a nicety; loading goes on without it
            log.warning("window/workDoneProgress/create failed: %s", exc)
            return None
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="codellama-lsp", message=message))
        return token

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

    # -- completion -------------------------------------------------------------------------------------
    async def suggest(self, uri: str, position: types.Position) -> str:
        """The suggestion at ``position``, or "" when there is none (the reason is logged)."""
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
        rest = self.lifecycle.typed_through(uri, here)
        if rest is not None:
            self.metrics.count("typed_through")
            self.metrics.answered((time.perf_counter() - t0) * 1000)
            return rest
        engine, counter = self.model.engine, self.counter
        if engine is None or counter is None:
            self.metrics.count("model_not_ready")
            log.info("completion before the model is ready (%s)", self.model.state)
            return ""

        def typed_ahead(flight: Flight) -> bool:
            """The user typed what the running generation has already written: wait for it."""
            return rest_after_typing(flight.partial, typed_since(flight.ident[0], here)) is not None

        try:
            outcome = await self.lifecycle.run(uri, (here, doc.version),
                                               lambda flight: self._complete(doc, cursor, engine, counter, flight),
                                               typed_ahead)
        except asyncio.CancelledError:
            self.metrics.count("cancelled")
            raise
        if outcome is None:
            self.metrics.count("superseded")
            return ""
        (anchor, _), text = outcome
        if anchor != here:  # answered by a generation started before the last keystrokes
            self.metrics.count("typed_ahead")
        self.lifecycle.remember(uri, Shown(anchor, text))
        text = text if anchor == here else rest_after_typing(text, typed_since(anchor, here)) or ""
        self.metrics.answered((time.perf_counter() - t0) * 1000)
        self.metrics.count("answered" if text else "empty")
        return text

    def _complete(self, doc: Document, cursor: Cursor, engine: Backend, counter: TokenCounter,
                  flight: Flight) -> Awaitable[str]:
        """Plan now, while the document is as the request saw it; generate in the returned awaitable."""
        settings = self.request_settings(engine)
        try:
            p = plan(doc, cursor, settings, engine.tokenizer, counter, self.windows.get(doc.uri))
        except Exception as exc:  # noqa: BLE001 - e.g. a tokenizer without infilling pieces
            log.warning("completion at %s:%s in %s: no prompt: %s", cursor.line, cursor.index, doc.uri, exc)
            return _const("")
        self.windows[doc.uri] = p.window
        request = generation_request(p, settings, on_text=lambda text: setattr(flight, "partial", text))
        return self._generate(engine, request, p, f"{cursor.line}:{cursor.index} in {doc.uri}")

    async def _generate(self, engine: Backend, request: GenerationRequest, p: Plan, where: str) -> str:
        t0 = time.perf_counter()
        try:
            result = await engine.agenerate(request)
        except asyncio.CancelledError:
            log.debug("completion %s stopped: superseded or cancelled", where)
            raise
        except Exception as exc:  # noqa: BLE001 - a failed request is logged and answered empty
            log.warning("completion %s failed: %s", where, exc)
            self.metrics.count("failed")
            return ""
        self.metrics.generated(result)
        text = suggestion(result.text, p)
        log.debug("completion %s %s %.0f ms, %d/%d tokens reused, %d generated, stop %s: %r", where, p.mode,
                  (time.perf_counter() - t0) * 1000, result.reused_tokens, result.prompt_tokens,
                  result.generated_tokens, result.stop_reason, text)
        return text

    # -- docstrings -------------------------------------------------------------------------------------
    async def docstring(self, uri: str, position: types.Position) -> tuple[Document, ds.Definition, str] | None:
        """A generated docstring for the undocumented definition at ``position``, if there is one."""
        found = self.locate(uri, position, "docstring")
        if found is None:
            return None
        doc, cursor = found
        d = ds.find_definition(doc, cursor.line)
        engine, counter = self.model.engine, self.counter
        if d is None or d.has_docstring or engine is None or counter is None:
            return None
        key = (uri, "".join(doc.lines[d.first_line: d.body_line]))
        if key in self._docstrings:
            return doc, d, self._docstrings[key]
        outcome = await self.lifecycle.run("docstring " + uri, key, lambda _: self._docstring(doc, d, engine, counter))
        text = outcome[1] if outcome else ""
        if not text:
            return None
        self._docstrings[key] = text
        if len(self._docstrings) > 64:
            self._docstrings.popitem(last=False)
        return doc, d, text

    def _docstring(self, doc: Document, d: ds.Definition, engine: Backend, counter: TokenCounter) -> Awaitable[str]:
        """Build the prompt now, while the document is as the request saw it; generate in the awaitable."""
        settings = self.request_settings(engine)
        prompt = ds.prompt(doc, d, settings.prefix_tokens, settings.suffix_tokens, counter)
        request = GenerationRequest(
            prompt=infilling_tokens(engine.tokenizer, prompt.prefix, prompt.suffix, settings.format),  # type: ignore[arg-type]
            max_new_tokens=DOCSTRING_MAX_TOKENS, temperature=settings.temperature,
            time_budget_ms=max(settings.time_budget_ms, DOCSTRING_TIME_BUDGET_MS), stop_strings=prompt.stop,
        )

        async def generate() -> str:
            try:
                result = await engine.agenerate(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; no docstring
                log.warning("docstring for %s in %s failed: %s", d.name, doc.uri, exc)
                return ""
            self.metrics.generated(result)
            return ds.clean(result.text, d.style)

        return generate()

    def docstring_edit(self, doc: Document, d: ds.Definition, text: str) -> types.WorkspaceEdit:
        line, insert = ds.edit(doc, d, text)
        where = types.Position(line=line, character=0)
        return types.WorkspaceEdit(changes={doc.uri: [types.TextEdit(range=types.Range(start=where, end=where), new_text=insert)]})

    # -- status -----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        engine = self.model.engine
        return {
            "version": __version__,
            "model": str(self.model.path),
            "state": self.model.state,
            "error": self.model.error,
            "device": str(engine.device) if engine else self.settings.device,
            "dtype": str(engine.dtype).removeprefix("torch.") if engine else self.settings.dtype,
            "load_ms": self.model.load_ms,
            "settings": asdict(self.settings),
            "format": resolve_format(self.settings, engine.preferred_format).format if engine else None,
            "position_encoding": self.encoding,
            "open_documents": len(self.documents),
            **self.metrics.snapshot(),
            "shared_requests": self.lifecycle.shared,
            "in_flight": self.lifecycle.running(),
            "generated_tokens": engine.generated_tokens if engine else 0,
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
    if ls.model.engine is not None:
        ls.model.engine.close()


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
        action.edit = ls.docstring_edit(*found)
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
