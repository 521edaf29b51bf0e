"""Turning the model's raw middle into a suggestion that fits where it will be shown.

Pure functions of strings, so tests need no model. The same ``block_end`` serves two
purposes: during generation it tells the engine (through ``on_text``) that the block
is complete, and afterwards it trims the text at the same place.
"""

from __future__ import annotations

import re
from typing import Collection, Literal, Sequence

Mode = Literal["single", "multi"]

# Literal spellings a model may emit as text rather than as special ids.
END_MARKERS = ("<EOT>", "</s>")
STRAY_MARKERS = ("<PRE>", "<SUF>", "<MID>", "<s>")
OPENERS = {"(": ")", "[": "]", "{": "}"}
# A unit of 3 to 40 characters written four times in a row: a small model stuck in a loop.
_LOOP = re.compile(r"(.{3,40}?)\1{3,}", re.DOTALL)
_WORD = re.compile(r"\w+")
MAX_LOOP_LINES = 8  # longest block of lines checked for repetition
MAX_LOOP_WORDS = 12  # longest run of words checked for repetition (prose)
MIN_REPEATED_BLOCK_CHARS = 24  # a repeated block shorter than this may be chance
MIN_REPEATED_LINE_WORDS = 5  # a repeated docstring line shorter than this may be real
SUFFIX_CODE_LINES = 24  # how far into the suffix a multi-line suggestion is checked for a copy
MIN_SUFFIX_COPY_CHARS = 12  # two lines equal to the document's own next lines are rarely chance
CLOSERS = {v: k for k, v in OPENERS.items()}


# Why a generation may stop before its text is finished: the time budget or the token limit.
# Code is cut back only at the time budget, whose cut falls wherever the clock says; the token
# limit (maxNewTokens) is the user's own measure of a suggestion, shown as far as it goes.
# Prose (docstrings, explanations) is cut back at either, to a whole sentence.
UNFINISHED_CODE = frozenset({"time"})
UNFINISHED_PROSE = frozenset({"time", "length"})
_SENTENCE_END = re.compile(r"[.!?:](?=\s|$)")


def whole_lines(text: str) -> str:
    """``text`` without its unfinished last line: what a suggestion cut by its budget may show.

    A cut can fall anywhere, in a word or a string; the lines before it were finished by the
    model. A single-line suggestion cut this way shows nothing rather than a fragment.
    """
    return text[:text.rfind("\n") + 1]


def whole_sentences(text: str) -> str:
    """``text`` up to its last finished sentence or line: what a docstring cut by its budget may show."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:max([*ends, text.rfind("\n") + 1])]


def choose_mode(line_text: str, index: int) -> Mode:
    """Single-line when text follows the cursor on its line; multi-line at the end of a line."""
    return "single" if line_text[index:].strip() else "multi"


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def strip_special(text: str) -> str:
    """Cut at an end marker and drop stray infilling markers."""
    for marker in END_MARKERS:
        i = text.find(marker)
        if i >= 0:
            text = text[:i]
    for marker in STRAY_MARKERS:
        text = text.replace(marker, "")
    return text


def _char_loop(text: str) -> int | None:
    """A short unit (3 to 40 characters, not all whitespace) written four times in a row.

    The cut keeps the first copy; when the unit spans a line break, it keeps the whole line the
    cut falls in (the rest of that line is the start of the next copy), so a repeated short line
    is kept once, not cut mid-line.
    """
    for match in _LOOP.finditer(text):
        unit = match.group(1)
        if unit.strip():
            at = match.start() + len(unit)
            if "\n" in unit:
                at = text.find("\n", at)
            return at
    return None


def _complete_lines(text: str) -> list[tuple[int, str]]:
    """(offset just past its newline, text without trailing whitespace) of each complete line."""
    out, start = [], 0
    while (end := text.find("\n", start)) >= 0:
        out.append((end + 1, text[start:end].rstrip()))
        start = end + 1
    return out


def _substantial(block: Sequence[str], min_chars: int = MIN_REPEATED_BLOCK_CHARS) -> bool:
    """Enough text that a second copy of it cannot be chance (``else:`` / ``pass`` can)."""
    return sum(len(line.strip()) for line in block) >= min_chars


def _same_block(a: Sequence[str], b: Sequence[str]) -> bool:
    """Blocks of two or more lines match whatever their indentation: a loop often nests each
    copy one level deeper. A single line must match with its indentation: ``return False`` at
    three depths in a row is real code."""
    if len(a) == 1:
        return list(a) == list(b)
    return [line.strip() for line in a] == [line.strip() for line in b]


def _line_loop(text: str) -> int | None:
    """A block of complete lines repeated right after itself: the end of its first copy.

    One line must come three times (two equal lines in a row happen in real code: ``next(it)``
    twice); a block of two or more lines with some substance, twice.
    """
    lines = _complete_lines(text)
    rows = [line for _, line in lines]
    best: int | None = None
    for size in range(1, MAX_LOOP_LINES + 1):
        copies = 3 if size == 1 else 2
        for i in range(len(rows) - size * copies + 1):
            block = rows[i:i + size]
            if not (block[0].strip() if size == 1 else _substantial(block)):
                continue
            if all(_same_block(block, rows[i + k * size: i + (k + 1) * size]) for k in range(1, copies)):
                at = lines[i + size - 1][0] - 1  # before the newline that ends the first copy
                best = at if best is None else min(best, at)
                break
    return best


def _word_loop(text: str) -> int | None:
    """Prose going round: a run of words repeated right after itself, or a 4-gram said a third time.

    Words compare lowercased and without punctuation, so a loop that wraps its line still counts.
    A run of one word must come four times, of two or three words three times, of four or more
    twice ("the number of a heap and the number of a heap and"); the cut keeps the first copy
    (to its line's end when a line break separates the copies).
    A 4-gram's third use, anywhere, catches the loops that vary a little ("a heap, and a heap
    are a heap, and a heap"): the cut is at the start of the line it is on (of the word, on the
    first line).
    """
    found = list(_WORD.finditer(text))
    words = [m.group(0).lower() for m in found]
    best: int | None = None
    for size in range(1, MAX_LOOP_WORDS + 1):
        copies = 4 if size == 1 else 3 if size <= 3 else 2
        for i in range(len(words) - size * copies + 1):
            unit = words[i:i + size]
            if all(words[i + k * size: i + (k + 1) * size] == unit for k in range(1, copies)):
                at = found[i + size - 1].end()
                if "\n" in text[at: found[i + size].start()]:
                    at = text.find("\n", at)  # copies end at a line break: keep the first copy's line whole
                best = at if best is None else min(best, at)
                break
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - 3):
        gram = tuple(words[i:i + 4])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] == 3:
            start = found[i].start()
            line_start = text.rfind("\n", 0, start) + 1
            at = line_start if text[:line_start].strip() else start
            best = at if best is None else min(best, at)
            break
    return best


def loop_end(text: str, prose: bool = False) -> int | None:
    """Where a degenerate repetition starts repeating (after its first occurrence), if there is one.

    Checked after every token (``generation_request``'s streaming callback), so generation stops
    as soon as a loop is complete, and again on the final text. Code loops are short units and
    repeated lines or blocks; ``prose`` (docstrings) adds word-level loops, which in code would
    cut real repetition such as ``[0, 0, 0], [0, 0, 0], [0, 0, 0]``.
    """
    found = [at for at in (_char_loop(text), _line_loop(text), _word_loop(text) if prose else None) if at is not None]
    return min(found) if found else None


def drop_repeated_blocks(text: str) -> str:
    """Cut a multi-line suggestion where it starts writing again a block of lines it already wrote.

    Consecutive copies are ``loop_end``'s; this finds a block of two or more lines that comes
    back later (the model went round a longer cycle), and keeps what came before the copy.
    """
    lines = text.split("\n")
    for j in range(2, len(lines)):
        for size in range(min(MAX_LOOP_LINES, len(lines) - j), 1, -1):
            block = lines[j:j + size]
            if not _substantial(block):
                continue
            if any(_same_block(block, lines[i:i + size]) for i in range(0, j - size + 1)):
                return "\n".join(lines[:j]).rstrip()
    return text


def drop_repeated_lines(text: str) -> str:
    """Prose (a docstring) without a sentence-long line it already had, nor a block it wrote again.

    Short lines may repeat ("The default is None." under two parameters), and so may lines
    without letters (blank lines, ``----------`` underlines); a line of five words or more said
    twice is the model going round. A repeated block of lines ends the text (``drop_repeated_blocks``).
    """
    seen: set[str] = set()
    kept: list[str] = []
    for line in drop_repeated_blocks(text).split("\n"):
        words = _WORD.findall(line.lower())
        key = " ".join(words)
        if len(words) >= MIN_REPEATED_LINE_WORDS:
            if key in seen:
                continue
            seen.add(key)
        kept.append(line)
    return "\n".join(kept)


def suffix_repeat(text: str, suffix: str) -> int | None:
    """Where a multi-line suggestion starts writing again the code that follows the cursor.

    Models that infill an empty line often write the rest of the function, which the suffix
    already holds. Two consecutive complete lines that equal two consecutive code lines among
    the suffix's next ``SUFFIX_CODE_LINES`` (stripped, with some substance) mark the copy; the
    suggestion ends before it. ``block_end`` catches a copy of the first code line alone.
    """
    code = [line.strip() for line in suffix.split("\n")[1:] if line.strip()][:SUFFIX_CODE_LINES]
    pairs = {(a, b) for a, b in zip(code, code[1:]) if _substantial((a, b), MIN_SUFFIX_COPY_CHARS)}
    if not pairs:
        return None
    lines = _complete_lines(text)
    starts = [0] + [end for end, _ in lines]
    rows = [line.strip() for _, line in lines]
    for j in range(len(rows) - 1):
        if (rows[j], rows[j + 1]) in pairs:
            return max(0, starts[j] - 1)  # before the newline that ends the line above the copy
    return None


def repeats_neighbour(text: str, before: str, after: str) -> bool:
    """Whether a single-line suggestion is a copy of the code line above or below it.

    ``before`` and ``after`` are those lines as the document has them, indentation included,
    compared with the suggestion at the cursor's indentation (``indent + text``).
    """
    line = text.rstrip()
    return bool(line.strip()) and line in (before.rstrip(), after.rstrip())


def _scan_brackets(text: str) -> list[tuple[int, str]]:
    """Brackets outside string literals, as (offset, char); a plain scan good for one line."""
    found: list[tuple[int, str]] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in OPENERS or ch in CLOSERS:
            found.append((i, ch))
        i += 1
    return found


def leaves_open(text: str) -> bool:
    """Whether ``text`` ends with a bracket it opened still open (``if x {`` and no ``}``).

    Closers it did not open do not count: a suggestion may end the block it started in.
    """
    depth = 0
    for _, ch in _scan_brackets(text):
        depth = depth + 1 if ch in OPENERS else max(0, depth - 1)
    return depth > 0


def balance_brackets(text: str, line_suffix: str) -> str:
    """Cut the suggestion before a closer it did not open when the rest of the line supplies it.

    In ``f(|)`` a suggestion ``x)`` would leave ``f(x))``; the closer already after the cursor wins.
    """
    stack: list[str] = []
    for offset, ch in _scan_brackets(text):
        if ch in OPENERS:
            stack.append(ch)
        elif stack and stack[-1] == CLOSERS[ch]:
            stack.pop()
        elif ch in line_suffix:
            return text[:offset]
    return text


_WORD_END = re.compile(r"\w+\Z")


def head_repeat(head: str, text: str) -> int:
    """How many characters at the start of ``text`` write again the end of the word left of the cursor.

    After ``self.valid_up`` a model that lost track of the token boundary writes ``_up_to``;
    accepted, that would read ``valid_up_up_to``. The repeat must be two characters or more and
    start at a part of the word (its start, an underscore, a lower-to-upper case change), so a
    word that really doubles a letter (``x`` then ``x``) is left alone. Symbols are not judged
    here (after ``/`` a ``/`` is a comment, after ``#`` a ``#`` is not): token healing
    (``completion.healing``) has the model pick that boundary itself.
    """
    found = _WORD_END.search(head)
    if found is None:
        return 0
    word = found.group(0)
    for k in range(len(word), 1, -1):
        part = word[-k:]
        starts_part = k == len(word) or part[0] == "_" or (part[0].isupper() and word[-k - 1].islower())
        if starts_part and text.startswith(part):
            return k
    return 0


def cut_line_suffix_repeat(text: str, line_suffix: str) -> str:
    """Drop a single-line suggestion's tail that repeats the text after the cursor."""
    rest = line_suffix.strip()
    if not rest:
        return text
    i = text.find(rest)
    return text[:i] if i >= 0 else text


def next_code_line(suffix: str) -> str:
    """The first non-blank line after the cursor's line, stripped."""
    return line_below(suffix).strip()


def line_below(suffix: str) -> str:
    """The first non-blank line after the cursor's line, as written."""
    for line in suffix.splitlines()[1:]:
        if line.strip():
            return line
    return ""


def line_above(prefix: str) -> str:
    """The last non-blank line before the cursor's line, as written."""
    for line in reversed(prefix.split("\n")[:-1]):
        if line.strip():
            return line
    return ""


def block_end(text: str, block_indent: str, next_line: str) -> int | None:
    """Where a multi-line suggestion leaves the cursor's block, if it has.

    A complete line (one followed by a newline) ends the suggestion before it when it is
    dedented below the block, or when it repeats the first code line after the cursor.
    """
    start = text.find("\n")
    while start >= 0:
        end = text.find("\n", start + 1)
        if end < 0:
            return None
        line = text[start + 1: end]
        if line.strip():
            if len(indent_of(line)) < len(block_indent) or (next_line and line.strip() == next_line):
                return start
        start = end
    return None


# The post-processing steps, in the order ``finish`` applies them. The quality benchmark's
# ablation turns them on one at a time to measure what each adds over a model's raw text.
Step = Literal["stop", "brackets", "repetition", "indent"]
STEPS: tuple[Step, ...] = ("stop", "brackets", "repetition", "indent")


def finish(raw: str, mode: Mode, line_suffix: str, block_indent: str, next_line: str,
           steps: Collection[Step] = STEPS, suffix: str = "") -> str:
    """The suggestion to show for raw middle text ``raw``; "" when nothing is worth showing.

    ``steps`` exists for the ablation: "stop" cuts at end markers and at a loop, "brackets"
    fits a single line to the rest of its line (closers and text it already has), "repetition"
    cuts a multi-line suggestion where it starts over or starts copying ``suffix`` (the text
    after the cursor). With none, a single line is just its first line. (``suggestion`` adds
    the single-line check against the neighbouring lines, and "indent": a first line's leading
    whitespace dropped when the cursor stands at an indentation.)
    """
    text = raw
    if "stop" in steps:
        text = strip_special(text)
        loop = loop_end(text)
        if loop is not None:
            text = text[:loop]
    if mode == "single":
        text = text.split("\n", 1)[0].split("\r", 1)[0]
        if "brackets" in steps:
            text = cut_line_suffix_repeat(text, line_suffix)
            text = balance_brackets(text, line_suffix)
        text = text.rstrip()
    else:
        cut = block_end(text + "\n", block_indent, next_line)
        if cut is not None:
            text = text[:cut]
        if next_line and text.strip() == next_line:
            text = ""
        if "repetition" in steps:
            copy = suffix_repeat(text + "\n", suffix)
            if copy is not None:
                text = text[:copy]
            text = drop_repeated_blocks(text)
        text = text.rstrip()
    return text if text.strip() else ""
