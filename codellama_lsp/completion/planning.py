"""One completion, from a document position to the text to show.

``plan`` gathers the context and builds the prompt, ``generation_request`` turns the
plan into an engine request (stop at a newline for single-line, stop at the end of the
block for multi-line), and ``suggestion`` post-processes the engine's text. The server,
``codellama-lsp complete``, the tests and the benchmark all go through these three, so
what the tests check is what the editor gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from codellama_lsp.completion.context import Window, model_text, window
from codellama_lsp.documents import Cursor, Document
from codellama_lsp.generation import GenerationRequest, TextTokenizer

from codellama_lsp.completion.postprocess import Mode, block_end, choose_mode, finish, indent_of, loop_end, next_code_line
from codellama_lsp.completion.templates import infilling_tokens
from codellama_lsp.settings import Settings, prompt_format
from codellama_lsp.completion.syntax import language_of, parser, trim_to_syntax


@dataclass(frozen=True)
class Plan:
    mode: Mode
    window: Window
    token_ids: list[int]  # the model's prompt
    line_suffix: str  # the rest of the cursor's line
    block_indent: str  # lines indented less than this end a multi-line suggestion
    next_line: str  # the first code line after the cursor's line, which a suggestion must not repeat
    eol: str  # the document's line ending; the model sees and writes "\n"
    prefix: str  # the prompt's prefix and suffix text (LF line endings)
    suffix: str
    language: str


def plan(doc: Document, cursor: Cursor, settings: Settings, tokenizer: TextTokenizer, count, previous: Window | None = None) -> Plan:
    line = doc.line_text(cursor.line)
    head = line[: cursor.index]
    win = window(doc, cursor, settings.prefix_tokens, settings.suffix_tokens, count, previous)
    prefix, suffix = model_text(win.prefix.text), model_text(win.suffix.text)
    return Plan(
        mode=choose_mode(line, cursor.index),
        window=win,
        token_ids=infilling_tokens(tokenizer, prefix, suffix, prompt_format(settings)),
        line_suffix=line[cursor.index:],
        block_indent=indent_of(head) if head.strip() else head,
        next_line=next_code_line(suffix),
        eol=doc.line_ending(cursor.line),
        prefix=prefix,
        suffix=suffix,
        language=language_of(doc.language_id, doc.uri),
    )


def generation_request(p: Plan, settings: Settings, on_text: Callable[[str], None] | None = None) -> GenerationRequest:
    """The engine request for plan ``p``; ``on_text`` sees the raw text after every token."""

    def stream(text: str) -> bool:
        if on_text is not None:
            on_text(text)
        # Stop as soon as the suggestion is complete: the block has ended, or the model loops.
        return (p.mode == "multi" and block_end(text, p.block_indent, p.next_line) is not None) or \
            loop_end(text) is not None

    return GenerationRequest(
        prompt=p.token_ids,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        time_budget_ms=settings.time_budget_ms,
        infilling=True,
        stop_strings=("\n",) if p.mode == "single" else (),
        on_text=stream,
    )


def suggestion(raw: str, p: Plan) -> str:
    text = finish(raw, p.mode, p.line_suffix, p.block_indent, p.next_line)
    grammar = parser(p.language) if p.mode == "multi" and text else None
    if grammar is not None:
        text = trim_to_syntax(text, p.prefix, p.suffix, grammar)
    return text.replace("\n", p.eol) if p.eol != "\n" else text
