"""The real ``codellama-lsp --stdio`` subprocess, driven by pygls' LanguageClient.

One server (on a tiny random model that never emits EOS/EOT, so requests run until
stopped) serves most tests; tests that need their own process start one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
import pytest_asyncio
from lsprotocol import types

from codellama_lsp.completion import generation_request, plan, suggestion
from codellama_lsp.context import TokenCounter
from codellama_lsp.documents import Document
from codellama_lsp.engine import Engine
from codellama_lsp.settings import Settings
from lsp_harness import Client, endless_copy, start, stop

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
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return endless_copy(tiny_model_dir, tmp_path_factory.mktemp("endless"))


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
    p = plan(doc, doc.cursor(line, index), settings, engine.tokenizer, TokenCounter(engine.tokenizer.encode))
    return suggestion(engine.generate(generation_request(p, settings)).text, p)


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
    client.open(uri, SOURCE)
    inline = await client.inline(uri, 9, 11)  # mid-line: "    return |a + b"
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(9, 11)))
    assert inline
    assert result.is_incomplete
    assert [i.text_edit.new_text for i in result.items] == [inline]


async def test_single_line_mid_line_and_multi_line_at_end(client: Client, engine: Engine) -> None:
    uri = "file:///modes.py"
    client.open(uri, SOURCE)
    single = await client.inline(uri, 9, 11)
    assert single == expected(engine, SOURCE, 9, 11) and "\n" not in single
    multi = await client.inline(uri, 9, 16)
    assert multi == expected(engine, SOURCE, 9, 16)


async def test_supersede_cancels_the_older_request(client: Client) -> None:
    uri = "file:///supersede.py"
    client.open(uri, SOURCE + "\n")
    await client.configure(maxNewTokens=1024, timeBudgetMs=60000)
    before = (await client.status())["requests"].get("superseded", 0)
    try:
        t0 = time.perf_counter()
        first = asyncio.ensure_future(client.inline(uri, 16, 0))  # an empty top-level line: nothing ends the block
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(client.inline(uri, 16, 0))
        assert await first == ""
        superseded_after = time.perf_counter() - t0
        await client.configure(maxNewTokens=4)
        await second
        status = await client.status()
        assert status["requests"]["superseded"] == before + 1
        # The first request stopped when superseded, not after its 1024 tokens.
        assert superseded_after < 0.2 + 1.0
    finally:
        await client.configure(maxNewTokens=8)


async def test_cancel_request_stops_the_engine(client: Client) -> None:
    uri = "file:///cancel.py"
    client.open(uri, SOURCE + "\n")
    await client.configure(maxNewTokens=1024, timeBudgetMs=60000)
    try:
        msg_id, future = client.request(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(16, 0),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
        await asyncio.sleep(0.2)
        client.cancel_request(types.CancelParams(id=msg_id))
        t0 = time.perf_counter()
        with pytest.raises(Exception) as error:
            await future
        assert getattr(error.value, "code", None) == -32800  # RequestCancelled
        # The engine is free again at once: a short request on another document is answered quickly.
        await client.configure(maxNewTokens=4)
        other = "file:///cancel-other.py"
        client.open(other, SOURCE)
        await client.inline(other, 9, 11)
        assert time.perf_counter() - t0 < 1.0
        assert (await client.status())["requests"]["cancelled"] >= 1
    finally:
        await client.configure(maxNewTokens=8)


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
