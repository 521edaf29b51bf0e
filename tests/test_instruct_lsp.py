"""Instruct actions over the real stdio server: each one end to end on the real default model
(Qwen2.5-Coder-0.5B-Instruct, ChatML), with short answers for speed; cancellation; a stale
document version; and the demo model, which has no chat template, offering none.

Skipped, saying why, without the real model's packages (the demo-model test always runs).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lsprotocol import types

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.devtools.lsp_client import Client, stop
from lsp_harness import start

SOURCE = '''def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)


def shout(text):
    return text.upper() + "!"
'''
URI = "file:///stats.py"
ANSWER_TOKENS = 24  # short answers: each action takes a few seconds on one core


def action_params(line: int, character: int, end: tuple[int, int] | None = None,
                  diagnostics: list[dict] | None = None) -> dict:
    at = {"line": line, "character": character}
    return {"textDocument": {"uri": URI},
            "range": {"start": at, "end": {"line": end[0], "character": end[1]} if end else at},
            "context": {"diagnostics": diagnostics or []}}


async def actions(client: Client, params: dict) -> dict[str, dict]:
    """The code actions by title, as JSON (pygls' client would structure a CodeAction with a command as a Command)."""
    return {a["title"]: a for a in await client.raw_request("textDocument/codeAction", params) or []}


def argument(action: dict) -> dict:
    assert action["command"]["command"] == "codellama.instruct", action
    return dict(action["command"]["arguments"][0])


def progress(client: Client, kind: str) -> list[dict]:
    """The work-done progress values of ``kind`` (begin, report, end) the server sent, as JSON."""
    return [p.value for p in client.progress if isinstance(p.value, dict) and p.value.get("kind") == kind]


@pytest.fixture
async def real_client(real_gguf: Path, tmp_path: Path):
    client = await start(real_gguf, tmp_path / "server.log",
                         options={"instructMaxTokens": ANSWER_TOKENS, "engine": "llamacpp"})
    try:
        status = await client.wait_loaded(timeout=300)
        assert status["state"] == "ready", status
        assert status["chat"].startswith("chatml: the model's chat template"), status["chat"]
        client.open(URI, SOURCE)
        yield client
    finally:
        await stop(client)


async def test_each_action_end_to_end(real_client: Client) -> None:
    client = real_client
    # At a cursor in a body: the actions are about the whole definition around it.
    found = await actions(client, action_params(3, 8))
    assert {"codellama: Explain", "codellama: Write tests", "codellama: Edit selection…"} <= found.keys(), found
    assert "codellama: Fix" not in found  # no diagnostics, nothing to fix
    explain = argument(found["codellama: Explain"])
    assert explain["range"] == {"start": {"line": 0, "character": 0}, "end": {"line": 5, "character": 0}}
    assert explain["version"] == 1

    answer = await client.instruct(explain)
    assert answer.get("action") == "explain" and answer["markdown"].strip(), answer
    assert not client.applied_edits
    # The answer streamed as work-done progress with the text so far.
    begins = [v for v in progress(client, "begin") if v["title"] == "codellama: Explain"]
    assert begins and begins[0]["cancellable"] is True, begins
    reports = [v["message"] for v in progress(client, "report")]
    assert any(r.strip() and answer["markdown"].startswith(r.strip()[:10]) for r in reports), reports

    # Edit selection: the selection is replaced by the model's code, through workspace/applyEdit.
    found = await actions(client, action_params(7, 0, (9, 0)))
    edit = {**argument(found["codellama: Edit selection…"]), "instruction": "rename the function to yell"}
    answer = await client.instruct(edit)
    assert answer.get("applied") is True, answer
    (sent,) = client.applied_edits
    (text_edit,) = sent.edit.changes[URI]
    assert text_edit.range == types.Range(start=types.Position(7, 0), end=types.Position(9, 0))
    assert "yell" in text_edit.new_text and text_edit.new_text == answer["text"], text_edit

    # Write tests: inserted below the code, at the start of the next line.
    answer = await client.instruct(argument((await actions(client, action_params(0, 4)))["codellama: Write tests"]))
    assert answer.get("applied") is True and answer["range"]["start"] == {"line": 5, "character": 0}, answer
    assert "mean" in answer["text"], answer

    # Fix: offered with the diagnostics in range, which the model is given.
    problem = {"range": {"start": {"line": 4, "character": 11}, "end": {"line": 4, "character": 30}},
               "message": "division by zero when values is empty", "source": "review"}
    found = await actions(client, action_params(4, 4, diagnostics=[problem]))
    fix = argument(found["codellama: Fix"])
    assert fix["diagnostics"] == ["line 5: division by zero when values is empty (review)"]
    # An answer cut at instructMaxTokens would replace the code with half of it: refused, nothing applied.
    before = len(client.applied_edits)
    await client.configure(instructMaxTokens=2)
    answer = await client.instruct(fix)
    assert "did not finish" in answer.get("error", "") and len(client.applied_edits) == before, answer
    await client.configure(instructMaxTokens=256)
    answer = await client.instruct(fix)
    assert answer.get("applied") is True and answer["text"].strip(), answer

    # An action offered for version 1 is refused once the document changed: nothing is applied.
    client.change(URI, 2, "# stats\n", (0, 0), (0, 0))
    before = len(client.applied_edits)
    answer = await client.instruct(edit)
    assert "changed" in answer.get("error", ""), answer
    assert len(client.applied_edits) == before

    # $/cancelRequest stops the model: the request is answered "cancelled" and the server is free at once.
    found = await actions(client, action_params(1, 4))
    long = argument(found["codellama: Explain"])
    await client.configure(instructMaxTokens=1024, instructTimeBudgetMs=600000)
    seen = len(progress(client, "report"))
    msg_id, pending = client.request("workspace/executeCommand", types.ExecuteCommandParams(
        command="codellama.instruct", arguments=[long]))
    while len(progress(client, "report")) == seen:
        await asyncio.sleep(0.05)  # writing
    client.protocol.notify("$/cancelRequest", types.CancelParams(id=msg_id))
    with pytest.raises(Exception, match="cancel"):
        await asyncio.wait_for(pending, 30)
    status = await asyncio.wait_for(client.status(), 10)
    assert status["requests"].get("cancelled", 0) == 1, status["requests"]
    assert status["generated_tokens"] < 1024 + 4 * ANSWER_TOKENS, status


async def test_docstrings_by_instruct(real_client: Client) -> None:
    """The docstrings setting "instruct": the hover's docstring is asked of the chat model."""
    client = real_client
    await client.configure(docstrings="instruct")
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(7, 5)))
    assert hover is not None and "**`shout`** (generated docstring)" in hover.contents.value, hover
    assert f"docstring for shout in {URI} by the chat model" in client.log()


async def test_a_model_without_a_chat_template_offers_none(tmp_path: Path) -> None:
    """The demo model (a Code Llama vocabulary, no chat template): only the docstring action, and status says why."""
    client = await start(BUNDLED_MODEL, tmp_path / "server.log")
    try:
        status = await client.wait_loaded()
        assert status["state"] == "ready", status
        assert status["chat"].startswith("none: the model has no chat template"), status["chat"]
        client.open(URI, SOURCE)
        found = await actions(client, action_params(0, 4))
        assert list(found) == ["Generate docstring"], found
        answer = await client.instruct({"action": "explain", "uri": URI, "version": 1,
                                        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 5, "character": 0}}})
        assert answer["error"].startswith("no Instruct actions: none: the model has no chat template"), answer
        await client.configure(chat="codellama")  # forced: the demo model's tokenizer has BOS/EOS
        assert (await client.status())["chat"] == "codellama: the chat setting"
    finally:
        await stop(client)
