"""Open documents as lists of lines, edited in place by incremental changes.

Only ``\\n``, ``\\r\\n`` and ``\\r`` end a line, as in the LSP (``str.splitlines`` would
also split on form feeds, ``\\u2028`` and others, shifting every later line number).
Keeping lines rather than one string makes an edit cost a list splice and a few
re-split lines, and makes reading the lines around the cursor independent of the
document's size.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable

from codellama_lsp.positions import Encoding, units_to_index

_EOL = re.compile(r"(\r\n|\r|\n)")
# Characters str.splitlines also breaks at, which the LSP does not.
_OTHER_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def split_lines(text: str) -> list[str]:
    """Lines with their terminators; the last item is the unterminated rest (maybe "")."""
    if _OTHER_BREAKS.search(text) is None:
        lines = text.splitlines(keepends=True)  # the fast path, exact when only LSP line ends occur
        if not lines or lines[-1].endswith(("\n", "\r")):
            lines.append("")
        return lines
    parts = _EOL.split(text)  # text, end, text, end, ..., rest
    lines = [line + end for line, end in zip(parts[0::2], parts[1::2])]
    lines.append(parts[-1])
    return lines


def strip_eol(line: str) -> str:
    return line.rstrip("\r\n") if line.endswith(("\n", "\r")) else line


@dataclass(frozen=True)
class Cursor:
    """A position as (line number, string index within the line's text)."""

    line: int
    index: int


class PositionOutOfRange(ValueError):
    """A position whose line is past the end of the document."""


@dataclass
class Document:
    uri: str
    lines: list[str]
    version: int | None = None
    language_id: str = ""
    encoding: Encoding = "utf-16"

    @classmethod
    def from_text(cls, uri: str, text: str, version: int | None = None, language_id: str = "",
                  encoding: Encoding = "utf-16") -> "Document":
        return cls(uri, split_lines(text), version, language_id, encoding)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def line_text(self, line: int) -> str:
        """Line ``line`` without its terminator."""
        return strip_eol(self.lines[line])

    def cursor(self, line: int, character: int, *, clamp_line: bool = False) -> Cursor:
        """The cursor at an LSP position; columns past the line's end clamp to it."""
        if line < 0 or character < 0:
            raise PositionOutOfRange(f"negative position {line}:{character}")
        if line >= len(self.lines):
            if not clamp_line:
                raise PositionOutOfRange(f"line {line} is past the end of the document ({len(self.lines)} lines)")
            last = len(self.lines) - 1
            return Cursor(last, len(self.line_text(last)))
        return Cursor(line, units_to_index(self.line_text(line), character, self.encoding))

    def apply_change(self, text: str, start: tuple[int, int] | None = None, end: tuple[int, int] | None = None) -> None:
        """Replace the LSP range ``start``-``end`` (the whole document when None) with ``text``.

        Range ends past the document clamp to its end. Re-splitting includes the line
        before the edit, so a ``\\r`` there and an inserted ``\\n`` merge into one CRLF.
        """
        if start is None or end is None:
            self.lines = split_lines(text)
            return
        a = self.cursor(*start, clamp_line=True)
        b = self.cursor(*end, clamp_line=True)
        if (b.line, b.index) < (a.line, a.index):
            a, b = b, a
        first = max(0, a.line - 1)
        before = "".join(self.lines[first:a.line]) + self.lines[a.line][: a.index]
        after = self.lines[b.line][b.index:]
        replaced = split_lines(before + text + after)
        if b.line < len(self.lines) - 1:
            # Not the document's end: the region ends with a terminator, so its rest is "".
            replaced.pop()
        self.lines[first: b.line + 1] = replaced

    def inserted(self, at: Cursor, text: str) -> tuple["Document", Cursor]:
        """A copy with ``text`` typed at ``at`` (no version), and the cursor after it: the
        document once a suggestion shown there is typed or accepted."""
        line = self.lines[at.line]
        replaced = split_lines(line[: at.index] + text + line[at.index:])
        if at.line < len(self.lines) - 1:  # the line keeps its terminator: the rest after it is ""
            replaced.pop()
        lines = self.lines[: at.line] + replaced + self.lines[at.line + 1:]
        typed = split_lines(text)
        end = Cursor(at.line + len(typed) - 1, (at.index if len(typed) == 1 else 0) + len(typed[-1]))
        return Document(self.uri, lines, None, self.language_id, self.encoding), end

    def digest(self) -> str:
        """A digest of the text: tells whether two states of a document are the same text."""
        return hashlib.blake2b(self.text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

    def line_ending(self, line: int) -> str:
        """The line ending in use near ``line`` (its own, the one above, the first line's), else LF.

        The model sees and writes LF; what the server inserts goes back in the document's own ending.
        """
        for text in (self.lines[line], self.lines[max(0, line - 1)], self.lines[0]):
            if text.endswith("\r\n"):
                return "\r\n"
            if text.endswith(("\n", "\r")):
                return text[-1]
        return "\n"

    def window_before(self, cursor: Cursor) -> Iterable[str]:
        """Text before the cursor, nearest first: the cursor line's head, then whole lines upwards."""
        yield self.lines[cursor.line][: cursor.index]
        for i in range(cursor.line - 1, -1, -1):
            yield self.lines[i]

    def window_after(self, cursor: Cursor) -> Iterable[str]:
        """Text after the cursor, nearest first: the cursor line's tail, then whole lines downwards."""
        yield self.lines[cursor.line][cursor.index:]
        for i in range(cursor.line + 1, len(self.lines)):
            yield self.lines[i]
