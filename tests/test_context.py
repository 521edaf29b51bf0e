"""Context windows: cut at line boundaries, within budgets, sticky between keystrokes."""

from __future__ import annotations

from codellama_lsp.completion.context import TokenCounter, cut, model_text, sanitize, window
from codellama_lsp.documents import Cursor, Document


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word."""
    return len(text.split())


LINES = [f"line{i} a b c\n" for i in range(100)]  # 4 tokens each
DOC = Document.from_text("file:///t.py", "".join(LINES))


def test_cut_at_line_boundaries_within_the_budget() -> None:
    w = window(DOC, Cursor(50, 3), prefix_tokens=40, suffix_tokens=20, count=words)
    assert w.prefix.text.endswith("lin") and w.prefix.text.startswith("line")
    assert w.prefix.tokens <= 40 and w.suffix.tokens <= 20
    assert w.prefix.text.count("\n") == w.prefix.lines
    assert w.suffix.text.startswith("e50 a b c\n")
    assert all(line.endswith("\n") for line in w.prefix.text.splitlines(keepends=True)[:-1])


def test_a_fresh_cut_leaves_room_and_the_edge_stays_while_typing() -> None:
    first = window(DOC, Cursor(50, 0), 40, 20, words)
    assert first.prefix.tokens <= 0.75 * 40
    doc = Document.from_text("file:///t.py", "".join(LINES))
    for typed in range(1, 6):  # type five words at the cursor: the prefix start does not move
        doc.apply_change("w ", (50, 0), (50, 0))
        again = window(doc, Cursor(50, 2 * typed), 40, 20, words, previous=first)
        assert again.prefix_start == first.prefix_start
        first = again
    # Enough typing to overflow the budget moves the edge once, to three quarters again.
    doc.apply_change("w " * 30, (50, 0), (50, 0))
    moved = window(doc, Cursor(50, 70), 40, 20, words, previous=first)
    assert moved.prefix_start > first.prefix_start and moved.prefix.tokens <= 40


def test_a_moved_cursor_recuts_instead_of_keeping_a_thin_window() -> None:
    first = window(DOC, Cursor(50, 0), 40, 20, words)
    near = window(DOC, Cursor(first.prefix_start + 1, 0), 40, 20, words, previous=first)
    assert near.prefix.lines > 1


def test_small_documents_are_taken_whole() -> None:
    doc = Document.from_text("file:///t.py", "a b\nc d\ne f\n")
    w = window(doc, Cursor(1, 1), 1000, 1000, words)
    assert w.prefix.text + w.suffix.text == doc.text


def test_only_lines_near_the_cursor_are_tokenized() -> None:
    seen: list[str] = []

    def counting(text: str) -> int:
        seen.append(text)
        return words(text)

    big = Document.from_text("file:///big.py", "".join(LINES * 1000))
    window(big, Cursor(50_000, 0), 40, 20, counting)
    assert len(seen) < 30


def test_one_enormous_line_is_cut_mid_line() -> None:
    doc = Document.from_text("file:///one.txt", "x " * 1_000_000)
    w = window(doc, Cursor(0, 1_000_000), 40, 20, words)
    assert 0 < w.prefix.tokens <= 40 and len(w.prefix.text) < 1000


def test_counter_caches_and_sanitizes() -> None:
    calls: list[str] = []
    counter = TokenCounter(lambda s: calls.append(s) or s.split())
    assert counter("a b") == counter("a b") == 2
    assert calls == ["a b"]
    assert sanitize("x\udc80y") == "x\ufffdy"
    assert model_text("a\r\nb\rc") == "a\nb\nc"


def test_cut_with_zero_budget() -> None:
    assert cut(iter(["abc", "def\n"]), 0, words, before=False).text == ""


def test_a_fresh_prefix_starts_on_the_grid_so_returns_and_nearby_places_share_it() -> None:
    """A return to a place where a line was typed since, and a place a few lines away, get the
    same first line: the engine's cached prompt serves them (engine.prompt_cache)."""
    from codellama_lsp.completion.context import ALIGN_LINES

    lines = [f"line{i} a b c\n" for i in range(300)]
    doc = Document.from_text("file:///g.py", "".join(lines))
    at = window(doc, Cursor(200, 0), 400, 20, words)
    assert at.prefix_start % ALIGN_LINES == 0 and 0.5 * 400 <= at.prefix.tokens <= 400
    typed = Document.from_text("file:///g.py", "".join(lines[:200]) + "x y z w v u t s " + "".join(lines[200:]))
    assert window(typed, Cursor(200, 16), 400, 20, words).prefix_start == at.prefix_start
    assert window(doc, Cursor(197, 0), 400, 20, words).prefix_start == at.prefix_start  # the same grid step


def test_a_return_continues_its_own_place_not_the_last_one() -> None:
    """The server plans a request with the window and snippets of the place it continues."""
    from codellama_lsp.service.open_documents import OpenDocument, Place

    lines = [f"line{i} a b c\n" for i in range(300)]
    doc = Document.from_text("file:///p.py", "".join(lines))
    record = OpenDocument(doc)
    first = window(doc, Cursor(100, 0), 200, 20, words)
    record.remember(Place(first, ()))
    far = window(doc, Cursor(250, 0), 200, 20, words)
    record.remember(Place(far, ()))
    assert record.place_at(250).window == far
    back = record.place_at(100)
    assert back is not None and back.window == first
    assert window(doc, Cursor(100, 0), 200, 20, words, previous=back.window).prefix_start == first.prefix_start
    assert record.place_at(0) is None
