"""Post-processing of the model's middle text, the single/multi-line decision, and early stopping."""

from __future__ import annotations

import pytest

from codellama_lsp.completion.postprocess import (balance_brackets, block_end, choose_mode, cut_line_suffix_repeat, finish,
                                       next_code_line, strip_special)


@pytest.mark.parametrize("line, index, mode", [
    ("    return |a + b", 11, "single"),
    ("    return a + b|", 16, "multi"),
    ("    return a + b   ", 16, "multi"),  # only whitespace after the cursor
    ("", 0, "multi"),
    ("    ", 4, "multi"),
])
def test_mode(line: str, index: int, mode: str) -> None:
    assert choose_mode(line.replace("|", ""), index) == mode


def test_strip_special() -> None:
    assert strip_special("x = 1<EOT> junk") == "x = 1"
    assert strip_special("a<MID>b<PRE>c</s>d") == "abc"


def test_brackets_balanced_against_the_suffix() -> None:
    assert balance_brackets("x, y)", ")") == "x, y"  # f(|) must not become f(x, y))
    assert balance_brackets("g(x)", ")") == "g(x)"  # balanced within the suggestion: kept
    assert balance_brackets("x]", ")") == "x]"  # the rest of the line has no "]": kept
    assert balance_brackets("')' + x)", ")") == "')' + x"  # brackets in strings do not count


def test_repeat_of_the_rest_of_the_line_is_cut() -> None:
    assert cut_line_suffix_repeat("a + b):", "):") == "a + b"
    assert cut_line_suffix_repeat("a + b", "   ") == "a + b"


def test_block_end() -> None:
    assert block_end("x = 1\n    y = 2\nz = 3\n", "    ", "") == len("x = 1\n    y = 2")
    assert block_end("x = 1\n    y = 2\nz = 3", "    ", "") is None  # the dedented line is not complete yet
    assert block_end("x = 1\n\n    y = 2\n", "    ", "") is None  # blank lines do not end a block
    assert block_end("x = 1\n    return x\n", "    ", "return x") == len("x = 1")  # repeats the next line


def test_next_code_line() -> None:
    assert next_code_line("tail of line\n\n   return x\nmore") == "return x"
    assert next_code_line("only the cursor line") == ""


def test_finish_single_line() -> None:
    assert finish("a + b)\nmore", "single", ")", "", "") == "a + b"
    assert finish("   \n", "single", "x", "", "") == ""
    assert finish("<EOT>", "single", "x", "", "") == ""


def test_finish_multi_line_is_trimmed_to_the_block() -> None:
    raw = "total = 0\n    for x in xs:\n        total += x\n    return total\n\ndef other():\n    pass"
    assert finish(raw, "multi", "", "    ", "") == "total = 0\n    for x in xs:\n        total += x\n    return total"
    assert finish("\n\n   \n", "multi", "", "    ", "") == ""
    assert finish("return x", "multi", "", "    ", "return x") == ""


def test_multi_line_suggestions_keep_the_lines_that_parse() -> None:
    from codellama_lsp.completion.syntax import language_of, parser, trim_to_syntax

    py = parser("python")
    prefix, suffix = "import os\n\ndef f(x):\n    ", "\n\nprint(f(1))\n"
    assert trim_to_syntax("y = x + 1\n    return y\n    if (", prefix, suffix, py) == "y = x + 1\n    return y"
    complete = "for i in range(3):\n        y = (x +\n            i)\n    return y"
    assert trim_to_syntax(complete, prefix, suffix, py) == complete  # a bracket open across lines is fine
    js = parser("javascript")
    assert trim_to_syntax("const y = x;\n  return y;\n  if (", "function f(x) {\n  ", "\n}\n", js) == "const y = x;\n  return y;"
    assert parser("cobol") is None
    assert language_of("", "file:///a/b.py") == "python" and language_of("TypeScript", "file:///x.js") == "typescript"


def test_a_model_stuck_in_a_loop_is_cut_after_the_first_round() -> None:
    from codellama_lsp.completion.postprocess import loop_end

    looping = 'x = get("a", "path", "path", "path", "path", "path"'
    assert looping[: loop_end(looping)] == 'x = get("a", "path'
    lines = "1\n    # S\n    # S\n    # S\n    # S\n"
    assert finish(lines, "multi", "", "    ", "") == "1\n    # S"
    assert loop_end("x = [0, 0, 0]\nbreak\n") is None  # three times is not a loop
    assert loop_end("            ") is None  # nor is indentation
