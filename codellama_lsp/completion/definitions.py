"""The function or class at a line: found with tree-sitter where a grammar is installed, else by a line pattern.

Definitions are found in a window of lines around the cursor, never the whole document.
Hover, the "Generate docstring" action and the Instruct actions use them; a definition is
identified by its header's text (``header_text``), so it can be found again (``relocate``)
after the document changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from codellama_lsp.completion.postprocess import indent_of
from codellama_lsp.completion.syntax import language_of, parser
from codellama_lsp.documents import Document, split_lines

Style = Literal["python", "jsdoc"]

PYTHON_DEFS = {"function_definition": "function", "class_definition": "class"}
JS_DEFS = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "method_definition": "method",
    "class_declaration": "class",
}
# How far around the cursor the parser looks: a definition's header is near its keyword.
LINES_ABOVE = 60
LINES_BELOW = 200
_FALLBACK = re.compile(
    r"\b(?:function\*?|class|fn|func|def|struct|interface|trait|impl)\s+(\w+)"  # keyword definitions
    r"|^\s*(?:[\w<>\[\],*&:]+\s+)+\**(\w+)\s*\([^;]*$"  # C-like: type name(args) with no ';'
)


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str
    style: Style
    first_line: int  # where a block comment goes (above any "export")
    header_end: int  # last line of the signature
    body_line: int  # first line of the body
    indent: str  # the definition's indentation
    body_indent: str
    has_docstring: bool
    last_line: int  # the definition's last line (its header's, where only a line pattern found it)


def find_definition(doc: Document, line: int) -> Definition | None:
    """The function or class whose header contains ``line``."""
    lang = language_of(doc.language_id, doc.uri)
    if lang == "python":
        return _tree_sitter_definition(doc, line, "python", PYTHON_DEFS)
    if lang in ("javascript", "javascriptreact"):
        found = _tree_sitter_definition(doc, line, "javascript", JS_DEFS)
        return found if found is not None else _fallback_definition(doc, line)
    return _fallback_definition(doc, line)


def enclosing_definition(doc: Document, line: int) -> Definition | None:
    """The innermost definition whose lines (header or body) hold ``line``: what an action at a cursor is about.

    Only lines a definition's keyword or signature pattern matches are tried, so a cursor
    deep in a body costs a few parses, not one per line above it.
    """
    for i in range(line, max(-1, line - LINES_ABOVE), -1):
        if i != line and not _FALLBACK.search(doc.lines[i]):
            continue
        d = find_definition(doc, i)
        if d is not None and d.first_line <= line <= d.last_line:
            return d
    return None


def _window_start(doc: Document, line: int) -> int:
    """A top-level line at or above ``line - LINES_ABOVE``, so the parsed window starts cleanly."""
    lo = max(0, line - LINES_ABOVE)
    for i in range(lo, max(-1, lo - 10 * LINES_ABOVE), -1):
        text = doc.lines[i]
        if text.strip() and not text[0].isspace():
            return i
    return lo


def _tree_sitter_definition(doc: Document, line: int, grammar: str, kinds: dict[str, str]) -> Definition | None:
    p = parser(grammar)
    if p is None:
        return _fallback_definition(doc, line)
    lo = _window_start(doc, line)
    hi = min(len(doc.lines), line + LINES_BELOW)
    source = "".join(doc.lines[lo:hi]).encode("utf-8", "surrogatepass")
    node = p.parse(source).root_node
    row = line - lo
    best = None
    while True:  # descend to the innermost definition whose header spans the row
        child = next((c for c in node.named_children if c.start_point.row <= row <= c.end_point.row), None)
        if child is None:
            break
        if child.type in kinds:
            body = child.child_by_field_name("body")
            if body is not None and child.start_point.row <= row <= _header_end(child, body):
                best = child
        node = child
    if best is None:
        return None
    body = best.child_by_field_name("body")
    name = best.child_by_field_name("name")
    header_end = _header_end(best, body)
    first = best.parent if best.parent is not None and best.parent.type == "export_statement" else best
    first_line = first.start_point.row + lo
    indent = indent_of(doc.lines[first_line])
    if grammar == "python":
        if body.start_point.row <= header_end:
            return None  # "def f(): return 1": no line for a docstring
        statements = body.named_children
        has_doc = bool(statements) and statements[0].type == "expression_statement" and \
            statements[0].named_child_count == 1 and statements[0].named_children[0].type == "string"
        body_indent = indent_of(doc.lines[body.start_point.row + lo])
        style: Style = "python"
    else:
        prev = first.prev_sibling
        has_doc = prev is not None and prev.type == "comment" and prev.text.startswith(b"/**")
        body_indent = indent
        style = "jsdoc"
    return Definition(
        name=name.text.decode("utf-8", "replace") if name is not None else "",
        kind=kinds[best.type], style=style, first_line=first_line, header_end=header_end + lo,
        body_line=header_end + lo + 1, indent=indent,
        body_indent=body_indent or indent + "    ", has_docstring=has_doc, last_line=best.end_point.row + lo,
    )


def _header_end(node, body) -> int:
    """The row where the signature ends: Python's body starts after the ':'; JS's at '{'."""
    if body.type == "block":
        colon = body.prev_sibling
        return colon.end_point.row if colon is not None else body.start_point.row
    return body.start_point.row


def _fallback_definition(doc: Document, line: int) -> Definition | None:
    text = doc.line_text(line)
    match = _FALLBACK.search(text)
    if match is None:
        return None
    above = doc.line_text(line - 1).strip() if line > 0 else ""
    indent = indent_of(text)
    return Definition(
        name=match.group(1) or match.group(2), kind="definition", style="jsdoc", first_line=line,
        header_end=line, body_line=line + 1, indent=indent, body_indent=indent,
        has_docstring=above.endswith("*/") or above.startswith("//"), last_line=line,
    )


def header_text(doc: Document, d: Definition) -> str:
    """The definition's header lines, verbatim: what identifies it when its line number moves."""
    return "".join(doc.lines[d.first_line: d.body_line])


def relocate(doc: Document, header: str) -> Definition | None:
    """The one definition in ``doc`` whose header is ``header``, or None when there is none or more than one.

    Used when the document changed after a position was taken: a line number from an
    older version may now point anywhere, but the same signature text is the same
    definition unless it occurs twice.
    """
    first = split_lines(header)[0] if header else ""
    found: list[Definition] = []
    for i, line in enumerate(doc.lines):
        if first and line == first:
            d = find_definition(doc, i)
            if d is not None and header_text(doc, d) == header and d not in found:
                found.append(d)
    return found[0] if len(found) == 1 else None
