"""Plain results turned into LSP types, and LSP request data read back: no logic, no state.

Handlers in ``server`` get the document, call a plain function, and hand its result to
one of these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from lsprotocol import types

from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.definitions import Definition
from codellama_lsp import __version__
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.documents import Document
from codellama_lsp.engine import default_model

if TYPE_CHECKING:
    from codellama_lsp.service.completion_service import Snapshot

GENERATE_DOCSTRING = "Generate docstring"
LABEL_CHARS = 60  # a completion menu shows about this much of a label


def inline_list(text: str, position: types.Position) -> types.InlineCompletionList:
    at = types.Range(start=position, end=position)
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=at)] if text else [])


def completion_list(text: str, position: types.Position) -> types.CompletionList:
    """The suggestion as one item, for clients without inline completion.

    Incomplete, so the client asks again as the user types, which is when suggestions change.
    """
    if not text:
        return types.CompletionList(is_incomplete=True, items=[])
    first = text.strip().splitlines()[0]
    at = types.Range(start=position, end=position)
    item = types.CompletionItem(
        label=first if len(first) <= LABEL_CHARS else first[: LABEL_CHARS - 3] + "...",
        kind=types.CompletionItemKind.Text,
        detail="codellama",
        documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{text}\n```"),
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=at, new_text=text),
        filter_text="",
        sort_text="0",
        preselect=True,
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def hover(d: Definition, text: str) -> types.Hover:
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=ds.markdown(d, text)))


def admits(only: Sequence[str] | None, kind: str) -> bool:
    """Whether a code action request's ``only`` filter admits actions of ``kind`` (kinds are dot-separated
    hierarchies: ``refactor`` admits ``refactor.rewrite``)."""
    return not only or any(kind == k or kind.startswith(k + ".") for k in only)


# The Instruct actions' kinds: under refactor (VS Code's Refactor menu) and quickfix (the lightbulb's fixes).
INSTRUCT_KINDS = {"explain": "refactor.codellama.explain", "tests": "refactor.codellama.tests",
                  "edit": "refactor.codellama.edit", "fix": "quickfix.codellama.fix"}


def instruct_action(title: str, action: str, argument: dict[str, Any], command: str) -> types.CodeAction:
    """An Instruct action: the client runs ``command`` with ``argument`` when it is chosen."""
    return types.CodeAction(title=f"codellama: {title}", kind=INSTRUCT_KINDS[action],
                            command=types.Command(title=title, command=command, arguments=[argument]))


def resolves_edits(caps: types.ClientCapabilities) -> bool:
    """Whether the client resolves a code action's edit lazily (so generation waits for the choice)."""
    td = caps.text_document
    support = td.code_action.resolve_support if td and td.code_action else None
    return bool(support and "edit" in support.properties)


MAX_HEADER_DATA = 2000  # characters of a definition's header kept in a code action's data


def docstring_action(uri: str, position: types.Position, version: int | None = None,
                     header: str | None = None) -> types.CodeAction:
    """The action, with what resolving it needs: the place, and the document version and header it was found
    in, so a resolve after an edit can find the definition again (or give up) instead of using a stale line."""
    data: dict[str, Any] = {"uri": uri, "line": position.line, "character": position.character, "version": version}
    if header is not None and len(header) <= MAX_HEADER_DATA:
        data["header"] = header
    return types.CodeAction(title=GENERATE_DOCSTRING, kind=types.CodeActionKind.RefactorRewrite, data=data)


@dataclass(frozen=True)
class ActionPlace:
    uri: str
    position: types.Position
    version: int | None  # the document version the position belongs to (None: unknown)
    header: str | None


def action_place(action: types.CodeAction) -> ActionPlace | None:
    """What ``docstring_action`` stored in the action, or None if it is not there."""
    data: Any = action.data if isinstance(action.data, dict) else {}
    try:
        position = types.Position(line=int(data["line"]), character=int(data["character"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    version, header = data.get("version"), data.get("header")
    return ActionPlace(str(data.get("uri")), position, version if isinstance(version, int) else None,
                       header if isinstance(header, str) else None)


def workspace_edit(caps: types.ClientCapabilities, doc: Document, edits: list[types.TextEdit]) -> types.WorkspaceEdit:
    """Edits to ``doc`` as of its current version: a versioned ``documentChanges`` edit, which the editor
    rejects if the document has changed since, when the client supports one; else plain ``changes``."""
    ws = caps.workspace
    if ws is not None and ws.workspace_edit is not None and ws.workspace_edit.document_changes:
        target = types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version)
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(text_document=target, edits=edits)])
    return types.WorkspaceEdit(changes={doc.uri: edits})


def docstring_edit(doc: Document, d: Definition, text: str, caps: types.ClientCapabilities) -> types.WorkspaceEdit:
    line, insert = ds.edit(doc, d, text)
    where = types.Position(line=line, character=0)
    return workspace_edit(caps, doc, [types.TextEdit(range=types.Range(start=where, end=where), new_text=insert)])


def status(snapshot: "Snapshot", encoding: str) -> dict[str, Any]:
    """What ``codellama.status`` answers: the model, its load, the settings in force, and the counters."""
    slot, settings, in_force = snapshot.slot, snapshot.settings, snapshot.in_force
    backend = slot.backend
    return {
        "version": __version__,
        "model": str(slot.path),
        "state": slot.state,
        "error": slot.error,
        "device": str(backend.device) if backend else settings.device,
        "dtype": str(backend.dtype).removeprefix("torch.") if backend else settings.dtype,
        # The local engine that computes ("torch", "llamacpp"); a remote backend's name; the setting before loading.
        "engine": getattr(backend, "kind", settings.backend) if backend else settings.engine,
        "load_ms": slot.load_ms,
        # How this start verified the default model's file (full or sampled hash); None for other models.
        "model_verified": default_model.how_verified(slot.path),
        # Draft tokens checked per forward pass; 0 where the llama.cpp engine found this CPU's kernels
        # not batch-invariant (engine.llamacpp.LlamaCppRunner.batch_invariant). None: a remote backend.
        "draft_tokens": getattr(backend, "draft_tokens", None),
        # The window in positions (a remote backend's: the contextLength given, else what the server
        # said at load, else None) and the local engine's memory plan (engine.memory_plan): its KV
        # bytes, and how many full-length sequences the prompt cache's budget holds beside it.
        "context_length": backend.context_length if backend else None,
        "kv_bytes": memory.kv_bytes if (memory := getattr(backend, "memory", None)) is not None else None,
        "memory_plan": memory.describe(backend.prompt_cache.budget_bytes) if memory is not None else None,
        "settings": {k: v for k, v in asdict(settings).items() if k != "given"},
        "format": in_force.format if backend else None,
        # The budgets requests use: the device's where the client set none, cut to the context.
        "budgets": {k: getattr(in_force, k) for k in ("prefix_tokens", "suffix_tokens", "max_new_tokens",
                                                     "time_budget_ms")},
        "family": slot.template.describe() if slot.template else None,
        # Whether the Instruct actions are offered: the chat layout, or why there is none.
        "chat": snapshot.chat.describe() if snapshot.chat is not None else None,
        "position_encoding": encoding,
        "open_documents": snapshot.open_documents,
        **snapshot.metrics,
        "shared_requests": snapshot.shared_requests,
        "prefetches": snapshot.prefetches,  # started; "prefetched" under requests counts the hits
        "in_flight": snapshot.in_flight,
        "generated_tokens": backend.generated_tokens if backend else 0,
        "token_cache": _token_cache(slot.ready.counter) if slot.ready is not None else None,
        # The local engine's kept KV sequences (engine.prompt_cache); None: a remote backend.
        "prompt_cache": cache.describe() if (cache := getattr(backend, "prompt_cache", None)) is not None else None,
        "context": _context(snapshot, in_force.context_tokens),
    }


def _context(snapshot: "Snapshot", budget: int) -> dict[str, Any]:
    """Other files' snippets: the budget in force, the workspace, and what the last suggestion's prompt had."""
    uri, snippets, header = snapshot.last_context
    return {
        "context_tokens": budget,
        "root": str(snapshot.root) if snapshot.root else None,
        "document": uri or None,
        "snippets": [{"path": x.snippet.path, "lines": [x.snippet.start + 1, x.snippet.end], "source": x.snippet.source,
                      "score": round(x.score, 3), "tokens": x.tokens} for x in snippets],
        "header_lines": header.count("\n"),  # the file's own import lines put back in front of the window
    }


def _token_cache(counter: TokenCounter) -> dict[str, int]:
    return {"entries": len(counter), "bytes": counter.bytes, "max_bytes": counter.max_bytes}
