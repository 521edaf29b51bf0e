"""The real ``codellama-lsp --stdio`` process with a remote backend, against a recorded OpenAI-compatible server.

Whatever the server does (answers, streams, hangs, breaks off mid-answer, goes away),
the editor gets a suggestion or an empty result with a log line, never a hang.
"""

from __future__ import annotations

import asyncio
from pathlib import Path


from codellama_lsp.backends.text_prompt import as_text
from codellama_lsp.completion.planning import plan, suggestion
from codellama_lsp.completion.families import detect
from codellama_lsp.completion.context import TokenCounter
from codellama_lsp.documents import Document
from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.settings import Settings, resolve_format
from http_stub import Reply, Seen, StubServer
from codellama_lsp.devtools.lsp_client import stop
from lsp_harness import TEST_SETTINGS, start

SOURCE = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
SINGLE = (4, 6)  # inside "print(|add(1, 2))": text follows the cursor, so one line, stopped by the server
MULTI = (1, 16)  # the end of "    return a + b": a block, streamed and stopped when it ends


def chunk(text: str, finish: str | None = None) -> dict:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1732300000, "model": "m",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def recorded(seen: Seen) -> Reply:
    if seen.json().get("stop") == ["\n"]:  # single-line: the server ends at the newline
        return Reply(events=[chunk("max(1,"), chunk(" 2), "), chunk("", "stop"), "data: [DONE]"])
    return Reply(events=[chunk("\n    assert"), chunk(" c"), chunk("\n\ndef sub(a, b):"), chunk("\n    pass"),
                         chunk("", "length"), "data: [DONE]"])


def expected(tok: Tokenizer, position: tuple[int, int], raw: str) -> tuple[str, list[int]]:
    doc = Document.from_text("file:///expected.py", SOURCE)
    settings = Settings(time_budget_ms=TEST_SETTINGS["timeBudgetMs"], max_new_tokens=TEST_SETTINGS["maxNewTokens"])
    settings = resolve_format(settings, None)  # a served model declares no preference: PSM
    p = plan(doc, doc.cursor(*position), settings, detect(tok), tok, TokenCounter(tok.encode))
    return suggestion(raw, p), p.token_ids


async def test_completions_come_from_the_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = Tokenizer(tiny_model_dir / "tokenizer.model")
    async with StubServer(recorded) as stub:
        client = await start(tiny_model_dir, tmp_path / "server.log", options={"backend": "openai", "url": stub.url})
        try:
            status = await client.wait_loaded()
            assert status["state"] == "ready" and status["device"] == f"openai server at {stub.url}", client.log()
            client.open("file:///a.py", SOURCE)
            single, prompt = expected(tok, SINGLE, "max(1, 2), ")
            assert await client.inline("file:///a.py", *SINGLE) == single == "max(1, 2),"
            body = stub.seen[-1].json()
            assert body["prompt"] == as_text(tok, prompt) and body["stop"] == ["\n"]
            multi, _ = expected(tok, MULTI, "\n    assert c\n\ndef sub(a, b):")
            assert await client.inline("file:///a.py", *MULTI) == multi == "\n    assert c"
            assert stub.seen[-1].json()["stream"] is True and "stop" not in stub.seen[-1].json()
        finally:
            await stop(client)


async def test_a_failing_server_gives_empty_results_and_log_lines(tiny_model_dir: Path, tmp_path: Path) -> None:
    replies = {
        "/hang/v1/completions": Reply(hang=True),
        "/cut/v1/completions": Reply(events=[chunk("\n    return")] * 4, cut_after=1),
        "/error/v1/completions": Reply(status=500, body={"error": {"message": "model crashed", "type": "server_error"}}),
    }
    stub = StubServer(lambda seen: replies[seen.path])
    await stub.__aenter__()
    url = stub.url
    client = await start(tiny_model_dir, tmp_path / "server.log",
                         options={"backend": "openai", "url": url + "/hang", "timeBudgetMs": 300})
    try:
        assert (await client.wait_loaded())["state"] == "ready"
        client.open("file:///b.py", SOURCE)
        # Silent server: the time budget ends it; without the budget it would hang (the wait's bound).
        assert await asyncio.wait_for(client.inline("file:///b.py", *MULTI), 30) == ""
        for path, logged in (("/cut", "broke off the answer"), ("/error", "HTTP 500 Internal Server Error")):
            await client.configure(url=url + path, timeBudgetMs=10000)
            assert (await client.wait_loaded())["state"] == "ready"
            assert await client.inline("file:///b.py", *MULTI) == ""
            assert logged in client.log()
        await stub.__aexit__(None, None, None)  # the server goes away altogether
        assert await client.inline("file:///b.py", *MULTI) == ""
        assert f"cannot connect to {url}/error" in client.log()
        assert (await client.status())["requests"]["failed"] >= 3
    finally:
        await stop(client)
        await stub.__aexit__(None, None, None)
