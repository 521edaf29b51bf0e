"""One completion, from a document position to the text to show.

``plan`` gathers the context and builds the prompt, ``generation_request`` turns the
plan into an engine request (stop at a newline for single-line, stop at the end of the
block for multi-line), and ``suggestion`` post-processes the engine's text. The server,
``codellama-lsp complete``, the tests and the benchmark all go through these three, so
what the tests check is what the editor gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Sequence

from codellama_lsp.completion.context import Window, model_text, window
from codellama_lsp.documents import Cursor, Document
from codellama_lsp.generation import GenerationRequest, GenerationResult, TextTokenizer

from codellama_lsp.completion.postprocess import (STEPS, Mode, Step, block_end, choose_mode, finish, head_repeat,
                                                  indent_of, line_above, line_below, loop_end, next_code_line,
                                                  repeats_neighbour, suffix_repeat, UNFINISHED_CODE, whole_lines)
from codellama_lsp.completion import imports
from codellama_lsp.completion.healing import heal_text, healed
from codellama_lsp.completion.families import Template
from codellama_lsp.completion.templates import prompt_format
from codellama_lsp.completion.repo_layout import RepoContext, comment_marker
from codellama_lsp.completion.snippets import Scored, Snippet, select
from codellama_lsp.settings import Settings
from codellama_lsp.completion.syntax import language_of, parser, trim_to_syntax


# Lines around the cursor that snippets are ranked against: what the user is writing now.
QUERY_LINES_BEFORE, QUERY_LINES_AFTER = 30, 10


@dataclass(frozen=True)
class Sources:
    """Where other files' snippets come from for one plan (``workspace.Workspace``), and the last choice."""

    repo: str  # the workspace folder's name
    path: str  # the current file, workspace-relative
    candidates: Callable[[tuple[int, int]], list[Snippet]]  # given the local window's first and last line
    previous: Sequence[Scored] | None = None  # the snippets of the place this prompt continues (None: a new place)
    imports: Sequence[str] = ()  # the document's import lines: what it uses from other files, wherever the cursor is
    import_spans: Sequence[tuple[int, int]] = ()  # where its import statements are (first and last line)


@dataclass(frozen=True)
class Plan:
    mode: Mode
    window: Window
    token_ids: list[int]  # the model's prompt
    stop_ids: frozenset[int]  # special tokens that end the middle, as the model family says
    line_suffix: str  # the rest of the cursor's line
    block_indent: str  # lines indented less than this end a multi-line suggestion
    next_line: str  # the first code line after the cursor's line, which a suggestion must not repeat
    eol: str  # the document's line ending; the model sees and writes "\n"
    prefix: str  # the text before and after the cursor (LF line endings)
    suffix: str
    language: str
    head: str = ""  # the cursor line before the cursor
    above: str = ""  # the nearest non-blank lines above and below the cursor's line, as written
    below: str = ""
    snippets: tuple[Scored, ...] = ()  # other files' snippets at the start of the prompt, in order
    header: str = ""  # the file's import statements above the window, in front of the prefix
    heal: str = ""  # the end of the prefix the prompt leaves out, for the model to write first (token healing)


# The file's own imports above the window take at most this share of the context budget, on top
# of the snippets' budget: they are the current file's lines, not other files' snippets, and
# charging them to the snippets cost the definitions of the names they import, and exact
# matches (docs/measurements.md, "Context from other files").
HEADER_SHARE = 0.5


def repo_context(sources: Sources | None, template: Template, language: str, lines: Sequence[str], win: Window,
                 prefix: str, suffix: str, budget: int,
                 count: Callable[[str], int]) -> tuple[RepoContext | None, tuple[Scored, ...]]:
    """The context from outside the local window, for a prompt whose window is ``win`` in a document of
    ``lines``: the file's import statements above the window, and other files' snippets ranked
    against the lines around the cursor, as the prompt writes them, with the snippets' scores
    (for the next request's stickiness and the status)."""
    if sources is None or budget <= 0:
        return None, ()
    head = model_text(imports.header(lines, sources.import_spans, win.prefix_start, int(budget * HEADER_SHARE), count))
    marker = comment_marker(language)
    query = "\n".join(sources.imports) + "\n" + "".join(prefix.splitlines(keepends=True)[-QUERY_LINES_BEFORE:]) + \
        "".join(suffix.splitlines(keepends=True)[:QUERY_LINES_AFTER])
    chosen = tuple(select(sources.candidates((win.prefix_start, win.suffix_end)), query, head + prefix + suffix,
                          budget, template.snippet_cost(count, marker), sources.previous))
    if not chosen and not head:
        return None, ()
    return RepoContext(sources.repo, sources.path, marker, [x.snippet for x in chosen], head), chosen


def plan(doc: Document, cursor: Cursor, settings: Settings, template: Template, tokenizer: TextTokenizer,
         count: Callable[[str], int], previous: Window | None = None, sources: Sources | None = None,
         heal: bool = False) -> Plan:
    """The prompt and post-processing facts for a completion at ``cursor``.

    ``heal``: the backend can keep an answer to a given start (``Backend.heals``) and the
    ``tokenHealing`` setting is on, so the prompt leaves out the cursor's partial token.
    """
    line = doc.line_text(cursor.line)
    head = line[: cursor.index]
    win = window(doc, cursor, settings.prefix_tokens, settings.suffix_tokens, count, previous)
    prefix, suffix = model_text(win.prefix.text), model_text(win.suffix.text)
    language = language_of(doc.language_id, doc.uri)
    ctx, chosen = repo_context(sources, template, language, doc.lines, win, prefix, suffix, settings.context_tokens,
                               count)
    removed = heal_text(model_text(head), tokenizer.encode, tokenizer.decode_infilling) if heal else ""
    if not prefix.endswith(removed):  # the window cut the cursor's line shorter than the healed text
        removed = ""
    return Plan(
        mode=choose_mode(line, cursor.index),
        window=win,
        token_ids=template.prompt(tokenizer, prefix[:len(prefix) - len(removed)], suffix, prompt_format(settings.format), ctx),
        stop_ids=template.stop_ids,
        line_suffix=line[cursor.index:],
        block_indent=indent_of(head) if head.strip() else head,
        next_line=next_code_line(suffix),
        eol=doc.line_ending(cursor.line),
        prefix=prefix,
        suffix=suffix,
        language=language,
        head=model_text(head),
        above=line_above(prefix),
        below=line_below(suffix),
        snippets=chosen,
        header=ctx.header if ctx is not None else "",
        heal=removed,
    )


def generation_request(p: Plan, settings: Settings, on_text: Callable[[str], None] | None = None,
                       typing: bool = True, gated: bool = False) -> GenerationRequest:
    """The engine request for plan ``p``; ``on_text`` sees the raw text after every token.

    ``typing``: asked where the user types (not a prefetch or a warm-up), whose KV sequence the
    engine's prompt cache keeps longest. ``gated``: the suggestion is hidden below
    ``minConfidence``, so the engine stops at the first token that decides it; the benchmarks,
    which score what the model writes, leave it off.
    """

    def stream(raw: str) -> bool:
        text = healed(raw, p.heal) or ""  # what follows the cursor: the healed text is the user's own
        if on_text is not None:
            on_text(text)
        # Stop as soon as the suggestion is complete: the block has ended, the model copies
        # the code after the cursor, or it loops.
        if p.mode == "multi" and (block_end(text, p.block_indent, p.next_line) is not None or
                                  suffix_repeat(text, p.suffix) is not None):
            return True
        return loop_end(text) is not None

    return GenerationRequest(
        prompt=p.token_ids,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        time_budget_ms=settings.time_budget_ms,
        infilling=True,
        stop_strings=("\n",) if p.mode == "single" else (),
        stop_ids=p.stop_ids,
        on_text=stream,
        typing=typing,
        heal=p.heal,
        min_confidence=settings.min_confidence if gated else 0.0,
    )


def shown(result: GenerationResult, p: Plan) -> str:
    """What the editor shows for ``result``, generated for plan ``p``."""
    return suggestion(result.text, p, unfinished=result.stop_reason in UNFINISHED_CODE)


def settled(result: GenerationResult, text: str) -> bool:
    """Whether ``text``, shown for ``result``, is the answer at its place until the document changes.

    Not when the time budget ended generation before anything whole was written: asked again,
    the model may finish a line (a remote server counts the budget from the request, so a cold
    prompt there can end with nothing; a local engine drafts from its first try's output).
    """
    return bool(text) or result.stop_reason not in UNFINISHED_CODE


def suggestion(raw: str, p: Plan, steps: Collection[Step] = STEPS, unfinished: bool = False) -> str:
    """The text to show for the model's text ``raw``; ``steps`` as ``finish`` (for the ablation).

    ``unfinished``: generation stopped at its time budget (``UNFINISHED_CODE``), so
    ``raw``'s last line is not what the model would have written; only whole lines are shown.
    """
    if p.heal:
        raw = healed(raw, p.heal) or ""  # an answer stopped before it wrote the healed text has nothing to show
    raw = raw[head_repeat(p.head, raw):]  # never write again what is left of the cursor
    if unfinished:
        raw = whole_lines(raw)
    if "indent" in steps and p.head and not p.head.strip():
        # The cursor stands at an indentation, which the prompt ends with. Byte-level BPE
        # (Qwen, DeepSeek, StarCoder) never ends a training text's indentation in its own token
        # ("        return" is seven spaces and " return"), and small models answer such a prompt
        # by indenting again; that whitespace would double the line's indentation.
        raw = raw.lstrip(" \t")
    text = finish(raw, p.mode, p.line_suffix, p.block_indent, p.next_line, steps, p.suffix)
    if "repetition" in steps and p.mode == "single" and repeats_neighbour(p.head + text + p.line_suffix, p.above,
                                                                          p.below):
        text = ""  # a copy of the line above or below: the model repeating the context, not completing it
    grammar = parser(p.language) if p.mode == "multi" and text else None
    if grammar is not None:
        text = trim_to_syntax(text, p.prefix, p.suffix, grammar)
    return text.replace("\n", p.eol) if p.eol != "\n" else text
