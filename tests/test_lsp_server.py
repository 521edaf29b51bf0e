"""The real ``codellama-lsp --stdio`` subprocess, driven by pygls' LanguageClient.

One server (on a tiny random model that never emits EOS/EOT, so requests run until
stopped) serves most tests; tests that need their own process start one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import pytest_asyncio
from lsprotocol import types

from codellama_lsp.completion import docstring as ds
from codellama_lsp.completion.definitions import find_definition
from codellama_lsp.completion.planning import generation_request, plan, shown
from codellama_lsp.completion.families import detect
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.documents import Document
from codellama_lsp.engine.engine import Engine
from codellama_lsp.settings import Settings, resolve_format
from codellama_lsp.devtools.lsp_client import Client, stop
from lsp_harness import start

pytestmark = pytest.mark.asyncio(loop_scope="module")

SOURCE = '''import os


def read_config(path):
    with open(path) as f:
        return f.read()


def add(a, b):
    return a + b


class Greeter:
    def greet(self, name):
        return "hello " + name
'''


@pytest.fixture(scope="module")
def model_dir(endless_model_dir: Path) -> Path:
    return endless_model_dir


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    torch.set_num_threads(1)
    return Engine.load(model_dir, device="cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    c = await start(model_dir, tmp_path_factory.mktemp("log") / "server.log")
    status = await c.wait_loaded()
    assert status["state"] == "ready", c.log()
    yield c
    await stop(c)


SETTINGS = Settings(time_budget_ms=60000.0, max_new_tokens=8)


def expected(engine: Engine, text: str, line: int, index: int, settings: Settings = SETTINGS) -> str:
    """What the server must answer: the same context, prompt builder, engine and post-processing, in-process."""
    doc = Document.from_text("file:///expected.py", text)
    settings = resolve_format(settings, engine.preferred_format)  # as the server resolves "auto"
    p = plan(doc, doc.cursor(line, index), settings, detect(engine.tokenizer), engine.tokenizer, TokenCounter(engine.tokenizer.encode),
             heal=settings.token_healing and engine.heals)
    return shown(engine.generate(generation_request(p, settings)), p)


async def test_initialize_capabilities(client: Client) -> None:
    caps = client.result.capabilities
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    sync = caps.text_document_sync
    assert sync.change == types.TextDocumentSyncKind.Incremental and sync.open_close
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.hover_provider
    assert caps.code_action_provider.resolve_provider
    assert "codellama.status" in caps.execute_command_provider.commands
    assert client.result.server_info.name == "codellama-lsp"


async def test_model_loaded_with_progress_and_log(client: Client) -> None:
    kinds = [p.value.get("kind") if isinstance(p.value, dict) else getattr(p.value, "kind", None) for p in client.progress]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert "model ready" in client.log()


async def test_inline_completion_is_the_engine_text(client: Client, engine: Engine) -> None:
    uri = "file:///inline.py"
    client.open(uri, SOURCE)
    # Type "    return a * b" as a new body line of add(): an incremental edit, then complete.
    client.change(uri, 2, "\n    result = ", (9, 16), (9, 16))
    text = SOURCE.replace("return a + b\n", "return a + b\n    result = \n", 1)
    await client.configure(maxNewTokens=16)
    got = await client.inline(uri, 10, 13)
    want = expected(engine, text, 10, 13, Settings(max_new_tokens=16, time_budget_ms=60000.0))
    assert got == want
    assert want, "the random model's suggestion here is not empty"
    await client.configure(maxNewTokens=8)


async def test_completion_is_the_same_suggestion_as_one_item(client: Client) -> None:
    uri = "file:///completion.py"
    client.open(uri, SOURCE + "\n")
    shared = (await client.status())["shared_requests"]
    # Sent together, as editors with both providers do: one computation answers both. A sampled
    # generation (no drafts) on an empty top-level line is still running when the second arrives.
    await client.configure(maxNewTokens=64, temperature=1.0)
    try:
        inline, result = await asyncio.gather(client.inline(uri, 16, 0), client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(16, 0))))
    finally:
        await client.configure(maxNewTokens=8, temperature=0.0)
    assert inline
    assert result.is_incomplete
    assert [i.text_edit.new_text for i in result.items] == [inline]
    assert (await client.status())["shared_requests"] == shared + 1


async def test_single_line_mid_line_and_multi_line_at_end(client: Client, engine: Engine) -> None:
    uri = "file:///modes.py"
    client.open(uri, SOURCE)
    single = await client.inline(uri, 9, 11)
    assert single == expected(engine, SOURCE, 9, 11) and "\n" not in single
    multi = await client.inline(uri, 9, 16)
    assert multi == expected(engine, SOURCE, 9, 16)


async def test_min_confidence_hides_what_the_model_guessed(client: Client, engine: Engine) -> None:
    """A random model is never sure: at ``minConfidence`` 1 its suggestion is hidden (and counted), and
    a return to that place in the same text is answered by the kept nothing, not computed again; back
    at 0 the same place shows it, computed again under the new setting."""
    uri = "file:///unsure.py"
    client.open(uri, SOURCE)
    want = expected(engine, SOURCE, 9, 16)
    assert want, "the random model's suggestion here is not empty"
    before = (await client.status())["requests"]
    await client.configure(minConfidence=1.0)
    try:
        assert await client.inline(uri, 9, 16) == ""
        assert (await client.status())["requests"]["unsure"] == before.get("unsure", 0) + 1
        await client.inline(uri, 3, 4)  # another place
        assert await client.inline(uri, 9, 16) == ""  # back
        assert (await client.status())["requests"]["revisited"] == before.get("revisited", 0) + 1
    finally:
        await client.configure(minConfidence=0.0)
    assert await client.inline(uri, 9, 16) == want


async def test_new_settings_are_not_answered_from_remembered_suggestions(client: Client, engine: Engine) -> None:
    uri = "file:///resettings.py"
    client.open(uri, SOURCE)
    longer = await client.inline(uri, 9, 16)
    await client.configure(maxNewTokens=2)
    try:
        shorter = await client.inline(uri, 9, 16)  # the same place in the same text, under new settings
    finally:
        await client.configure(maxNewTokens=8)
    assert shorter == expected(engine, SOURCE, 9, 16, Settings(max_new_tokens=2, time_budget_ms=60000.0))
    assert shorter != longer


# A long generation: sampled, because greedy decoding of a random model soon loops, and
# suggestions stop at a loop. The seed is fixed, so it is the same every time.
LONG = {"maxNewTokens": 1024, "temperature": 1.0}


def first_char(engine: Engine, text: str, line: int, index: int) -> str:
    """The first character the model writes at a place (raw, before post-processing)."""
    doc = Document.from_text("file:///first.py", text)
    p = plan(doc, doc.cursor(line, index), resolve_format(SETTINGS, engine.preferred_format), detect(engine.tokenizer), engine.tokenizer,
             TokenCounter(engine.tokenizer.encode), heal=SETTINGS.token_healing and engine.heals)
    return engine.generate(generation_request(p, Settings(max_new_tokens=2, temperature=LONG["temperature"]))).text[:1]


async def test_supersede_cancels_the_older_request(client: Client, engine: Engine) -> None:
    uri = "file:///supersede.py"
    client.open(uri, SOURCE + "\n")
    typed = "y" if first_char(engine, SOURCE + "\n", 16, 0) == "x" else "x"  # not what the model writes
    await client.configure(**LONG)
    before = await client.status()
    try:
        first = asyncio.ensure_future(client.inline(uri, 16, 0))  # an empty top-level line: nothing ends the block
        await client.wait_writing(uri)
        await client.configure(maxNewTokens=4)  # for the second request; the first keeps its 1024
        client.change(uri, 2, typed, (16, 0), (16, 0))  # a keystroke: the next request is for a new place
        second = asyncio.ensure_future(client.inline(uri, 16, 1))
        assert await first == ""
        await second
        status = await client.status()
        assert status["requests"]["superseded"] == before["requests"].get("superseded", 0) + 1
        # The first generation stopped when superseded, not after its 1024 tokens (the second wrote at most 4).
        assert status["generated_tokens"] - before["generated_tokens"] < 1024
    finally:
        await client.configure(maxNewTokens=8, temperature=0.0)


async def test_cancel_request_stops_the_engine(client: Client) -> None:
    uri = "file:///cancel.py"
    client.open(uri, SOURCE + "\n")
    await client.configure(**LONG)
    before = await client.status()
    try:
        msg_id, future = client.request(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(16, 0),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
        await client.wait_writing(uri)
        client.cancel_request(types.CancelParams(id=msg_id))
        with pytest.raises(Exception) as error:
            await future
        assert getattr(error.value, "code", None) == -32800  # RequestCancelled
        # The engine stopped the cancelled generation: a short request on another document (the
        # engine runs one at a time) is answered with fewer than 1024 tokens generated in all.
        await client.configure(maxNewTokens=4)
        other = "file:///cancel-other.py"
        client.open(other, SOURCE)
        await client.inline(other, 9, 11)
        status = await client.status()
        assert status["requests"]["cancelled"] == before["requests"].get("cancelled", 0) + 1
        assert status["generated_tokens"] - before["generated_tokens"] < 1024
    finally:
        await client.configure(maxNewTokens=8, temperature=0.0)


async def test_typed_through_reuses_the_suggestion(client: Client) -> None:
    uri = "file:///typed.py"
    client.open(uri, SOURCE)
    shown = await client.inline(uri, 9, 11)
    assert len(shown) >= 2
    hits = (await client.status())["typed_through_hits"]
    typed = shown[0]
    client.change(uri, 2, typed, (9, 11), (9, 11))
    rest = await client.inline(uri, 9, 11 + len(typed.encode("utf-16-le")) // 2)
    assert rest == shown[1:]
    assert (await client.status())["typed_through_hits"] == hits + 1


async def test_a_keystroke_matching_the_running_generation_waits_for_it(client: Client, engine: Engine) -> None:
    uri = "file:///ahead.py"
    text = SOURCE + "\n"
    # Plain text: the random model's 1024 tokens break Python's parse at every cut, so in a Python
    # document the grammar would drop the suggestion this test follows (syntax.trim_to_syntax).
    client.open(uri, text, language_id="plaintext")
    first = first_char(engine, text, 16, 0)
    assert first.strip(), "the model starts this suggestion with a visible character"
    await client.configure(**LONG)
    try:
        before = (await client.status())["requests"]
        shown = asyncio.ensure_future(client.inline(uri, 16, 0))
        await client.wait_writing(uri)  # the model has written its first characters, not all 1024 tokens
        client.change(uri, 2, first, (16, 0), (16, 0))
        rest = await client.inline(uri, 16, len(first.encode("utf-16-le")) // 2)
        after = (await client.status())["requests"]
        assert after.get("typed_ahead", 0) == before.get("typed_ahead", 0) + 1
        assert after.get("superseded", 0) == before.get("superseded", 0)
        assert (first + rest) == await shown
    finally:
        await client.configure(maxNewTokens=8, temperature=0.0)


async def _settled(client: Client, uri: str) -> dict:
    """The status once no computation for ``uri`` runs (a prefetch has finished)."""
    for _ in range(2000):
        status = await client.status()
        if uri not in status["in_flight"]:
            return status
        await asyncio.sleep(0.005)
    raise TimeoutError(f"a computation for {uri} is still running")


async def test_accepting_a_suggestion_gets_the_next_one_prefetched(client: Client, engine: Engine) -> None:
    """While a suggestion is shown, the one at its end is computed in the document it makes:
    accepting it (the editor inserts the text) gets that one at once, the same as computed there."""
    uri = "file:///prefetch.py"
    client.open(uri, SOURCE)
    client.change(uri, 2, "\n    result = ", (9, 16), (9, 16))
    text = SOURCE.replace("return a + b\n", "return a + b\n    result = \n", 1)
    shown = await client.inline(uri, 10, 13)
    assert shown
    before = await _settled(client, uri)
    accepted, end = Document.from_text(uri, text).inserted(Document.from_text(uri, text).cursor(10, 13), shown)
    client.change(uri, 3, shown, (10, 13), (10, 13))
    column = len(accepted.line_text(end.line)[: end.index].encode("utf-16-le")) // 2
    got = await client.inline(uri, end.line, column)
    after = (await client.status())["requests"]
    assert after.get("prefetched", 0) == before["requests"].get("prefetched", 0) + 1
    assert got == expected(engine, accepted.text, end.line, end.index)
    # Typing something else there instead is computed afresh, not answered from the prefetch.
    client.change(uri, 4, "z", (end.line, column), (end.line, column))
    await client.inline(uri, end.line, column + 1)
    assert (await client.status())["requests"].get("prefetched", 0) == after["prefetched"]


async def test_a_resting_cursor_warms_its_place(client: Client, engine: Engine) -> None:
    """codellama/cursorRest computes the suggestion where the cursor rests; asking there gets it at once."""
    uri = "file:///warm.py"
    client.open(uri, SOURCE)
    before = (await client.status())["requests"]
    client.protocol.notify("codellama/cursorRest", {"textDocument": {"uri": uri}, "position": {"line": 9, "character": 8}})
    settled = await _settled(client, uri)
    assert settled["requests"].get("warm_up", 0) == before.get("warm_up", 0) + 1
    got = await client.inline(uri, 9, 8)
    assert (await client.status())["requests"].get("prefetched", 0) == before.get("prefetched", 0) + 1
    assert got == expected(engine, SOURCE, 9, 8)
    # A malformed rest notification is logged and ignored; the server goes on answering.
    client.protocol.notify("codellama/cursorRest", {"textDocument": {"uri": uri}})
    assert (await client.status())["state"] == "ready"


async def test_prefetch_off_computes_nothing_ahead(client: Client) -> None:
    uri = "file:///no-prefetch.py"
    client.open(uri, SOURCE)
    await client.configure(prefetch=False)
    try:
        before = (await client.status())["prefetches"]
        assert await client.inline(uri, 9, 11)
        assert (await _settled(client, uri))["prefetches"] == before
    finally:
        await client.configure(prefetch=True)


UNICODE = 'greeting = "😀 こんにちは 世界 😀" + name\nlabel = "日本語"\n'


async def test_emoji_and_cjk_positions(client: Client, engine: Engine) -> None:
    uri = "file:///unicode.py"
    client.open(uri, UNICODE)
    line = UNICODE.split("\n")[0]
    index = line.index("世")  # mid-line, after an emoji (2 UTF-16 units) and CJK (1 unit each)
    units = len(line[:index].encode("utf-16-le")) // 2
    assert units == index + 1
    assert await client.inline(uri, 0, units) == expected(engine, UNICODE, 0, index)
    # An edit addressed in UTF-16 units right after the emoji lands after it.
    after_emoji = len('greeting = "😀'.encode("utf-16-le")) // 2
    client.change(uri, 2, "🎉", (0, after_emoji), (0, after_emoji))
    text = UNICODE.replace("😀", "😀🎉", 1)
    index = text.split("\n")[0].index("世")
    assert await client.inline(uri, 0, index + 2) == expected(engine, text, 0, index)


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
async def test_crlf_and_cr_line_endings(client: Client, engine: Engine, ending: str) -> None:
    uri = f"file:///endings{len(ending)}.py"
    text = SOURCE.replace("\n", ending)
    client.open(uri, text)
    assert await client.inline(uri, 9, 11) == expected(engine, text, 9, 11)
    # Replace "a + b" on line 9 through an edit that spans into the next line's terminator.
    client.change(uri, 2, "a - b" + ending, (9, 11), (10, 0))
    text = text.replace("a + b" + ending, "a - b" + ending, 1)
    assert await client.inline(uri, 9, 16) == expected(engine, text, 9, 16)
    multi = await client.inline(uri, 9, 16)
    if "\n" in multi or "\r" in multi:
        assert multi.replace(ending, "").count("\n") == 0 and multi.replace(ending, "").count("\r") == 0


def expected_docstring(engine: Engine, text: str, line: int, language_id: str = "python") -> str:
    from codellama_lsp.generation import GenerationRequest
    from codellama_lsp.completion.templates import infilling_tokens
    from codellama_lsp.completion.docstring import MAX_TOKENS as DOCSTRING_MAX_TOKENS

    doc = Document.from_text("file:///expected", text, language_id=language_id)
    d = find_definition(doc, line)
    p = ds.sides(doc, d, SETTINGS.prefix_tokens, SETTINGS.suffix_tokens, TokenCounter(engine.tokenizer.encode))
    fmt = resolve_format(SETTINGS, engine.preferred_format).format
    result = engine.generate(GenerationRequest(prompt=infilling_tokens(engine.tokenizer, p.prefix, p.suffix, fmt),
                                               max_new_tokens=DOCSTRING_MAX_TOKENS, stop_strings=p.stop))
    return ds.clean(result.text, d.style)


def position(line: int, character: int = 0) -> types.Position:
    return types.Position(line=line, character=character)


async def test_hover_on_a_definition_is_a_generated_docstring(client: Client, engine: Engine) -> None:
    uri = "file:///hover.py"
    client.open(uri, SOURCE)
    doc_id = types.TextDocumentIdentifier(uri=uri)
    hover = await client.text_document_hover_async(types.HoverParams(text_document=doc_id, position=position(8, 5)))
    assert hover.contents.kind == types.MarkupKind.Markdown
    want = expected_docstring(engine, SOURCE, 8)
    assert hover.contents.value.startswith("**`add`**") and want
    assert hover.contents.value.endswith(ds.escape_markdown(want))
    # Not on a definition: no hover.
    assert await client.text_document_hover_async(types.HoverParams(text_document=doc_id, position=position(9, 6))) is None


async def test_code_action_inserts_a_python_docstring_under_the_signature(client: Client) -> None:
    uri = "file:///action.py"
    client.open(uri, SOURCE)
    doc_id = types.TextDocumentIdentifier(uri=uri)
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=doc_id, range=types.Range(start=position(13, 8), end=position(13, 8)),
        context=types.CodeActionContext(diagnostics=[])))
    assert [a.title for a in actions] == ["Generate docstring"]
    resolved = await client.code_action_resolve_async(actions[0])
    (edit,) = resolved.edit.changes[uri]
    assert edit.range.start == edit.range.end == position(14, 0)  # under "    def greet(self, name):"
    assert edit.new_text.startswith('        """') and edit.new_text.endswith('"""\n')
    # A documented definition offers no action.
    documented = SOURCE.replace("    def greet(self, name):\n", '    def greet(self, name):\n        """Hi."""\n')
    client.open("file:///documented.py", documented)
    assert not await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri="file:///documented.py"),
        range=types.Range(start=position(13, 8), end=position(13, 8)),
        context=types.CodeActionContext(diagnostics=[])))


async def test_code_action_inserts_a_block_comment_above_a_javascript_function(client: Client) -> None:
    uri = "file:///action.js"
    client.open(uri, "const x = 1;\n\nexport function area(w, h) {\n  return w * h;\n}\n", language_id="javascript")
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=types.Range(start=position(2, 20), end=position(2, 20)),
        context=types.CodeActionContext(diagnostics=[])))
    resolved = await client.code_action_resolve_async(actions[0])
    (edit,) = resolved.edit.changes[uri]
    assert edit.range.start == position(2, 0)
    assert edit.new_text.startswith("/**\n") and edit.new_text.endswith(" */\n")
    assert all(line.startswith(" *") for line in edit.new_text.split("\n")[1:-1])


async def test_status_reports_the_model_and_the_counters(client: Client, model_dir: Path) -> None:
    status = await client.status()
    assert status["model"] == str(model_dir) and status["state"] == "ready"
    assert status["device"] == "cpu" and status["dtype"] == "float32"
    assert status["requests"]["completion"] >= 1
    assert status["latency_p50_ms"] is not None and status["latency_p95_ms"] >= status["latency_p50_ms"]
    assert 0 <= status["kv_reuse_ratio"] <= 1
    assert "typed_through_hits" in status


# -- bad input: each gets an empty result or a JSON-RPC error, and the server stays up ------------------

async def test_unknown_document(client: Client) -> None:
    assert await client.inline("file:///never-opened.py", 0, 0) == ""
    assert "not open: file:///never-opened.py" in client.log()


async def test_position_past_the_end(client: Client) -> None:
    uri = "file:///short.py"
    client.open(uri, "x = 1\n")
    assert await client.inline(uri, 1000, 0) == ""
    assert "past the end" in client.log()
    # A column past the end of a line clamps to the line's end, as the LSP says.
    assert await client.inline(uri, 0, 1000) == await client.inline(uri, 0, 5)


@pytest.mark.parametrize("params", [
    {"textDocument": 5, "position": {"line": 0, "character": 0}},
    {"textDocument": {"uri": "file:///x.py"}},
    {"textDocument": {"uri": "file:///x.py"}, "position": {"line": "zero", "character": None}},
    None,
])
async def test_malformed_params_get_an_invalid_params_error(client: Client, params: object) -> None:
    with pytest.raises(Exception) as error:
        await asyncio.wait_for(client.raw_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params), 10)
    assert getattr(error.value, "code", None) == -32602
    assert (await client.status())["state"] == "ready"


async def test_unknown_method_gets_method_not_found(client: Client) -> None:
    with pytest.raises(Exception) as error:
        await asyncio.wait_for(client.raw_request("codellama/nonsense", {}), 10)
    assert getattr(error.value, "code", None) == -32601


async def test_ten_megabyte_document(client: Client) -> None:
    uri = "file:///big.py"
    line = "value = compute(alpha, beta) + 1  # a line of a very large generated file\n"
    text = line * (10 * 1024 * 1024 // len(line))
    client.open(uri, text)
    lines = text.count("\n")
    # Each answer comes (the waits are no-hang bounds; speed is benchmarks/keystrokes.py's job).
    middle = await asyncio.wait_for(client.inline(uri, lines // 2, 8), 60)
    client.change(uri, 2, "x", (lines // 2, 8), (lines // 2, 8))
    typed = await asyncio.wait_for(client.inline(uri, lines // 2, 9), 60)
    end = await asyncio.wait_for(client.inline(uri, lines, 0), 60)
    assert isinstance(middle, str) and isinstance(typed, str) and isinstance(end, str)
    status = await client.status()
    assert status["state"] == "ready"


async def test_binary_content(client: Client) -> None:
    uri = "file:///blob.bin"
    client.open(uri, "\x00\x01\x02\xff\ufffe\udc80\ud800 PNG\x1a\n\x00\x00\x7f" * 100 + "\n", language_id="")
    assert isinstance(await client.inline(uri, 0, 10), str)
    assert isinstance(await client.inline(uri, 1, 0), str)
    assert await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position(0, 3))) is None


async def test_invalid_setting_is_reported_and_ignored(client: Client) -> None:
    before = (await client.status())["settings"]
    await client.configure(maxNewTokens="lots", format="fim", temperature=-1, bogus=1)
    message = client.messages[-1]
    assert message.type == types.MessageType.Warning
    for part in ("codellama.maxNewTokens", "'lots'", "codellama.format", "psm, spm", "codellama.temperature",
                 "unknown setting codellama.bogus"):
        assert part in message.message
    assert (await client.status())["settings"] == before


async def test_request_flood(client: Client) -> None:
    uri = "file:///flood.py"
    client.open(uri, SOURCE)
    requests = [client.inline(uri, 9, 11) for _ in range(100)]
    requests += [client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position(8, 5))) for _ in range(20)]
    results = await asyncio.wait_for(asyncio.gather(*requests), 60)
    answers = results[:100]
    assert answers[-1]  # the newest completion is answered
    assert all(a in ("", answers[-1]) for a in answers)
    assert (await client.status())["state"] == "ready"


async def test_position_encoding_is_negotiated(client: Client, model_dir: Path, tmp_path: Path) -> None:
    offers = {"utf-8": ["utf-8", "utf-16"], "utf-32": ["latin-1", "utf-32"]}
    others = await asyncio.gather(*(start(model_dir, tmp_path / f"{name}.log", encodings=offer)
                                    for name, offer in offers.items()))
    try:
        assert [o.result.capabilities.position_encoding for o in others] == list(offers)
        line = 'name = "😀 日本語 😀" + suffix'
        text = f"{line}\n" * 3
        index = line.index("日")
        client.open("file:///enc.py", text)
        want = await client.inline("file:///enc.py", 1, len(line[:index].encode("utf-16-le")) // 2)
        for other, (codec, width) in zip(others, [("utf-8", 1), ("utf-32-le", 4)]):
            await other.wait_loaded()
            other.open("file:///enc.py", text)
            # The same place, addressed in this server's encoding, gets the same suggestion.
            assert await other.inline("file:///enc.py", 1, len(line[:index].encode(codec)) // width) == want
    finally:
        await asyncio.gather(*map(stop, others))
