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
MIN_STICKY_FILL = 0.5


class TokenCounter:
    """Token counts of lines, cached: most lines do not change between keystrokes."""

    def __init__(self, encode: Callable[[str], list[int]], capacity: int = 8192) -> None:
        self._encode = encode
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity

    def __call__(self, text: str) -> int:
        n = self._cache.get(text)
        if n is not None:
            self._cache.move_to_end(text)
            return n
        n = len(self._encode(sanitize(text)))
        self._cache[text] = n
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return n


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
        keep_lines: int | None = None) -> Side:
    """Take pieces nearest-first: the cursor line's part, then whole lines, within ``budget`` tokens.

    ``keep_lines`` (how many whole lines the previous window had on this side) is honoured
    when they still fit and fill at least half the budget; otherwise a fresh cut fills three
    quarters of it, or takes everything when the whole side fits.
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
    taken = taken[: keep + 1]
    return Side("".join(reversed(taken) if before else taken), totals[keep], keep)


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
                 keep_lines=cursor.line - previous.prefix_start if previous else None)
    suffix = cut(doc.window_after(cursor), suffix_tokens, count, before=False,
                 keep_lines=previous.suffix_end - cursor.line if previous else None)
    return Window(prefix, suffix, cursor.line - prefix.lines, cursor.line + suffix.lines)
