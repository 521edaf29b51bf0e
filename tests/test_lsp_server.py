"""The real ``codellama-lsp --stdio`` subprocess, driven by pygls' LanguageClient.

One server (on a tiny random model that never emits EOS/EOT, so requests run until
stopped) serves most tests; tests that need their own process start one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
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
    return Engine.load(model_dir, device="cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    c = await start(model_dir, tmp_path_factory.mktemp("log") / "server.log")
    status = await c.wait_loaded()
    assert status["state"] == "ready", c.log()
    yield c
    await stop(c)


def expected(engine: Engine, text: str, line: int, index: int, settings: Settings = Settings()) -> str:
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
    want = expected(engine, text, 10, 13, Settings(max_new_tokens=16))
    assert got == want
    assert want, "the random model's suggestion here is not empty"
    await client.configure(maxNewTokens=64)
