"""The real integration: ``codellama-lsp --stdio`` with the OpenAI backend, against llama-cpp-python's server.

The server serves the exported bundled model (random weights with the bundled tokenizer
until the model has been trained) on 127.0.0.1, behind an API key. The LSP's answers
must equal the local engine's on the same weights: same prompt, greedy decoding, same
post-processing. Cancellation and the server going away end requests at once, with a
log line and an empty result.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from lsprotocol import types

from codellama_lsp.completion.planning import generation_request, plan, shown

from codellama_lsp.completion.families import detect
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.documents import Document
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.gguf_export import export_gguf
from codellama_lsp.settings import Settings, resolve_format
from codellama_lsp.devtools.llamacpp_server import LlamaCppServer
from codellama_lsp.devtools.lsp_client import Client, stop
from llamacpp_support import llamacpp_model_dir
from lsp_harness import TEST_SETTINGS, start

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY_ENV = "CODELLAMA_LSP_TEST_LLAMACPP_KEY"
KEY = "sk-llamacpp-test-5e1f"
URI = "file:///config.py"
SOURCE = '''import json
import os


def read_config(path):
    with open(path) as f:
        return json.load(f)


def write_config(path, config):
    with open(path, "w") as f:
        json.dump(config, f)


def main():
    config = read_config(os.environ["CONFIG"])
    print(config)
'''
# A served model declares no preferred format, so the server's "auto" is PSM.
SETTINGS = resolve_format(Settings(time_budget_ms=float(TEST_SETTINGS["timeBudgetMs"]),
                                   max_new_tokens=TEST_SETTINGS["maxNewTokens"]), None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llamacpp_model_dir(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    scratch = tmp_path_factory.mktemp("llamacpp")
    s = LlamaCppServer(export_gguf(model_dir, scratch / "model.gguf"), scratch / "llama-server.log", api_key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    torch.set_num_threads(1)
    return Engine.load(model_dir, device="cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(model_dir: Path, server: LlamaCppServer, tmp_path_factory: pytest.TempPathFactory):
    os.environ[KEY_ENV] = KEY  # the LSP process inherits it; the key itself is in no setting
    c = await start(model_dir, tmp_path_factory.mktemp("lsp") / "server.log",
                    options={"backend": "openai", "url": server.url + "/v1", "apiKeyEnv": KEY_ENV})
    status = await c.wait_loaded()
    assert status["state"] == "ready", c.log()
    yield c
    await stop(c)
    del os.environ[KEY_ENV]


def expected(engine: Engine, text: str, line: int, character: int) -> str:
    doc = Document.from_text("file:///expected.py", text)
    p = plan(doc, doc.cursor(line, character), SETTINGS, detect(engine.tokenizer), engine.tokenizer, TokenCounter(engine.tokenizer.encode))
    return shown(engine.generate(generation_request(p, SETTINGS)), p)


def insert(text: str, line: int, character: int, typed: str) -> str:
    lines = text.split("\n")
    lines[line] = lines[line][:character] + typed + lines[line][character:]
    return "\n".join(lines)


def inline_params(line: int, character: int, uri: str = URI) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))


async def test_open_change_and_complete_like_the_local_engine(client: Client, engine: Engine) -> None:
    client.open(URI, SOURCE)
    # Multi-line at the end of a line (streamed, stopped at the block's end), then single-line inside one.
    for line, character in ((5, 25), (15, 10)):
        assert await client.inline(URI, line, character) == expected(engine, SOURCE, line, character)
    # A new line in main(), then "re" typed one keystroke (one didChange) at a time, completing after each.
    text, shown = SOURCE, ""
    for version, (typed, (line, character)) in enumerate((("\n    ", (16, 17)), ("r", (17, 4)), ("e", (17, 5))), 2):
        client.change(URI, version, typed, (line, character), (line, character))
        text = insert(text, line, character, typed)
        cursor = (17, 4) if typed.startswith("\n") else (17, character + 1)
        # Typing the shown suggestion's first character keeps the rest of it (typed-through), else a new one.
        typed_through = shown[1:] if len(shown) > 1 and shown.startswith(typed) else None
        shown = await client.inline(URI, *cursor)
        assert shown == (typed_through if typed_through is not None else expected(engine, text, *cursor))
    status = await client.status()
    assert status["requests"].get("failed", 0) == 0, client.log()
    assert KEY not in client.log()


async def test_cancel_request_while_the_server_is_busy(client: Client, server: LlamaCppServer) -> None:
    server.pause()  # the request waits on the server
    try:
        msg_id, future = client.request(types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(10, 27))
        await asyncio.sleep(0.3)
        client.cancel_request(types.CancelParams(id=msg_id))
        with pytest.raises(Exception) as error:
            await asyncio.wait_for(future, 5)
        assert getattr(error.value, "code", None) == -32800  # RequestCancelled
    finally:
        server.resume()
    assert isinstance(await client.inline(URI, 10, 27), str)  # and the next request is served
    assert (await client.status())["requests"]["cancelled"] >= 1


async def test_server_going_away_mid_request(client: Client, server: LlamaCppServer) -> None:
    # A document no suggestion was asked in: an answer known for a place in unchanged text would
    # come from the server's memory, without a request to the inference server.
    fresh = "file:///other.py"
    client.open(fresh, SOURCE)
    server.pause()
    msg_id, future = client.request(types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(10, 27, fresh))
    await asyncio.sleep(0.3)  # the request is on the wire, the server holds it
    server.stop()  # killed mid-request: the connection drops
    result = await asyncio.wait_for(future, 30)  # answered, not hung (a no-hang bound)
    assert not result.items
    log = client.log()
    assert re.search(r"completion .*10:27 in file:///other.py failed: .*broke off the answer: \w+", log), log[-2000:]
    # Gone for good: refused at once, logged, empty.
    assert await asyncio.wait_for(client.inline(fresh, 15, 10), 10) == ""
    assert f"cannot connect to {server.url}/v1" in client.log()
