"""The prefix and suffix around the cursor, cut at line boundaries within token budgets.

Only lines near the cursor are tokenized: lines are taken outwards from the cursor
until the budget is spent, and a character cap stops the walk before any tokenization
when lines are huge. Per-line token counts are cached, so a keystroke re-tokenizes
just the line being edited.

Window edges are sticky. Dropping one line at the far edge of the prefix changes the
start of the prompt and throws away the engine's whole KV cache, so the previous
request's edge is kept while the window still fits its budget and is at least half
full; a fresh cut fills only three quarters of the budget, leaving room to type into.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from codellama_lsp.documents import Cursor, Document

# Python strings hold astral characters as single code points, so any surrogate is a lone one.
_SURROGATE = re.compile("[\ud800-\udfff]")

# No tokenizer packs more than this many characters into one token on average, so
# walking this many characters per budget token always reaches the budget.
MAX_CHARS_PER_TOKEN = 16
FRESH_FILL = 0.75
# A fresh prefix's first line is a multiple of this (``cut``); the window then holds a little less
# than FRESH_FILL of its budget, and places this far apart can share their prompt's start.
ALIGN_LINES = 16
MIN_STICKY_FILL = 0.5


TOKEN_CACHE_BYTES = 8 * 2**20
ENTRY_OVERHEAD = 400  # bytes an entry costs besides its text: the dict slot, the count, its owners' set


class TokenCounter:
    """Token counts of lines, cached: most lines do not change between keystrokes.

    Bounded in bytes as well as entries: a key can be the text before the cursor on its
    line, up to ``MAX_CHARS_PER_TOKEN`` x the prefix budget characters (16k by default), so
    8,192 entries alone allowed ~130 MB, and typing at the end of a long line adds a new
    one per keystroke. Counts taken through ``for_document`` remember the document, and
    ``forget`` drops the entries that only a closed document used.
    """

    def __init__(self, encode: Callable[[str], list[int]], capacity: int = 8192,
                 max_bytes: int = TOKEN_CACHE_BYTES) -> None:
        self._encode = encode
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0  # what the cached entries cost, estimated
        self._owners: dict[str, set[str]] = {}  # text -> documents that counted it
        self._texts: dict[str, set[str]] = {}  # document -> texts it counted

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, text: str) -> int:
        return self.count(text)

    def count(self, text: str, owner: str | None = None) -> int:
        n = self._cache.get(text)
        if n is not None:
            self._cache.move_to_end(text)
        else:
            n = len(self._encode(sanitize(text)))
            size = _cost(text)
            if size > self.max_bytes // 8:  # one entry may not push out most of the others
                return n
            self._cache[text] = n
            self.bytes += size
            while len(self._cache) > self._capacity or self.bytes > self.max_bytes:
                self._remove(next(iter(self._cache)))
        if owner is not None:
            self._owners.setdefault(text, set()).add(owner)
            self._texts.setdefault(owner, set()).add(text)
        return n

    def for_document(self, uri: str) -> Callable[[str], int]:
        """A counter whose entries belong to document ``uri`` (see ``forget``)."""
        return lambda text: self.count(text, uri)

    def forget(self, uri: str) -> None:
        """A closed document: drop the entries no other open document counted."""
        for text in self._texts.pop(uri, ()):
            owners = self._owners.get(text)
            if owners is not None:
                owners.discard(uri)
                if not owners:
                    self._remove(text)

    def _remove(self, text: str) -> None:
        if self._cache.pop(text, None) is not None:
            self.bytes -= _cost(text)
        for uri in self._owners.pop(text, ()):
            texts = self._texts.get(uri)
            if texts is not None:
                texts.discard(text)


def _cost(text: str) -> int:
    return sys.getsizeof(text) + ENTRY_OVERHEAD


def sanitize(text: str) -> str:
    """Lone surrogates (binary content sent as JSON) become U+FFFD so the tokenizer can encode them."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def model_text(text: str) -> str:
    """Text as the model sees it: LF line endings (as in its training data), no lone surrogates."""
    return sanitize(text.replace("\r\n", "\n").replace("\r", "\n"))


@dataclass(frozen=True)
class Side:
    """One side of the cursor: its text, its token count and how many whole lines it spans."""

    text: str
    tokens: int
    lines: int


def cut(pieces: Iterable[str], budget: int, count: Callable[[str], int], *, before: bool,
        keep_lines: int | None = None, cursor_line: int | None = None) -> Side:
    """Take pieces nearest-first: the cursor line's part, then whole lines, within ``budget`` tokens.

    ``keep_lines`` (how many whole lines the previous window had on this side) is honoured
    when they still fit and fill at least half the budget; otherwise a fresh cut fills up to
    three quarters of it, or takes everything when the whole side fits. With ``cursor_line``, a fresh prefix starts on a multiple of ``ALIGN_LINES``: the start no longer
    moves with what is typed on the cursor's line, so a return to a place, or a move of a few
    lines, gets the same first line and the engine's cached prompt serves it again.
    """
    it: Iterator[str] = iter(pieces)
    head = next(it, "")
    max_chars = budget * MAX_CHARS_PER_TOKEN
    if len(head) > max_chars:  # one enormous line: cut mid-line, there is no line boundary to use
        head = head[-max_chars:] if before else head[:max_chars]
    used = count(head)
    while used > budget and head:
        keep_chars = len(head) * budget // (used + 1)
        head = head[len(head) - keep_chars:] if before else head[:keep_chars]
        used = count(head)
    taken = [head]
    totals = [used]  # token totals with 0, 1, 2, ... whole lines
    chars = len(head)
    exhausted = True
    for line in it:
        chars += len(line)
        n = count(line) if chars <= max_chars else budget + 1
        if totals[-1] + n > budget:
            exhausted = False
            break
        taken.append(line)
        totals.append(totals[-1] + n)
    if exhausted:
        keep = len(taken) - 1
    elif keep_lines is not None and 0 <= keep_lines < len(totals) and totals[keep_lines] >= budget * MIN_STICKY_FILL:
        keep = keep_lines
    else:
        keep = max(k for k in range(len(totals)) if k == 0 or totals[k] <= budget * FRESH_FILL)
        if cursor_line is not None and keep > 0:
            keep = aligned(keep, cursor_line, totals, budget)
    taken = taken[: keep + 1]
    return Side("".join(reversed(taken) if before else taken), totals[keep], keep)


def aligned(keep: int, cursor_line: int, totals: list[int], budget: int) -> int:
    """``keep`` lines moved so that the prefix starts on a multiple of ``ALIGN_LINES``, if it then
    still fits the budget (one more grid step of lines) or fills at least half of it (one less)."""
    start = cursor_line - keep
    for edge in (start // ALIGN_LINES * ALIGN_LINES, -(-start // ALIGN_LINES) * ALIGN_LINES):
        k = cursor_line - edge
        if 0 <= k < len(totals) and totals[k] >= budget * MIN_STICKY_FILL:
            return k
    return keep


@dataclass(frozen=True)
class Window:
    prefix: Side
    suffix: Side
    prefix_start: int  # first line of the prefix
    suffix_end: int  # last line of the suffix


def window(doc: Document, cursor: Cursor, prefix_tokens: int, suffix_tokens: int, count: Callable[[str], int],
           previous: Window | None = None) -> Window:
    """The prefix and suffix for a completion at ``cursor``; ``previous`` makes the edges sticky."""
    prefix = cut(doc.window_before(cursor), prefix_tokens, count, before=True,
                 keep_lines=cursor.line - previous.prefix_start if previous else None, cursor_line=cursor.line)
    suffix = cut(doc.window_after(cursor), suffix_tokens, count, before=False,
                 keep_lines=previous.suffix_end - cursor.line if previous else None)
    return Window(prefix, suffix, cursor.line - prefix.lines, cursor.line + suffix.lines)
