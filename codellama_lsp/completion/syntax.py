"""tree-sitter where syntax matters: the installed grammars, and syntax errors in a window of code.

Languages without an installed grammar get None from ``parser``; callers then fall back
to plain line-based rules.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from tree_sitter import Language, Node, Parser

from codellama_lsp.completion.postprocess import leaves_open

# Language id (LSP's, or a file extension) -> (grammar module, its function that returns the language).
GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}
_EXTENSIONS = {"py": "python", "pyi": "python", "js": "javascript", "mjs": "javascript", "cjs": "javascript",
               "jsx": "javascriptreact", "ts": "typescript", "mts": "typescript", "cts": "typescript",
               "tsx": "typescriptreact", "go": "go", "rs": "rust", "java": "java", "c": "c", "h": "c",
               "cc": "cpp", "cpp": "cpp", "cxx": "cpp", "hpp": "cpp", "hh": "cpp", "hxx": "cpp"}


def language_of(language_id: str, uri: str) -> str:
    """The document's language: the client's language id, else guessed from the file extension."""
    if language_id:
        return language_id.lower()
    name = uri.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _EXTENSIONS.get(ext, ext)


@lru_cache(maxsize=None)
def parser(language: str) -> Parser | None:
    grammar = GRAMMARS.get(language)
    if grammar is None:
        return None
    module, function = grammar
    try:
        return Parser(Language(getattr(importlib.import_module(module), function)()))
    except ImportError:
        return None


def errors(p: Parser, text: str) -> int:
    """ERROR and MISSING nodes in ``text``; only subtrees that contain errors are walked."""
    stack: list[Node] = [p.parse(text.encode("utf-8", "surrogatepass")).root_node]
    count = 0
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        stack.extend(c for c in node.children if c.has_error or c.is_missing)
    return count


def trim_to_syntax(text: str, prefix: str, suffix: str, p: Parser) -> str:
    """The longest leading lines of a multi-line suggestion that add no syntax error around the cursor
    and leave no bracket of their own open.

    A suggestion cut off by the token limit often ends mid-statement or mid-block (an ``if (…) {``
    left open); dropping the broken tail keeps the complete statements. The bracket check is
    there because the prompt's window is often cut inside a block, so the parse around the
    cursor has errors already and tree-sitter's recovery can absorb one more open block.
    Where the document parsed before and no leading lines of the suggestion pass, the
    suggestion is dropped: every cut of it breaks the user's code. In a document that already
    had errors (the user is in the middle of writing something), a suggestion no cut helps is
    cut to its first line (its first line with something on it): more than one line is
    offered only where they end complete, and a line that opens a block (``if (x) {``) is
    then the user's to go on from (docs/measurements.md, "Multi-line policy").
    """
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    base = errors(p, prefix + suffix)
    for n in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:n])
        if candidate.strip() and not leaves_open(candidate) and errors(p, prefix + candidate + suffix) <= base:
            return candidate.rstrip()
    if base == 0:
        return ""
    first = next(i for i, line in enumerate(lines) if line.strip() or i == len(lines) - 1)
    return "\n".join(lines[:first + 1]).rstrip()
