"""Snippets from other files: chunking, ranking and budgets as pure functions, import resolution, the
workspace index, the repository layout id-exact against the documented format, and the whole
path over a real stdio LSP."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
import pytest_asyncio
import torch

from codellama_lsp.completion import imports
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.completion.families import QWEN_CODER, bind, detect
from codellama_lsp.completion.planning import HEADER_SHARE, Sources, generation_request, plan, shown
from codellama_lsp.completion.repo_layout import RepoContext, commented
from codellama_lsp.completion.snippets import (CHUNK_MAX_LINES, Scored, Snippet, chunks, identifiers, select,
                                               similarity)
from codellama_lsp.devtools.lsp_client import Client, stop
from codellama_lsp.documents import Document
from codellama_lsp.engine.engine import Engine
from codellama_lsp.settings import Settings, fit_to_context, resolve_format
from codellama_lsp.workspace import MAX_FILE_BYTES, Workspace
from lsp_harness import start

over_lsp = pytest.mark.asyncio(loop_scope="module")

HELPERS = '''"""Helpers."""

import os


def parse_header(line):
    key, _, value = line.partition(":")
    return key.strip().lower(), value.strip()


def read_headers(stream):
    headers = {}
    for line in stream:
        if not line.strip():
            break
        key, value = parse_header(line)
        headers[key] = value
    return headers


class Frame:
    def __init__(self, payload, kind):
        self.payload = payload
        self.kind = kind
'''


def snip(path: str, start: int, text: str, source: str = "open") -> Snippet:
    return Snippet(path, start, start + text.count("\n"), text, source)  # type: ignore[arg-type]


def by_chars(s: Snippet) -> int:
    return len(s.text) // 4 + 1


# -- pure functions ----------------------------------------------------------------------------------------

def test_chunks_cut_at_top_level_boundaries_and_cover_every_line() -> None:
    lines = HELPERS.splitlines(keepends=True)
    got = chunks("pkg/helpers.py", lines)
    assert [c.start for c in got] == [0, 10, 20]  # the first 10 lines: parse_header's boundary comes too early for their own chunk
    assert "".join(c.text for c in got) == HELPERS
    assert got[1].text.startswith("def read_headers") and got[2].text.startswith("class Frame")
    long = [f"x{i} = {i}\n" for i in range(100)]
    assert max(c.end - c.start for c in chunks("a.py", long)) == CHUNK_MAX_LINES


def test_a_snippet_that_defines_a_name_the_query_uses_ranks_first() -> None:
    from codellama_lsp.completion.snippets import definitions
    assert definitions("def foo(x):\n    y = 1\nclass Bar:\n    pass\nMAX: int = 3\nexport const baz = 1\n"
                       "if a == b:\n    pass\n") == {"foo", "Bar", "MAX", "baz"}
    definition = snip("errors.py", 0, "class NotFound(Exception):\n    pass\n")
    lookalike = snip("views.py", 0, "def show_all(request, item):\n    return render(request, item)\n")
    query = "from .errors import NotFound\ndef show(request, item):\n    if item is None:\n        raise "
    got = select([lookalike, definition], query, "", 100, by_chars)
    # Another module's look-alike code shares names (request, item) but defines none of the
    # query's and is not a module it names: no reason to go in. Recently edited, it is one.
    assert [x.snippet for x in got] == [definition]
    edited = replace(lookalike, source="edited")
    got = select([edited, definition], query, "", 100, by_chars)
    assert [x.snippet for x in got] == [edited, definition]  # the most relevant goes last, next to the cursor


def test_a_module_the_query_names_ranks_above_a_lookalike() -> None:
    from codellama_lsp.completion.snippets import module_name
    assert [module_name(p) for p in ("pkg/io.py", "pkg/sub/__init__.py", "web/lib/index.ts", "a.py")] == \
        ["io", "sub", "lib", "a"]
    io = snip("pkg/io.py", 0, "    def read(self):\n        return self.source\n")
    lookalike = snip("pkg/other.py", 0, "    def read(self):\n        return self.data\n")
    got = select([lookalike, io], "from pkg import io\nsource = io.", "", by_chars(io), by_chars)
    assert [x.snippet for x in got] == [io]


def test_identifiers_and_similarity() -> None:
    assert identifiers("def read(self, path): return open(path)") == {"read", "path", "open"}
    a, b = identifiers("parse_header(line)"), identifiers("key, value = parse_header(line)")
    assert similarity(a, b) == pytest.approx(2 / 4)
    assert similarity(frozenset(), b) == 0.0


def test_select_ranks_fits_the_budget_and_drops_what_the_window_shows() -> None:
    wanted = snip("a.py", 0, "def parse_header(line):\n    return line.partition(':')\n")
    other = snip("b.py", 0, "def unrelated_thing(x):\n    return x * 2\n")
    shown = snip("c.py", 0, "for line in stream:\n    parse_header(line)\n")
    query = "for line in stream:\n    key, value = parse_header("
    local = query + "\nfor line in stream:\n    parse_header(line)\n"
    got = select([other, wanted, shown], query, local, 100, by_chars)
    assert [x.snippet for x in got] == [wanted]  # other shares no name; shown is in the window already
    assert got[0].tokens == by_chars(wanted)
    assert select([wanted], query, local, by_chars(wanted) - 1, by_chars) == []
    assert select([wanted], query, local, 0, by_chars) == []


def test_select_keeps_one_of_overlapping_ranges_and_puts_the_best_last() -> None:
    a = snip("a.py", 0, "def parse_header(line, key):\n    pass\n")
    overlapping = snip("a.py", 1, "    pass\ndef parse_header2(line):\n", "edited")
    b = snip("b.py", 0, "value = key\n")
    got = select([a, overlapping, b], "key, value = parse_header(line)", "", 100, by_chars)
    assert len({x.snippet.path for x in got}) == len(got) == 2
    assert [x.score for x in got] == sorted(x.score for x in got)


def test_a_place_keeps_its_choice_while_all_of_it_is_still_there() -> None:
    """A changed choice would recompute the whole prompt (the snippets open it): while typing at
    a place, and on a return to it, whose kept KV sequence starts with the old choice."""
    a = snip("a.py", 0, "    parse_header(line, key, value)\n", "edited")
    b = snip("b.py", 0, "    read_headers(stream, line)\n", "edited")
    budget = by_chars(a)  # one of them fits
    first = select([a, b], "key, value = parse_header(line)", "", budget, by_chars)
    assert [x.snippet for x in first] == [a]
    # The query moves to b (an edit made elsewhere, a name typed): a new place would take b,
    # this place keeps a.
    far = "read_headers(stream, line)"
    assert [x.snippet for x in select([a, b], far, "", budget, by_chars)] == [b]
    assert [x.snippet for x in select([a, b], far, "", budget, by_chars, first)] == [a]
    # A place that had none keeps none; a new place (None) chooses.
    assert select([a, b], far, "", 100, by_chars, []) == []
    assert b in [x.snippet for x in select([a, b], far, "", 100, by_chars, None)]
    # A snippet of the choice that changed: a fresh choice, the unchanged ones first in their old order.
    both = select([a, b], "parse_header(line) read_headers(stream)", "", 100, by_chars)
    a2 = snip("a.py", 0, "    parse_header(line, key, value, strict)\n", "edited")
    again = select([a2, b], "parse_header(line) read_headers(stream)", "", 100, by_chars, both)
    assert [x.snippet for x in again] == [b, a2]


def test_python_import_candidates() -> None:
    here = PurePosixPath("pkg/sub/mod.py")
    got = imports.python_candidates(here, ["from .helpers import parse_header, Frame as F",
                                           "from ..base import Thing", "import pkg.util, json",
                                           "from pkg.sub import sibling"])
    flat = [str(p) for tries in got for p in tries]
    assert "pkg/sub/helpers.py" in flat and "pkg/sub/helpers/__init__.py" in flat
    assert "pkg/base.py" in flat and "pkg/util.py" in flat and "src/pkg/util.py" in flat
    assert "json.py" in flat  # tried, found only if the workspace has one
    assert "pkg/sub/sibling.py" in flat  # a name imported from a package may be a module


def test_a_parenthesised_import_is_one_line_with_all_its_names() -> None:
    lines = ["from .errors import (\n", "    NotFound,\n", "    Gone as G,\n", ")\n", "x = 1\n", "import os\n"]
    got = imports.import_lines(lines, "python")
    assert got == ("from .errors import ( NotFound, Gone as G, )", "import os")
    flat = [str(p) for tries in imports.python_candidates(PurePosixPath("pkg/m.py"), got) for p in tries]
    assert "pkg/errors.py" in flat and "pkg/errors/NotFound.py" in flat and "pkg/errors/Gone.py" in flat


def test_the_header_is_the_files_own_imports_above_the_window() -> None:
    text = ("import os\nfrom .errors import (\n    NotFound,\n)\n\n\ndef f():\n    import json\n    return 1\n\n"
            "x = 2\nimport late\n")
    lines = text.splitlines(keepends=True)
    spans = imports.import_spans(lines, "python")
    assert spans == ((0, 0), (1, 3), (7, 7), (11, 11))
    assert imports.import_lines(lines, "python", spans) == imports.import_lines(lines, "python")

    def words(t: str) -> int:
        return len(t.split())

    # Top-level imports ending above the window's first line, as written; not one inside a function.
    assert imports.header(lines, spans, 11, 100, words) == "import os\nfrom .errors import (\n    NotFound,\n)\n"
    assert imports.header(lines, spans, 2, 100, words) == "import os\n"  # the window shows the rest
    assert imports.header(lines, spans, 11, 3, words) == "import os\n"  # the budget: whole statements only
    assert imports.header(lines, spans, 0, 100, words) == ""
    js = ["import { a } from './a';\n", "const b = require('b');\n", "// important\n", "f(a, b);\n"]
    assert imports.header(js, imports.import_spans(js, "typescript"), 3, 100, words) == "".join(js[:2])


def test_javascript_import_candidates() -> None:
    here = PurePosixPath("web/app/main.ts")
    got = imports.javascript_candidates(here, ["import { a } from './util';", "const b = require('../lib/b.js')",
                                               "import x from 'react'", "import '../../../outside'"])
    assert PurePosixPath("web/app/util.ts") in got[0] and PurePosixPath("web/app/util/index.js") in got[0]
    assert got[1][0] == PurePosixPath("web/lib/b.js")
    assert len(got) == 2  # a package name and a path out of the workspace are not followed
    assert imports.import_lines(["import a from './a'", "const x = 1", "import React from 'react'"],
                                "typescript") == ("import a from './a'",)


def test_budget_for_snippets_gives_way_first_when_the_context_is_short() -> None:
    s = Settings(prefix_tokens=1024, suffix_tokens=256, max_new_tokens=64, context_tokens=1024)
    assert fit_to_context(s, 4096) == (s, None)
    fitted, note = fit_to_context(s, 2048)
    assert note is None and fitted.prefix_tokens == 1024 and fitted.context_tokens == 2048 - 1024 - 256 - 64 - 16
    fitted, note = fit_to_context(s, 1024)
    assert note is not None and fitted.context_tokens == 0


# -- the workspace index -----------------------------------------------------------------------------------

def doc(path: Path, text: str, version: int = 1, language: str = "python") -> Document:
    return Document.from_text(path.as_uri(), text, version, language)


def test_workspace_finds_imported_open_and_edited_snippets(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text(HELPERS)
    other = doc(pkg / "other.py", "def other_function(a):\n    return a\n", language="python")
    notes = doc(pkg / "notes.md", "# parse_header\n", language="markdown")
    main = doc(pkg / "main.py", "from .helpers import parse_header\n\n\ndef run(line):\n    return \n")
    ws = Workspace(tmp_path)
    docs = {d.uri: d for d in (main, other, notes)}
    ws.edited(other.uri, 0)
    got = ws.candidates(main, (0, 5), docs)
    assert {(s.path, s.source) for s in got} == {("pkg/other.py", "open"), ("pkg/other.py", "edited"),
                                                 ("pkg/helpers.py", "imported")}  # the markdown is another language
    assert ws.relative(main.uri) == "pkg/main.py" and ws.name == tmp_path.name
    # A keystroke that leaves the import lines alone resolves nothing again.
    resolved = ws._imports[main.uri]
    main.apply_change("x", (4, 11), (4, 11))
    main.version = 2
    ws.candidates(main, (0, 5), docs)
    assert ws._imports[main.uri] is resolved
    # An imported file changed on disk is read again (its size changed).
    (pkg / "helpers.py").write_text(HELPERS + "\n\ndef new_helper():\n    pass\n")
    assert any("new_helper" in s.text for s in ws.candidates(main, (0, 5), docs))


def test_workspace_skips_huge_binary_and_unreadable_files_logging_each_once(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "big.py").write_text("x = 1\n" * (MAX_FILE_BYTES // 6 + 1))
    (tmp_path / "blob.py").write_bytes(b"\x00\x01binary")
    (tmp_path / "latin.py").write_bytes(b"caf\xe9 = 1\n")
    main = doc(tmp_path / "main.py", "import big\nimport blob\nimport latin\n\nx = \n")
    ws = Workspace(tmp_path)
    with caplog.at_level(logging.INFO, logger="codellama_lsp"):
        assert ws.candidates(main, (0, 4), {main.uri: main}) == []
        main.apply_change("import big\n", (0, 0), (0, 0))  # import lines changed: resolved again
        main.version = 2
        assert ws.candidates(main, (0, 5), {main.uri: main}) == []
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 3, skipped
    assert any("big.py" in m and "bytes" in m for m in skipped) and any("blob.py" in m and "NUL" in m for m in skipped)
    assert any("latin.py" in m and "UTF-8" in m for m in skipped)


# -- the prompt layouts ------------------------------------------------------------------------------------

CTX = RepoContext("shop", "shop/cart.py", "#", [snip("shop/items.py", 0, "class Item:\n    price = 0\n"),
                                                 snip("shop/tax.py", 3, "def vat(x):\n    return x * 0.2\n")])


def test_outline_keeps_definition_lines_and_one_file_is_one_block() -> None:
    from codellama_lsp.completion.repo_layout import by_file
    from codellama_lsp.completion.snippets import outline
    lines = HELPERS.splitlines(keepends=True)
    [o] = outline("pkg/helpers.py", lines)
    assert o.outline and o.text == ("def parse_header(line):\ndef read_headers(stream):\nclass Frame:\n"
                                    "    def __init__(self, payload, kind):\n")
    c1, c2 = chunks("pkg/helpers.py", lines)[1:]
    # An outline overlaps no range: both can be chosen.
    got = select([o, c2, c1], "parse_header read_headers Frame payload stream", "", 1000, by_chars)
    assert {x.snippet for x in got} == {o, c1, c2}
    other = snip("pkg/x.py", 0, "y = 1\n")
    assert by_file([c2, other, o, c1]) == [("pkg/helpers.py", o.text + c1.text + c2.text), ("pkg/x.py", "y = 1\n")]


def test_the_header_opens_the_prefix_of_a_window_cut_below_the_imports(tmp_path: Path, tokenizer_path: Path) -> None:
    from codellama_lsp.engine.tokenizer import Tokenizer
    tok = Tokenizer(tokenizer_path)
    template = detect(tok)
    body = "".join(f"def step_{i}(state):\n    return state + {i}\n\n\n" for i in range(40))
    main = doc(tmp_path / "main.py", "from .helpers import read_headers\nimport os\n\n\n" + body + "def run(s):\n    return ")
    ws = Workspace(tmp_path)
    cursor = main.cursor(len(main.lines) - 1, 11)
    count = TokenCounter(tok.encode)
    definition = snip("helpers.py", 0, 'def read_headers(stream):\n    """The headers of an HTTP message, as a dict,'
                                        ' up to the blank line."""\n    headers = {}\n    for line in stream:\n'
                                        '        key, value = line.split(":", 1)\n        headers[key] = value\n'
                                        '    return headers\n')
    cost = template.snippet_cost(count, "#")(definition)
    # The snippet takes the whole contextTokens: the header comes on top of it, not out of it.
    settings = resolve_format(Settings(prefix_tokens=64, suffix_tokens=16, context_tokens=cost), "psm")
    sources = Sources(ws.name, ws.relative(main.uri), lambda lines: [definition], None, ws.import_lines(main),
                      ws.import_spans(main))
    p = plan(main, cursor, settings, template, tok, count, None, sources)
    assert p.window.prefix_start > 1 and p.header == "from .helpers import read_headers\nimport os\n"
    assert [x.snippet for x in p.snippets] == [definition]
    assert not p.prefix.startswith("from")  # post-processing sees the window only
    context = RepoContext(ws.name, ws.relative(main.uri), "#", [definition], p.header)
    assert p.token_ids == template.prompt(tok, p.prefix, p.suffix, "psm", context)
    assert count(p.header) <= cost * HEADER_SHARE
    # A window that shows the imports gets no header; contextTokens 0 (no sources) none either.
    assert plan(main, cursor, replace(settings, prefix_tokens=4096), template, tok, count, None, sources).header == ""
    assert plan(main, cursor, settings, template, tok, count).header == ""


def test_comment_layout_for_families_without_repository_tokens(tokenizer_path: Path) -> None:
    from codellama_lsp.engine.tokenizer import Tokenizer
    tok = Tokenizer(tokenizer_path)
    template = detect(tok)
    assert template.repo_ids is None
    with_ctx = template.prompt(tok, "def total(cart):\n    ", "\n", "psm", CTX)
    text = "".join(commented(s.path, s.text, "#") for s in CTX.snippets)
    assert text.startswith("# Path: shop/items.py\n# class Item:\n#     price = 0\n\n# Path: shop/tax.py\n")
    assert with_ctx == template.prompt(tok, text + "def total(cart):\n    ", "\n", "psm")


def test_qwen_repository_layout_is_id_exact_with_the_documented_format(real_gguf: Path) -> None:
    """The Qwen2.5-Coder report's Figure 4 layout, written out as text and tokenized by llama.cpp with
    special tokens parsed, against the ids our template builds piece by piece."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from codellama_lsp.engine.gguf_tokenizer import load_gguf_tokenizer
    tok = load_gguf_tokenizer(real_gguf)
    template = detect(tok)
    assert template.family is QWEN_CODER and template.repo_ids == (tok.special_tokens["<|repo_name|>"],
                                                                  tok.special_tokens["<|file_sep|>"])
    prefix, suffix = "from .items import Item\n\ndef total(cart):\n    return sum(", ")\n"
    documented = ("<|repo_name|>shop\n"
                  "<|file_sep|>shop/items.py\nclass Item:\n    price = 0\n"
                  "<|file_sep|>shop/tax.py\ndef vat(x):\n    return x * 0.2\n"
                  "<|file_sep|>shop/cart.py\n"
                  f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>")
    llm = llama_cpp.Llama(model_path=str(real_gguf), vocab_only=True, verbose=False)
    try:
        want = llm.tokenize(documented.encode(), add_bos=False, special=True)
    finally:
        llm.close()
    assert template.prompt(tok, prefix, suffix, "psm", CTX) == want
    assert bind(QWEN_CODER, tok).prompt(tok, prefix, suffix, "psm", None) == want[want.index(151659):]


# -- over a real stdio LSP ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "helpers.py").write_text(HELPERS)
    return root


MAIN = "from .helpers import read_headers\n\n\ndef handle(stream):\n    headers = read_headers(stream)\n    return \n"


@pytest.fixture(scope="module")
def engine(endless_model_dir: Path) -> Engine:
    torch.set_num_threads(1)
    return Engine.load(endless_model_dir, device="cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(endless_model_dir: Path, workspace: Path, tmp_path_factory: pytest.TempPathFactory):
    c = await start(endless_model_dir, tmp_path_factory.mktemp("log") / "server.log", root=workspace,
                    options={"contextTokens": 256})
    assert (await c.wait_loaded())["state"] == "ready", c.log()
    yield c
    await stop(c)


def expected(engine: Engine, main: Document, ws: Workspace, line: int, col: int,
             prefix_tokens: int = 1024) -> tuple[str, tuple[Scored, ...]]:
    """What the server must answer, in process: the same plan with the same snippet sources."""
    settings = resolve_format(Settings(time_budget_ms=60000.0, max_new_tokens=8, context_tokens=256,
                                       prefix_tokens=prefix_tokens), engine.preferred_format)
    sources = Sources(ws.name, ws.relative(main.uri), lambda lines: ws.candidates(main, lines, {main.uri: main}), None,
                      ws.import_lines(main), ws.import_spans(main))
    p = plan(main, main.cursor(line, col), settings, detect(engine.tokenizer), engine.tokenizer,
             TokenCounter(engine.tokenizer.encode), None, sources, heal=settings.token_healing and engine.heals)
    return shown(engine.generate(generation_request(p, settings)), p), p.snippets


@over_lsp
async def test_imported_file_snippets_reach_the_prompt_and_the_status(client: Client, engine: Engine,
                                                                      workspace: Path) -> None:
    main_path = workspace / "pkg" / "main.py"
    uri = main_path.as_uri()
    client.open(uri, MAIN)
    got = await client.inline(uri, 5, 11)
    want, snippets = expected(engine, Document.from_text(uri, MAIN, 1, "python"), Workspace(workspace), 5, 11)
    assert snippets and {x.snippet.path for x in snippets} == {"pkg/helpers.py"}
    assert got == want
    context = (await client.status())["context"]
    assert context["root"] == str(workspace) and context["document"] == uri and context["context_tokens"] == 256
    assert [(s["path"], s["source"]) for s in context["snippets"]] == [("pkg/helpers.py", "imported")] * len(snippets)
    assert all(s["tokens"] > 0 and s["score"] > 0 for s in context["snippets"])


@over_lsp
async def test_the_files_imports_above_the_window_reach_the_prompt_and_the_status(client: Client, engine: Engine,
                                                                                  workspace: Path) -> None:
    path = workspace / "pkg" / "long.py"
    body = "".join(f"def step_{i}(state):\n    return state + {i}\n\n\n" for i in range(40))
    text = "from .helpers import read_headers\nimport os\n\n\n" + body + "def run(stream):\n    return "
    last = text.count("\n")
    client.open(path.as_uri(), text)
    await client.configure(prefixTokens=64)
    try:
        got = await client.inline(path.as_uri(), last, 11)
        context = (await client.status())["context"]
    finally:
        await client.configure(prefixTokens=1024)
    want, _ = expected(engine, Document.from_text(path.as_uri(), text, 1, "python"), Workspace(workspace), last, 11,
                       prefix_tokens=64)
    assert context["header_lines"] == 2 and context["document"] == path.as_uri()
    assert got == want


@over_lsp
async def test_snippets_stay_cached_while_typing(client: Client, workspace: Path) -> None:
    uri = (workspace / "pkg" / "typing.py").as_uri()
    text = MAIN
    client.open(uri, text)
    await client.inline(uri, 5, 11)
    first = (await client.status())["context"]["snippets"]
    reused = []
    for i, ch in enumerate("head"):
        client.change(uri, i + 2, ch, (5, 11 + i), (5, 11 + i))
        await client.inline(uri, 5, 12 + i)
        await asyncio.sleep(0.05)
        reused.append([int(n) for n in re.findall(r" (\d+)/(\d+) tokens reused", client.log())[-1]])
    def where(snippets: list[dict]) -> list[tuple[str, list[int]]]:
        return [(s["path"], s["lines"]) for s in snippets]

    assert where((await client.status())["context"]["snippets"]) == where(first)
    # Each keystroke reuses the snippets and the prefix up to the cursor: only a few tokens are computed.
    assert all(total - n <= 8 for n, total in reused), reused
    assert all(n > sum(s["tokens"] for s in first) for n, _ in reused)


@over_lsp
async def test_context_tokens_zero_turns_the_snippets_off(client: Client, workspace: Path) -> None:
    uri = (workspace / "pkg" / "off.py").as_uri()
    client.open(uri, MAIN)
    await client.configure(contextTokens=0)
    try:
        await client.inline(uri, 5, 11)
        context = (await client.status())["context"]
        assert context["snippets"] == [] and context["context_tokens"] == 0
    finally:
        await client.configure(contextTokens=256)


@over_lsp
async def test_a_bad_context_tokens_value_is_refused_with_a_message(client: Client) -> None:
    await client.configure(contextTokens=-5)
    assert any("contextTokens" in m.message for m in client.messages)
    assert (await client.status())["settings"]["context_tokens"] == 256
