"""tree-sitter where syntax matters: the installed grammars, and syntax errors in a window of code.

Languages without an installed grammar get None from ``parser``; callers then fall back
to plain line-based rules.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from tree_sitter import Language, Node, Parser

# Language id (LSP's, or a file extension) -> grammar module.
GRAMMARS = {"python": "tree_sitter_python", "javascript": "tree_sitter_javascript", "javascriptreact": "tree_sitter_javascript"}
_EXTENSIONS = {"py": "python", "pyi": "python", "js": "javascript", "mjs": "javascript", "cjs": "javascript",
               "jsx": "javascriptreact"}


def language_of(language_id: str, uri: str) -> str:
    """The document's language: the client's language id, else guessed from the file extension."""
    if language_id:
        return language_id.lower()
    name = uri.rsplit("/", 1)[-1]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _EXTENSIONS.get(ext, ext)


@lru_cache(maxsize=None)
def parser(language: str) -> Parser | None:
    module = GRAMMARS.get(language)
    if module is None:
        return None
    try:
        return Parser(Language(importlib.import_module(module).language()))
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
    """The longest leading lines of a multi-line suggestion that add no syntax error around the cursor.

    A suggestion cut off by the token limit often ends mid-statement; dropping the broken
    tail keeps what is complete. When no cut helps, the suggestion is left as it was.
    """
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    base = errors(p, prefix + suffix)
    for n in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:n])
        if errors(p, prefix + candidate + suffix) <= base:
            return candidate.rstrip()
    return text
