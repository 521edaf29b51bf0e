"""Drive a real ``codellama-lsp --stdio`` subprocess with pygls' LanguageClient, as an editor would.

Used by the tests, the benchmarks and anyone scripting the server; the server itself never
imports it.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient


class Client(LanguageClient):
    """A LanguageClient that records what the server sends on its own initiative."""

    def __init__(self) -> None:
        super().__init__("codellama-lsp-tests", "0")
        self.messages: list[types.ShowMessageParams] = []
        self.progress: list[types.ProgressParams] = []
        self.configuration: Any = None
        self.log_file: Path | None = None
        self.applied_edits: list[types.ApplyWorkspaceEditParams] = []
        self.apply_edits = True  # what the client answers workspace/applyEdit

        @self.feature(types.WINDOW_SHOW_MESSAGE)
        def _show(params: types.ShowMessageParams) -> None:
            self.messages.append(params)

        @self.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def _create(params: types.WorkDoneProgressCreateParams) -> None:
            return None

        @self.feature(types.PROGRESS)
        def _progress(params: types.ProgressParams) -> None:
            self.progress.append(params)

        @self.feature(types.WORKSPACE_APPLY_EDIT)
        def _apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
            self.applied_edits.append(params)
            return types.ApplyWorkspaceEditResult(applied=self.apply_edits)

        @self.feature(types.WORKSPACE_CONFIGURATION)
        def _configuration(params: types.ConfigurationParams) -> list[Any]:
            return [self.configuration for _ in params.items]

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._server is not None
        return self._server

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8") if self.log_file and self.log_file.exists() else ""

    async def status(self) -> dict[str, Any]:
        return await self.workspace_execute_command_async(types.ExecuteCommandParams(command="codellama.status"))

    async def wait_loaded(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if status["state"] in ("ready", "failed") or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.05)

    async def wait_writing(self, uri: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until a generation for ``uri`` is under way and has written something; the status then."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if status["in_flight"].get(uri, 0) > 0:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"no generation for {uri} wrote anything within {timeout} s")
            await asyncio.sleep(0.005)

    def raw_request(self, method: str, params: Any) -> "asyncio.Future[Any]":
        """Send a request exactly as given (no type checks), and await its response."""
        msg_id = str(uuid.uuid4())
        future: Future[Any] = Future()
        self.protocol._request_futures[msg_id] = future
        self.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return asyncio.wrap_future(future)

    def request(self, method: str, params: Any) -> tuple[str, "asyncio.Future[Any]"]:
        """Send a typed request with a known id (to cancel it later)."""
        msg_id = str(uuid.uuid4())
        return msg_id, asyncio.wrap_future(self.protocol.send_request(method, params, msg_id=msg_id))

    def open(self, uri: str, text: str, language_id: str = "python") -> None:
        self.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)))

    def change(self, uri: str, version: int, text: str, start: tuple[int, int], end: tuple[int, int]) -> None:
        rng = types.Range(start=types.Position(*start), end=types.Position(*end))
        self.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=text)]))

    async def inline(self, uri: str, line: int, character: int) -> str:
        result = await self.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        return items[0].insert_text if items else ""

    async def instruct(self, argument: dict[str, Any]) -> dict[str, Any]:
        """Run an Instruct action's command, as a client does once the user chose the action."""
        return await self.workspace_execute_command_async(
            types.ExecuteCommandParams(command="codellama.instruct", arguments=[argument]))

    async def configure(self, **settings: Any) -> None:
        self.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"codellama": settings}))
        await self.status()  # a round trip: the notification before it has been handled


def capabilities(encodings: list[str] | None = None, resolve_edits: bool = True) -> types.ClientCapabilities:
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
        window=types.WindowClientCapabilities(work_done_progress=True),
        workspace=types.WorkspaceClientCapabilities(configuration=True, apply_edit=True),
        text_document=types.TextDocumentClientCapabilities(
            code_action=types.CodeActionClientCapabilities(
                resolve_support=types.ClientCodeActionResolveOptions(properties=["edit"]) if resolve_edits else None)),
    )


async def start(model: Path | None, log_file: Path, *, encodings: list[str] | None = None, options: Any = None,
                resolve_edits: bool = True, initialize: bool = True, threads: int = 1, root: Path | None = None) -> Client:
    """The server on ``model`` (None: its default model), initialized unless told otherwise, in workspace ``root``."""
    client = Client()
    client.log_file = log_file
    chosen = [] if model is None else ["--model", str(model)]
    await client.start_io(sys.executable, "-m", "codellama_lsp", "--stdio", *chosen,
                          "--log-file", str(log_file), "--log-level", "DEBUG", "--threads", str(threads))
    if initialize:
        client.result = await client.initialize_async(types.InitializeParams(
            capabilities=capabilities(encodings, resolve_edits),
            initialization_options=options or {},
            process_id=None, root_uri=root.as_uri() if root else None,
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)] if root else None))
        client.initialized(types.InitializedParams())
    return client


async def stop(client: Client) -> None:
    if client.process.returncode is None:
        try:
            await asyncio.wait_for(client.shutdown_async(None), 5)
            client.exit(None)
            await asyncio.wait_for(client.process.wait(), 5)
        except (asyncio.TimeoutError, RuntimeError, ConnectionError, BrokenPipeError):
            client.process.kill()
    await client.stop()
