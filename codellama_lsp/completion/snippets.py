"""Snippets from other files: chunks of lines, ranked against the text around the cursor, fit to a budget.

The model sees only its prompt, so a name defined in another module is a guess unless
that module's code is in the prompt. The sources (other open documents, recently edited
ranges, the files the current one imports) give candidate chunks; this module decides
which of them go in, and in what order, as pure functions:

* ``chunks`` cuts a file into pieces of whole lines at top-level boundaries (a line that
  starts unindented after a blank line), so a snippet is usually one definition or a few
  small ones, not half of two.
* ``outline`` keeps only a file's definition lines (``def``/``class``/``function`` lines and
  top-level assignments, as written, with their indentation): a stub of the module, as
  a ``.pyi`` file or a "repo map" gives it. A cross-file name is usually one the other
  module defines, and its outline shows all of them with their signatures in a fraction
  of the file's tokens.
* ``similarity`` is the Jaccard similarity of identifier sets, the baseline llama.vim and
  Tabby use: cheap enough for every keystroke, and it finds the chunk that shares the
  names around the cursor. A chunk that defines a name the query uses (a ``def``, ``class``,
  ``function`` or top-level assignment of it) scores more: that is the declaration the
  model needs (Tabby's "declarations" source), and the query includes the file's import
  lines, so the definitions of imported names rank high wherever the cursor is; so do
  the snippets of a module the query names (``from pkg import io`` ... ``io.``).
  Shared names alone are no reason to go in: a snippet of another module that neither
  defines a name of the query nor is named by it (nor was edited recently) scores 0. Such
  look-alike code is where the model copies a wrong name from (``ActionResult:`` for
  ``S3ControlBackend:``); leaving it out gave more exact matches (docs/measurements.md,
  "Context from other files"), and it leaves the budget to definitions.
* ``select`` takes the best-scoring snippets that fit ``budget`` tokens and drops those the
  local window already shows, once per place: a place keeps its choice while all of it is
  still there. The snippets go first in the prompt, so a changed choice recomputes the whole
  prompt (seconds on a CPU); a choice that followed every better score (an edit made
  elsewhere, a name typed) would do that while the user types, and on every return to a
  place, whose kept KV sequence starts with the old choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable, Literal, Sequence

Source = Literal["open", "edited", "imported"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A line that defines a name: Python def/class, JS/TS function/class/const/let/var, or a top-level assignment.
_DEFINES = re.compile(r"^(?:\s*(?:async\s+)?(?:def|class|function\*?)\s+([A-Za-z_$][\w$]*)"
                      r"|(?:export\s+(?:default\s+)?)?(?:const|let|var|class|function\*?)\s+([A-Za-z_$][\w$]*)"
                      r"|([A-Za-z_][\w]*)\s*(?::[^=]*)?=(?!=))", re.MULTILINE)
# Words every chunk of a language has: they say nothing about which chunk is relevant.
KEYWORDS = frozenset((
    "and as assert async await break class continue def del elif else except False finally for from global if "
    "import in is lambda None nonlocal not or pass raise return True try while with yield self cls "
    "const let var function new this typeof instanceof export default extends static void null undefined "
    "true false case switch do of interface type public private protected").split())

CHUNK_MIN_LINES = 8  # a boundary before this many lines is ignored: tiny pieces lose their context
CHUNK_MAX_LINES = 40  # a longer run is split here even without a boundary
# An outline longer than this is split into pieces of it: 24 definition lines are 200-300
# tokens, so a piece fits beside others in the CPU's 512-token budget.
OUTLINE_MAX_LINES = 24
OUTLINE_LINE_CHARS = 120  # a signature's first 120 characters: its name and first parameters
_DEFINITION_LINE = re.compile(r"^\s*(?:@|(?:export\s+)?(?:default\s+)?(?:async\s+)?(?:def|class|function)\b)"
                              r"|^(?:export\s+)?(?:const|let|var)\s|^[A-Za-z_]\w*\s*(?::[^=]*)?=(?!=)")
EDIT_RADIUS = 8  # lines around a recent edit that make its snippet
EDIT_BONUS = 0.1  # a recently edited range is where the user's attention was: ranked a little higher
DEFINITION_BONUS = 0.3  # per name of the query the snippet defines, up to MAX_DEFINITIONS of them
MAX_DEFINITIONS = 3
MODULE_BONUS = 0.3  # the snippet's module is named in the query (``import io`` ... ``io.``): it is used here
DUPLICATE = 0.9  # a snippet this similar to the local window adds nothing the model does not see
# The most characters a snippet may have: 40 lines of 200 characters. Longer ones are data or
# minified code (a 5 MB line), which no budget fits, and whose names and tokens would cost a
# request more than everything else in it; they are never built (``around``) or scored (``select``).
MAX_SNIPPET_CHARS = 8000


@dataclass(frozen=True)
class Snippet:
    """Lines ``start``..``end`` (0-based, end exclusive) of the file at ``path`` (workspace-relative)."""

    path: str
    start: int
    end: int
    text: str
    source: Source
    outline: bool = False  # the file's definition lines only (``outline``), not a range of it

    # Cached: the sources keep their snippets while the files are unchanged, and every keystroke scores them.
    @cached_property
    def names(self) -> frozenset[str]:
        return identifiers(self.text)

    @cached_property
    def defines(self) -> frozenset[str]:
        """The names this snippet defines (see ``_DEFINES``)."""
        return definitions(self.text)

    @property
    def key(self) -> tuple[str, int, str]:
        """What makes two snippets the same for stickiness: the file, the place and the exact text."""
        return self.path, self.start, self.text


@dataclass(frozen=True)
class Scored:
    snippet: Snippet
    score: float
    tokens: int  # as rendered in the prompt (its path header included)


def identifiers(text: str) -> frozenset[str]:
    """The identifiers of ``text``, without the languages' keywords."""
    return frozenset(_IDENT.findall(text)) - KEYWORDS


def definitions(text: str) -> frozenset[str]:
    """Names ``text`` defines: functions, classes, variables at the start of a line."""
    return frozenset(next(g for g in m.groups() if g) for m in _DEFINES.finditer(text)) - KEYWORDS


def module_name(path: str) -> str:
    """The name a file is imported by: its stem, or its folder's name for a package's ``__init__``/``index``."""
    parts = path.rsplit("/", 2)
    stem = parts[-1].split(".", 1)[0]
    return parts[-2] if stem in ("__init__", "index") and len(parts) > 1 else stem


def score(s: Snippet, query: frozenset[str]) -> float:
    """How much ``s`` helps a completion whose surroundings use the names ``query``."""
    defined = min(len(s.defines & query), MAX_DEFINITIONS)
    named, edited = module_name(s.path) in query, s.source == "edited"
    if not (defined or named or edited):
        return 0.0  # shared names alone: code that looks like this code, whose names the model copies
    return (similarity(s.names, query) + DEFINITION_BONUS * defined
            + (MODULE_BONUS if named else 0.0) + (EDIT_BONUS if edited else 0.0))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two identifier sets (0 when either is empty)."""
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def chunks(path: str, lines: Sequence[str], source: Source = "open") -> list[Snippet]:
    """``lines`` (with or without their terminators) as snippets of whole lines, cut at top-level boundaries."""
    out: list[Snippet] = []
    start = 0

    def close(end: int) -> None:
        text = _joined(lines[start:end])
        if text.strip():
            out.append(Snippet(path, start, end, text, source))

    for i in range(1, len(lines)):
        line = lines[i]
        boundary = bool(line.strip()) and not line[0].isspace() and not lines[i - 1].strip()
        if (boundary and i - start >= CHUNK_MIN_LINES) or i - start >= CHUNK_MAX_LINES:
            close(i)
            start = i
    close(len(lines))
    return out


def outline(path: str, lines: Sequence[str], source: Source = "open") -> list[Snippet]:
    """``lines``' definition lines (decorators and signatures as written, top-level assignments), in
    pieces of at most ``OUTLINE_MAX_LINES``."""
    picked = [(i, line.rstrip()) for i, line in enumerate(lines) if _DEFINITION_LINE.match(line)]
    out = []
    for at in range(0, len(picked), OUTLINE_MAX_LINES):
        part = picked[at:at + OUTLINE_MAX_LINES]
        text = "".join(line[:OUTLINE_LINE_CHARS] + "\n" for _, line in part)
        out.append(Snippet(path, part[0][0], part[-1][0] + 1, text, source, outline=True))
    return out


def around(path: str, lines: Sequence[str], line: int, radius: int = EDIT_RADIUS) -> Snippet | None:
    """The ``radius`` lines either side of ``line``: a recently edited range's snippet (None when they are blank
    or longer than ``MAX_SNIPPET_CHARS``)."""
    start, end = max(0, line - radius), min(len(lines), line + radius + 1)
    if start >= end or sum(len(x) for x in lines[start:end]) > MAX_SNIPPET_CHARS:
        return None
    text = _joined(lines[start:end])
    return Snippet(path, start, end, text, "edited") if text.strip() else None


def _joined(lines: Sequence[str]) -> str:
    """Lines with or without their terminators as one text, each ending in a newline."""
    return "".join(x if x.endswith("\n") else x + "\n" for x in lines)


def _overlaps(a: Snippet, b: Snippet) -> bool:
    """Two ranges of one file that share lines (an outline shares none: it is another view of the file)."""
    return a.path == b.path and not (a.outline or b.outline) and a.start < b.end and b.start < a.end


def select(candidates: Iterable[Snippet], query: str, local: str, budget: int, cost: Callable[[Snippet], int],
           previous: Sequence[Scored] | None = None) -> list[Scored]:
    """The snippets for one prompt, in prompt order: within ``budget`` tokens, none the local window repeats.

    ``query`` is the text the snippets are ranked against (``score``); ``local`` is
    the whole local window (prefix and suffix), whose near-copies are dropped; ``cost``
    counts a snippet's tokens as rendered (never called for one longer than ``MAX_SNIPPET_CHARS``,
    which is no candidate). The best-scoring snippets are taken greedily;
    of two overlapping ranges of one file only the better one. ``previous`` (the choice of
    the place this prompt continues, empty or not; None: a new place) is kept as it was while
    all its snippets are still candidates and fit. Otherwise the fresh choice is ordered with
    the snippets it shares with ``previous`` first, in their old order (the KV cache still
    holds them), then the others, most relevant last, next to the code the model completes.
    """
    if budget <= 0:
        return []
    want, here = identifiers(query), identifiers(local)
    scored: list[Scored] = []
    for s in candidates:
        if len(s.text) > MAX_SNIPPET_CHARS:
            continue
        value = score(s, want)  # first: most candidates score 0, and need no search of the window
        if value > 0 and s.text.strip() not in local and similarity(s.names, here) < DUPLICATE:
            scored.append(Scored(s, value, 0))
    scored.sort(key=lambda x: (-x.score, x.snippet.path, x.snippet.start))
    fresh: list[Scored] = []
    used = 0
    for x in scored:
        if any(_overlaps(x.snippet, y.snippet) for y in fresh):
            continue
        n = cost(x.snippet)
        if used + n <= budget:
            fresh.append(Scored(x.snippet, x.score, n))
            used += n
    now = {x.snippet.key: x.score for x in scored}
    if previous is None:
        previous = ()
    elif all(p.snippet.key in now for p in previous) and sum(p.tokens for p in previous) <= budget:
        return [Scored(p.snippet, now[p.snippet.key], p.tokens) for p in previous]
    order = {p.snippet.key: i for i, p in enumerate(previous)}
    old = sorted((x for x in fresh if x.snippet.key in order), key=lambda x: order[x.snippet.key])
    new = sorted((x for x in fresh if x.snippet.key not in order), key=lambda x: x.score)
    return old + new
