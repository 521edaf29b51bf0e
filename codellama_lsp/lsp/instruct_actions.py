"""Instruct actions over LSP: offered as code actions, run by the ``codellama.instruct`` command.

A code action carries the command and what it is about (the action, the document, its
version and the range: the selection, or the definition at the cursor). The client runs
the command (VS Code and Neovim ask for the instruction of "Edit selection…" first and add
it to the arguments); the server generates in the model's chat layout, streaming the text
as work-done progress, and answers: Explain with markdown for the client to show, the
others by sending ``workspace/applyEdit`` (a versioned edit) and answering what it sent.
An answer for a document that changed meanwhile is not applied; a failure answers
``{"error": ...}``, never an exception.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from lsprotocol import types

from codellama_lsp.completion.definitions import enclosing_definition
from codellama_lsp.completion.syntax import language_of
from codellama_lsp.completion import instruct_prompts as prompts
from codellama_lsp.completion.chat import Chat
from codellama_lsp.completion.postprocess import UNFINISHED_PROSE, whole_sentences
from codellama_lsp.documents import Cursor, Document, PositionOutOfRange
from codellama_lsp.generation import GenerationRequest
from codellama_lsp.loading import Ready
from codellama_lsp.service.metrics import Metrics, counted_generation
from codellama_lsp.settings import Settings

log = logging.getLogger("codellama_lsp")

COMMAND = "codellama.instruct"
# Code takes 3 to 4 characters a token; a selection with more than this many characters per token of the
# context is far too long whatever its tokens, and is refused without tokenizing it (seconds for megabytes).
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class Call:
    """One ``codellama.instruct`` command's arguments, checked."""

    action: prompts.Action
    uri: str
    range: types.Range
    version: int | None
    instruction: str | None
    diagnostics: tuple[str, ...]


def parse_call(args: Any) -> Call | str:
    """The call in the command's first argument, or why it is not one."""
    raw = args[0] if isinstance(args, (list, tuple)) and args else None
    raw = raw if isinstance(raw, dict) else {}
    action, uri, version = raw.get("action"), raw.get("uri"), raw.get("version")
    if action not in prompts.TITLES or not isinstance(uri, str):
        return f"{COMMAND} needs {{action: one of {', '.join(prompts.TITLES)}, uri, range, version}}"
    try:
        r = raw["range"]
        rng = types.Range(start=types.Position(int(r["start"]["line"]), int(r["start"]["character"])),
                          end=types.Position(int(r["end"]["line"]), int(r["end"]["character"])))
    except (KeyError, TypeError, ValueError, OverflowError):
        return f"{COMMAND}: range must be an LSP range"
    instruction = raw.get("instruction")
    if action == "edit" and not (isinstance(instruction, str) and instruction.strip()):
        return "Edit selection needs an instruction"
    diagnostics = tuple(str(d) for d in raw.get("diagnostics") or () if isinstance(d, str))
    return Call(action, uri, rng, version if isinstance(version, int) else None,
                instruction.strip() if isinstance(instruction, str) else None, diagnostics)


def target(doc: Document, rng: types.Range) -> types.Range | None:
    """What an action at ``rng`` is about: a selection as it is; at a cursor, the whole lines of the
    definition around it (None: there is none)."""
    if rng.start != rng.end:
        return rng
    if not 0 <= rng.start.line < len(doc.lines):
        return None
    d = enclosing_definition(doc, rng.start.line)
    if d is None:
        return None
    start = types.Position(line=d.first_line, character=0)
    if d.last_line + 1 < len(doc.lines):
        return types.Range(start=start, end=types.Position(line=d.last_line + 1, character=0))
    return types.Range(start=start, end=types.Position(line=d.last_line, character=len(doc.lines[d.last_line])))


def span(doc: Document, rng: types.Range) -> tuple[Cursor, Cursor, str]:
    """The cursors at ``rng``'s ends and the text between them (PositionOutOfRange past the end)."""
    a = doc.cursor(rng.start.line, rng.start.character)
    b = doc.cursor(rng.end.line, rng.end.character, clamp_line=True)
    if (b.line, b.index) < (a.line, a.index):
        raise PositionOutOfRange("the range ends before it starts")
    if a.line == b.line:
        return a, b, doc.lines[a.line][a.index: b.index]
    return a, b, doc.lines[a.line][a.index:] + "".join(doc.lines[a.line + 1: b.line]) + doc.lines[b.line][: b.index]


def range_json(r: types.Range) -> dict[str, Any]:
    return {"start": {"line": r.start.line, "character": r.start.character},
            "end": {"line": r.end.line, "character": r.end.character}}


def in_range(d: types.Diagnostic, rng: types.Range) -> bool:
    return not (d.range.end.line < rng.start.line or d.range.start.line > rng.end.line)


def diagnostic_lines(diagnostics: list[types.Diagnostic], rng: types.Range) -> list[str]:
    """The diagnostics touching ``rng``, one line each, for the Fix prompt."""
    return [f"line {d.range.start.line + 1}: {d.message}" + (f" ({d.source})" if d.source else "")
            for d in diagnostics if in_range(d, rng)]


def offered(doc: Document, rng: types.Range, diagnostics: list[types.Diagnostic],
            chat: Chat) -> list[tuple[prompts.Action, dict[str, Any]]]:
    """The Instruct actions for a code action request at ``rng``, each with its command argument."""
    if not chat.available:
        return []
    where = target(doc, rng)
    if where is None:
        return []
    base = {"uri": doc.uri, "version": doc.version, "range": range_json(where)}
    problems = diagnostic_lines(diagnostics, where)
    actions: list[prompts.Action] = ["explain", "tests", "edit"] + (["fix"] if problems else [])
    return [(a, {**base, "action": a, **({"diagnostics": problems} if a == "fix" else {})}) for a in actions]


class Report(Protocol):
    """An action's progress as the editor shows it: begun (with what cancels it), the text so far, the end."""

    async def begin(self, on_cancel: Callable[[], None]) -> None: ...
    def report(self, text: str) -> None: ...
    def end(self, message: str) -> None: ...


class Editor(Protocol):
    """What an Instruct action needs of the editor: an open document, an edit applied to it, progress shown."""

    def document(self, uri: str) -> Document | None: ...
    async def apply(self, doc: Document, edits: list[types.TextEdit], label: str) -> bool: ...
    def progress(self, title: str) -> Report: ...


def request_for(call: Call, doc: Document, code: str, chat: Chat, ready: Ready, settings: Settings,
                on_text: Callable[[str], None]) -> GenerationRequest:
    language = language_of(doc.language_id, doc.uri) or "text"
    dialog = prompts.dialog(call.action, prompts.Code(code, language, doc.uri), call.diagnostics, call.instruction)
    return GenerationRequest(prompt=chat.prompt(ready.backend.tokenizer, dialog), infilling=False,
                             max_new_tokens=settings.instruct_max_tokens, temperature=settings.temperature,
                             time_budget_ms=settings.instruct_time_budget_ms, stop_ids=chat.stop_ids,
                             on_text=on_text)


def result_edit(call: Call, doc: Document, end: Cursor, code: str, answer: str) -> tuple[types.Range, str]:
    """Where the answer goes and its text: Edit and Fix replace the code; Write tests go below it."""
    body = prompts.code_in(answer)
    eol = doc.line_ending(min(end.line, len(doc.lines) - 1))  # the model writes LF; the document keeps its own
    if call.action in ("edit", "fix"):
        return call.range, prompts.placed(body, code).replace("\n", eol)
    # Below the code, after a blank line: the tests stay next to what they test, and any client
    # applies this (a new file would need resource operations many clients lack).
    tests = textwrap.dedent(body).strip("\n").replace("\n", eol) + eol
    line = end.line + 1 if end.index > 0 else end.line
    if line < len(doc.lines):
        at = types.Position(line=line, character=0)
        return types.Range(start=at, end=at), eol + tests
    last = len(doc.lines) - 1  # the code ends the document, on a line without a line break
    at = types.Position(line=last, character=len(doc.lines[last]))
    return types.Range(start=at, end=at), eol * 2 + tests


async def run(editor: Editor, call: Call, ready: Ready, chat: Chat, settings: Settings,
              metrics: Metrics) -> dict[str, Any]:
    """Generate ``call``'s answer and deliver it: markdown for Explain, ``workspace/applyEdit`` for the others."""
    title = prompts.TITLES[call.action]
    doc = editor.document(call.uri)
    if doc is None:
        return {"error": f"{call.uri} is not open"}
    if call.version is not None and doc.version != call.version:
        return {"error": f"{title}: the document changed since the action was offered; ask again"}
    try:
        _, end, code = span(doc, call.range)
    except PositionOutOfRange as exc:
        return {"error": f"{title}: {exc}"}
    if not code.strip():
        return {"error": f"{title}: the range is empty"}
    limit = ready.backend.context_length
    if limit is not None and len(code) > limit * MAX_CHARS_PER_TOKEN:
        return {"error": f"{title}: the code is too long for the model's {limit}-token context "
                         f"({len(code)} characters); select less"}
    stream = editor.progress(title)
    computed_for = doc.version
    # Tokenizing a long selection takes a while: off the event loop, which goes on answering meanwhile.
    request = await asyncio.to_thread(request_for, call, doc, code, chat, ready, settings, stream.report)
    if limit is not None and len(request.prompt) + request.max_new_tokens > limit:
        return {"error": f"{title}: the code is too long for the model's {limit}-token context "
                         f"({len(request.prompt)} + {request.max_new_tokens} tokens); select less"}
    await stream.begin(request.cancel.set)
    outcome = "failed"
    try:
        result = await counted_generation(ready.backend, request, metrics, f"{title} in {call.uri}")
        if result is None:
            return {"error": f"{title} failed; see the server log"}
        if result.stop_reason == "cancelled":
            outcome = "cancelled"
            return {"error": f"{title} cancelled"}
        cut = result.stop_reason in UNFINISHED_PROSE  # the time budget or token limit ended it mid-way
        if cut and call.action in ("edit", "fix") and not prompts.code_closed(result.text):  # half a replacement
            # would lose the rest of the code; a closed code block cut in the prose after it is whole
            return {"error": f"{title}: the answer did not finish within instructMaxTokens or instructTimeBudgetMs; "
                             "nothing was changed (select less, or raise them)"}
        outcome = "done"
        metrics.count(f"instruct_{call.action}")
        if call.action == "explain":
            return {"action": "explain", "markdown": (whole_sentences(result.text) if cut else result.text).strip()}
        now = editor.document(call.uri)
        if now is not doc or doc.version != computed_for:
            return {"error": f"{title}: the document changed while the model was writing; nothing was changed"}
        where, text = result_edit(call, doc, end, code, result.text)
        if not text.strip():
            return {"error": f"{title}: the model wrote no code"}
        applied = await editor.apply(doc, [types.TextEdit(range=where, new_text=text)], f"codellama: {title}")
        return {"action": call.action, "applied": applied, "range": range_json(where), "text": text}
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        stream.end(outcome)
