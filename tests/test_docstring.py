"""Finding definitions (tree-sitter, with a fallback), docstring prompts, and the inserted text."""

from __future__ import annotations

from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.definitions import find_definition
from codellama_lsp.documents import Document

PY = '''import os

class Shape:
    @property
    def area(self,
             scale=1) -> float:
        return 0.0

    def name(self):
        """Documented."""
        return "shape"

def one_liner(): return 1
'''


def py(text: str = PY) -> Document:
    return Document.from_text("file:///s.py", text, language_id="python")


def test_python_definitions() -> None:
    doc = py()
    cls = find_definition(doc, 2)
    assert (cls.name, cls.kind, cls.header_end, cls.body_indent) == ("Shape", "class", 2, "    ")
    area = find_definition(doc, 5)  # the second line of a multi-line signature
    assert (area.name, area.first_line, area.header_end, area.body_line, area.body_indent) == ("area", 4, 5, 6, "        ")
    assert not area.has_docstring and find_definition(doc, 8).has_docstring
    assert find_definition(doc, 6) is None  # inside a body
    assert find_definition(doc, 12) is None  # no line for a docstring


def test_javascript_and_fallback_definitions() -> None:
    js = Document.from_text("file:///a.js", "/** Doc. */\nfunction f(a) {\n  return a;\n}\nclass K {\n  m(x) {\n  }\n}\n")
    assert find_definition(js, 1).has_docstring
    m = find_definition(js, 5)
    assert (m.name, m.kind, m.style, m.first_line, m.indent) == ("m", "method", "jsdoc", 5, "  ")
    c = Document.from_text("file:///a.c", "static int add(int a, int b) {\n  return a + b;\n}\n", language_id="c")
    d = find_definition(c, 0)
    assert (d.name, d.style, d.first_line) == ("add", "jsdoc", 0)
    assert find_definition(c, 1) is None


def test_python_prompt_opens_the_docstring_and_leaves_closing_it_to_the_model() -> None:
    doc = py()
    d = find_definition(doc, 4)
    p = ds.sides(doc, d, 1000, 1000, lambda s: len(s.split()))
    assert p.prefix.endswith('             scale=1) -> float:\n        """')
    assert p.suffix.startswith('\n        return 0.0\n')  # the default layout, "open"
    assert p.stop == ('"""',)  # the middle ends where the model closes the string
    closed = ds.sides(doc, d, 1000, 1000, lambda s: len(s.split()), layout="closed")
    assert closed.prefix == p.prefix and closed.suffix.startswith('"""\n        return 0.0\n')


def test_c_like_prompt_puts_it_in_a_block_comment_above() -> None:
    doc = Document.from_text("file:///a.js", "const a = 1;\n  function f(x) {\n  }\n")
    p = ds.sides(doc, find_definition(doc, 1), 1000, 1000, lambda s: len(s.split()))
    assert p.prefix == "const a = 1;\n  /**\n   * "
    assert p.suffix.startswith("\n   */\n  function f(x) {")


def test_clean() -> None:
    assert ds.clean('  Compute the area.\n        Scaled.\n    """ rest', "python") == "Compute the area.\nScaled."
    assert ds.clean("Adds.\n * @param a first\n */", "jsdoc") == "Adds.\n@param a first"
    assert ds.clean("a\x00b\u2028c", "python") == "ab\nc"


def test_edit_text_in_the_language_idiom() -> None:
    doc = py(PY.replace("\n", "\r\n"))
    area = find_definition(doc, 4)
    assert ds.edit(doc, area, "Area.") == (6, '        """Area."""\r\n')
    assert ds.edit(doc, area, "Area.\n\nDetails.") == (6, '        """Area.\r\n\r\n        Details.\r\n        """\r\n')
    js = Document.from_text("file:///a.js", "x\n  function f() {\n  }\n")
    assert ds.edit(js, find_definition(js, 1), "Does f.\n\nMore.") == (1, "  /**\n   * Does f.\n   *\n   * More.\n   */\n")


def test_hover_markdown_shows_the_docstring_literally() -> None:
    d = find_definition(py("def __init__(self):\n    pass\n"), 0)
    assert d is not None
    md = ds.markdown(d, "Set *x*, call __init__ and see [docs] <here> # now")
    assert md.startswith("**`__init__`** (generated docstring)")
    assert md.endswith(r"Set \*x\*, call \_\_init\_\_ and see \[docs\] \<here\> \# now")
