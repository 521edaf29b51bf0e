"""Turning the model's raw middle into a suggestion that fits where it will be shown.

Pure functions of strings, so tests need no model. The same ``block_end`` serves two
purposes: during generation it tells the engine (through ``on_text``) that the block
is complete, and afterwards it trims the text at the same place.
"""

from __future__ import annotations

import re
from typing import Literal

Mode = Literal["single", "multi"]

# Literal spellings a model may emit as text rather than as special ids.
END_MARKERS = ("<EOT>", "</s>")
STRAY_MARKERS = ("<PRE>", "<SUF>", "<MID>", "<s>")
OPENERS = {"(": ")", "[": "]", "{": "}"}
# A unit of 3 to 40 characters written four times in a row: a small model stuck in a loop.
_LOOP = re.compile(r"(.{3,40}?)\1{3,}", re.DOTALL)
CLOSERS = {v: k for k, v in OPENERS.items()}


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


def loop_end(text: str) -> int | None:
    """Where a degenerate repetition starts repeating (after its first occurrence), if there is one."""
    for match in _LOOP.finditer(text):
        unit = match.group(1)
        if unit.strip():
            return match.start() + len(unit)
    return None


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


def cut_line_suffix_repeat(text: str, line_suffix: str) -> str:
    """Drop a single-line suggestion's tail that repeats the text after the cursor."""
    rest = line_suffix.strip()
    if not rest:
        return text
    i = text.find(rest)
    return text[:i] if i >= 0 else text


def next_code_line(suffix: str) -> str:
    """The first non-blank line after the cursor's line, stripped."""
    for line in suffix.splitlines()[1:]:
        if line.strip():
            return line.strip()
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


def finish(raw: str, mode: Mode, line_suffix: str, block_indent: str, next_line: str) -> str:
    """The suggestion to show for raw middle text ``raw``; "" when nothing is worth showing."""
    text = strip_special(raw)
    loop = loop_end(text)
    if loop is not None:
        text = text[:loop]
    if mode == "single":
        text = text.split("\n", 1)[0].split("\r", 1)[0]
        text = cut_line_suffix_repeat(text, line_suffix)
        text = balance_brackets(text, line_suffix).rstrip()
    else:
        cut = block_end(text + "\n", block_indent, next_line)
        if cut is not None:
            text = text[:cut]
        if next_line and text.strip() == next_line:
            text = ""
        text = text.rstrip()
    return text if text.strip() else ""
