"""LSP positions <-> string indices, and documents edited by incremental changes."""

from __future__ import annotations

import pytest

from codellama_lsp.documents import Cursor, Document, PositionOutOfRange, split_lines
from codellama_lsp.positions import negotiate, units_to_index

LINE = "a😀b日本\ud800c"  # ASCII, an astral emoji, CJK, a lone surrogate (binary content)


@pytest.mark.parametrize("encoding, codec, width", [("utf-8", "utf-8", 1), ("utf-16", "utf-16-le", 2), ("utf-32", "utf-32-le", 4)])
def test_the_column_of_every_character_maps_back_to_it(encoding: str, codec: str, width: int) -> None:
    for index in range(len(LINE) + 1):
        units = len(LINE[:index].encode(codec, "surrogatepass")) // width
        assert units_to_index(LINE, units, encoding) == index


def test_a_column_inside_a_character_rounds_down() -> None:
    assert units_to_index(LINE, 2, "utf-16") == 1  # between the emoji's surrogates
    assert [units_to_index(LINE, c, "utf-8") for c in range(1, 6)] == [1, 1, 1, 1, 2]  # inside its 4 bytes
    assert units_to_index(LINE, 7, "utf-8") == 3  # inside 日


def test_a_column_past_the_end_clamps() -> None:
    assert units_to_index(LINE, 1000, "utf-16") == len(LINE)
    assert units_to_index("abc", 1000, "utf-8") == 3
    assert units_to_index("abc", -1, "utf-8") == 0


def test_negotiation_prefers_the_client_order_and_defaults_to_utf16() -> None:
    assert negotiate(["utf-8", "utf-16"]) == "utf-8"
    assert negotiate(["latin-1", "utf-32"]) == "utf-32"
    assert negotiate(["latin-1"]) == negotiate(None) == negotiate([]) == "utf-16"


def test_only_lf_crlf_and_cr_end_lines() -> None:
    assert split_lines("a\r\nb\rc\nd\x0ce\u2028f") == ["a\r\n", "b\r", "c\n", "d\x0ce\u2028f"]
    assert split_lines("") == [""]
    assert split_lines("x\n") == ["x\n", ""]


def _edit(text: str, start: tuple[int, int], end: tuple[int, int], new: str, encoding: str = "utf-16") -> str:
    doc = Document.from_text("file:///t", text, encoding=encoding)
    doc.apply_change(new, start, end)
    assert doc.lines == split_lines(doc.text), "lines stay split exactly as a fresh split would"
    return doc.text


def test_incremental_edits() -> None:
    assert _edit("hello\nworld\n", (0, 5), (0, 5), " there") == "hello there\nworld\n"
    assert _edit("hello\nworld\n", (0, 2), (1, 3), "") == "held\n"
    assert _edit("a\nb\nc", (1, 0), (2, 1), "X\nY\nZ") == "a\nX\nY\nZ"
    assert _edit("a\nb", (5, 0), (9, 9), "!") == "a\nb!"  # past the end: the end
    assert _edit("a\nb", (1, 1), (0, 1), "") == "a"  # a reversed range is read start-first


def test_edits_in_crlf_and_cr_documents() -> None:
    assert _edit("a\r\nb\r\n", (0, 1), (1, 0), "") == "ab\r\n"
    assert _edit("a\rb", (1, 0), (1, 0), "\n") == "a\r\nb"  # a CR and an inserted LF become one CRLF line end
    assert _edit("a\r\nb", (0, 1), (0, 1), "\r") == "a\r\r\nb"


def test_edits_addressed_in_utf16_units_after_an_emoji() -> None:
    assert _edit("x😀y\n", (0, 3), (0, 3), "!") == "x😀!y\n"
    assert _edit("x😀y\n", (0, 1), (0, 3), "") == "xy\n"
    assert _edit("x😀y\n", (0, 5), (0, 5), "!", encoding="utf-8") == "x😀!y\n"


def test_cursor_positions() -> None:
    doc = Document.from_text("file:///t", "a😀\r\nb")
    assert doc.cursor(0, 3).index == 2 and doc.line_text(0) == "a😀"
    with pytest.raises(PositionOutOfRange):
        doc.cursor(2, 0)
    with pytest.raises(PositionOutOfRange):
        doc.cursor(-1, 0)


def test_a_suggestion_inserted_is_the_document_after_typing_it() -> None:
    """What a prefetch computes on: the same text, and the cursor, as typing the suggestion gives."""
    doc = Document.from_text("u", "def f(x):\n    ret\nnext\n", version=4)
    for shown in ("urn x", "urn x\n    y = 1", "urn 😀\n"):
        ahead, end = doc.inserted(doc.cursor(1, 7), shown)
        typed = Document.from_text("u", doc.text)
        line, col = 1, 7
        for ch in shown:  # one keystroke at a time, as an editor sends them (UTF-16 columns)
            typed.apply_change(ch, (line, col), (line, col))
            line, col = (line + 1, 0) if ch == "\n" else (line, col + len(ch.encode("utf-16-le")) // 2)
        assert ahead.lines == typed.lines and ahead.digest() == typed.digest() and ahead.version is None
        assert typed.cursor(line, col) == end
    assert doc.text == "def f(x):\n    ret\nnext\n"  # the document itself is unchanged
    last = Document.from_text("u", "abc")
    assert last.inserted(Cursor(0, 3), "de\nf") == (Document("u", ["abcde\n", "f"]), Cursor(1, 1))
    assert Document.from_text("u", "a").digest() != Document.from_text("u", "b").digest()
