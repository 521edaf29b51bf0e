"""The workspace files a document imports: Python imports from the workspace root, relative ES imports.

Only import lines are read (``import_lines``), so a keystroke elsewhere in the file leaves
their key unchanged and nothing is resolved again. Resolution returns workspace-relative
candidate paths in the order the languages' own lookup tries them; the caller keeps the
first that exists. Modules outside the workspace (the standard library, installed
packages) are not followed: they are not the user's code, and the model knows them.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Iterable

_PY_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+\(?\s*([^#]*)")
_PY_IMPORT = re.compile(r"^\s*import\s+([^#]+)")
_JS_SPECIFIER = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\(\s*)['"](\.{1,2}/[^'"]+)['"]""")
PYTHON = frozenset({"python"})
JAVASCRIPT = frozenset({"javascript", "javascriptreact", "typescript", "typescriptreact"})
JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs")
PYTHON_BASES = ("", "src")  # a package at the root, or in the src layout


def import_lines(lines: Iterable[str], language: str) -> tuple[str, ...]:
    """The lines of a document that can import something, as the cache key of its imports; a
    parenthesised Python import's lines are joined into one."""
    if language in PYTHON:
        out: list[str] = []
        open_paren = False
        for x in lines:
            if open_paren:
                out[-1] += " " + x.strip()
                open_paren = ")" not in x
            elif x.lstrip().startswith(("import ", "from ")):
                out.append(x.strip())
                open_paren = "(" in x and ")" not in x
        return tuple(out)
    if language in JAVASCRIPT:
        return tuple(x.strip() for x in lines if ("import" in x or "require(" in x) and ("'." in x or '".' in x))
    return ()


def _names(text: str) -> list[str]:
    return [n.split(" as ")[0].strip() for n in text.replace(")", "").split(",") if n.strip()]


def python_candidates(path: PurePosixPath, lines: Iterable[str]) -> list[list[PurePosixPath]]:
    """For each module the import ``lines`` of the file at ``path`` name, the files that may be it."""
    out: list[list[PurePosixPath]] = []
    for line in lines:
        m = _PY_FROM.match(line)
        if m is not None:
            dots, module, names = m[1], m[2], _names(m[3])
            if dots:
                base = path.parent
                for _ in range(len(dots) - 1):
                    base = base.parent
                bases = [base]
            else:
                bases = [PurePosixPath(b) for b in PYTHON_BASES]
            for b in bases:
                where = b.joinpath(*module.split(".")) if module else b
                if module:
                    out.append([where.with_name(where.name + ".py"), where / "__init__.py"])
                out += [[where / f"{n}.py", where / n / "__init__.py"] for n in names if n.isidentifier()]
            continue
        m = _PY_IMPORT.match(line)
        if m is not None:
            for module in _names(m[1]):
                if all(p.isidentifier() for p in module.split(".")):
                    for b in PYTHON_BASES:
                        where = PurePosixPath(b).joinpath(*module.split("."))
                        out.append([where.with_name(where.name + ".py"), where / "__init__.py"])
    return out


def javascript_candidates(path: PurePosixPath, lines: Iterable[str]) -> list[list[PurePosixPath]]:
    """For each relative specifier (``./x``, ``../y``) in ``lines``, the files it may resolve to."""
    out: list[list[PurePosixPath]] = []
    for line in lines:
        for spec in _JS_SPECIFIER.findall(line):
            target = _normalise(path.parent / spec)
            if target is None:
                continue
            tries = [target] if target.suffix in JS_EXTENSIONS else []
            tries += [target.with_name(target.name + ext) for ext in JS_EXTENSIONS]
            tries += [target / f"index{ext}" for ext in JS_EXTENSIONS]
            out.append(tries)
    return out


def _normalise(p: PurePosixPath) -> PurePosixPath | None:
    """``p`` with ``.`` and ``..`` resolved; None when it climbs out of the workspace."""
    parts: list[str] = []
    for part in p.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts) if parts else None


def candidates(path: PurePosixPath, lines: Iterable[str], language: str) -> list[list[PurePosixPath]]:
    """The files each import in ``lines`` may be, for a file at workspace-relative ``path``."""
    if language in PYTHON:
        return python_candidates(path, lines)
    if language in JAVASCRIPT:
        return javascript_candidates(path, lines)
    return []
