"""The Instruct actions' server side without a model: what is offered where, the command's
arguments, and where each answer goes."""

from __future__ import annotations

from lsprotocol import types

from codellama_lsp.completion.chat import Chat
from codellama_lsp.documents import Document
from codellama_lsp.lsp import instruct_actions as li

CHATML = Chat("chatml", "test", frozenset({1}), (2, 3))
SOURCE = "class Box:\n    def area(self):\n        return self.w * self.h\n\nx = 1\n"


def rng(a: tuple[int, int], b: tuple[int, int]) -> types.Range:
    return types.Range(start=types.Position(*a), end=types.Position(*b))


def call(action: str, r: types.Range, **extra) -> li.Call:
    parsed = li.parse_call([{"action": action, "uri": "file:///b.py", "version": 1, "range": li.range_json(r), **extra}])
    assert isinstance(parsed, li.Call), parsed
    return parsed


def test_offered_at_a_cursor_is_the_innermost_definition_and_fix_needs_diagnostics() -> None:
    doc = Document.from_text("file:///b.py", SOURCE, 1, "python")
    found = li.offered(doc, rng((2, 9), (2, 9)), [], CHATML)
    assert [a for a, _ in found] == ["explain", "tests", "edit"]
    assert found[0][1]["range"] == li.range_json(rng((1, 0), (3, 0))) and found[0][1]["version"] == 1
    warning = types.Diagnostic(range=rng((2, 15), (2, 16)), message="no attribute w")
    fix = dict(li.offered(doc, rng((2, 9), (2, 9)), [warning], CHATML))["fix"]
    assert fix["diagnostics"] == ["line 3: no attribute w"]
    assert li.offered(doc, rng((4, 0), (4, 0)), [], CHATML) == []  # no definition around "x = 1"
    assert li.offered(doc, rng((4, 0), (4, 5)), [], CHATML)  # a selection is always something
    assert li.offered(doc, rng((2, 9), (2, 9)), [], Chat(None, "no template")) == []


def test_the_command_argument_is_checked() -> None:
    assert "needs" in li.parse_call([{"action": "delete"}])
    assert "range" in li.parse_call([{"action": "explain", "uri": "u", "range": {"start": 1}}])
    assert "instruction" in li.parse_call([{"action": "edit", "uri": "u", "range": li.range_json(rng((0, 0), (1, 0)))}])
    assert isinstance(li.parse_call(None), str)


def test_answers_land_in_the_document_s_own_line_endings() -> None:
    doc = Document.from_text("file:///b.py", SOURCE.replace("\n", "\r\n"), 1, "python")
    r = rng((1, 0), (3, 0))
    start, end, code = li.span(doc, r)
    assert code == "    def area(self):\r\n        return self.w * self.h\r\n"
    answer = "Sure:\n```python\ndef area(self):\n    return self.w * self.h * 1\n```"
    where, text = li.result_edit(call("edit", r, instruction="x"), doc, end, code, answer)
    assert where == r and text == "    def area(self):\r\n        return self.w * self.h * 1\r\n"
    where, text = li.result_edit(call("tests", r), doc, end, code, "```python\ndef test_area():\n    pass\n```")
    assert where == rng((3, 0), (3, 0)) and text == "\r\ndef test_area():\r\n    pass\r\n"


def test_tests_for_code_that_ends_the_document_go_after_it() -> None:
    doc = Document.from_text("file:///b.py", "def f():\n    return 1", 1, "python")
    r = rng((0, 0), (1, 12))
    _, end, code = li.span(doc, r)
    where, text = li.result_edit(call("tests", r), doc, end, code, "```\ndef test_f():\n    assert f() == 1\n```")
    assert where == rng((1, 12), (1, 12)) and text == "\n\ndef test_f():\n    assert f() == 1\n"
