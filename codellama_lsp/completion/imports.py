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
from typing import Callable, Iterable, Sequence

_PY_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+\(?\s*([^#]*)")
_PY_IMPORT = re.compile(r"^\s*import\s+([^#]+)")
_JS_SPECIFIER = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\(\s*)['"](\.{1,2}/[^'"]+)['"]""")
PYTHON = frozenset({"python"})
JAVASCRIPT = frozenset({"javascript", "javascriptreact", "typescript", "typescriptreact"})
JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs")
PYTHON_BASES = ("", "src")  # a package at the root, or in the src layout


def import_spans(lines: Sequence[str], language: str) -> tuple[tuple[int, int], ...]:
    """(first, last) line of each statement that can import something: Python's ``import``/``from``
    (a parenthesised one's lines together), JavaScript's lines with ``import`` or ``require(``."""
    out: list[tuple[int, int]] = []
    if language in PYTHON:
        open_paren = False
        for i, x in enumerate(lines):
            if open_paren:
                out[-1] = (out[-1][0], i)
                open_paren = ")" not in x
            elif x.lstrip().startswith(("import ", "from ")):
                out.append((i, i))
                open_paren = "(" in x and ")" not in x
    elif language in JAVASCRIPT:
        out = [(i, i) for i, x in enumerate(lines) if "import" in x or "require(" in x]
    return tuple(out)


def import_lines(lines: Sequence[str], language: str, spans: Sequence[tuple[int, int]] | None = None) -> tuple[str, ...]:
    """The lines of a document that can import from the workspace, as the cache key of its imports; a
    parenthesised Python import's lines are joined into one. ``spans``: ``import_spans`` already taken."""
    spans = import_spans(lines, language) if spans is None else spans
    joined = tuple(" ".join(x.strip() for x in lines[a:b + 1]) for a, b in spans)
    if language in JAVASCRIPT:  # only a relative specifier names a workspace file
        return tuple(x for x in joined if "'." in x or '".' in x)
    return joined


def header(lines: Sequence[str], spans: Sequence[tuple[int, int]], before: int, budget: int,
           count: Callable[[str], int]) -> str:
    """The file's top-level import statements that end above line ``before``, as written, in file order,
    within ``budget`` tokens.

    A prefix window cut far below a file's imports no longer shows which names the file took
    from its other modules, and the model, seeing a name's first use, guesses a similar one
    (``LoadBalancer`` for the imported ``ELBBackend``). Put back in front of the window, the
    import statements say it, for a few dozen tokens.
    """
    out: list[str] = []
    used = 0
    for a, b in spans:
        if b >= before:
            break
        first = lines[a]
        if first[:1] in (" ", "\t") or not (first.startswith(("import", "from ")) or "require(" in first):
            continue  # an import inside a function, or a line that only mentions one: not the file's own
        text = "".join(lines[a:b + 1])  # lines above the window: each has its terminator
        n = count(text)
        if used + n > budget:
            break
        out.append(text)
        used += n
    return "".join(out)


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
