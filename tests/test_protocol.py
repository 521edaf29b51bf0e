"""What a hostile client can send over stdio, and what it gets back (issue #16).

Each test drives the real ``python -m codellama_lsp --stdio`` with raw bytes
(``raw_lsp.RawServer``) and reads its output strictly: exact framing, standard JSON.
Most need no model: requests are answered before (and without) ``initialized``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codellama_lsp import BUNDLED_MODEL
from raw_lsp import RawServer, frame

STATUS = {"command": "codellama.status"}


def status_request(msg_id: object) -> bytes:
    return frame({"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand", "params": STATUS})


@pytest.fixture
def server(tmp_path: Path):
    with RawServer(BUNDLED_MODEL, tmp_path / "server.log") as s:
        yield s
        assert s.violations == []


def errors_logged(s: RawServer) -> list[str]:
    return [line for line in s.log().splitlines() if " ERROR " in line]


# -- 2: objects with a "jsonrpc" key inside params are params -------------------------------------------------

def test_params_that_look_like_messages_stay_params(server: RawServer) -> None:
    lookalikes = [
        {"jsonrpc": "2.0", "id": "victim-7", "method": "textDocument/hover", "params": {}},
        {"jsonrpc": "2.0", "id": "victim-8", "result": None},
        {"jsonrpc": "2.0", "method": "exit"},
        {"jsonrpc": "2.0", "id": "victim-9", "error": {"code": 1, "message": "x"}},
        {"nested": [{"jsonrpc": "2.0", "id": "victim-10", "method": "shutdown"}]},
    ]
    for i, arg in enumerate(lookalikes * 20):  # 100 requests, as in the report (72 of 96 went unanswered)
        server.send(frame({"jsonrpc": "2.0", "id": f"outer-{i}", "method": "workspace/executeCommand",
                           "params": {"command": "codellama.status", "arguments": [arg]}}))
    for i in range(len(lookalikes) * 20):
        assert "result" in server.response(f"outer-{i}")
    assert server.status()["version"]
    assert not [m for m in server.messages if str(m.get("id", "")).startswith("victim")]
    assert server.alive()  # the nested "exit" was not taken for a message


# -- 3: a huge Content-Length ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [10**12, 10**30, 10**400])
def test_a_huge_content_length_is_refused_without_allocating(server: RawServer, length: int) -> None:
    rss = server.status() and server.rss_kib()
    server.send(b"Content-Length: %d\r\n\r\n{}" % length + status_request(1))
    assert "result" in server.response(1)
    assert server.alive() and server.rss_kib() - rss < 64 * 1024
    assert any("exceeds the 67108864-byte maximum frame" in line for line in errors_logged(server))


# -- 4: framing errors resynchronise, and are logged ----------------------------------------------------------

GOOD = json.dumps({"jsonrpc": "2.0", "id": "bad", "method": "workspace/executeCommand", "params": STATUS}).encode()
BROKEN = {
    "too small": b"Content-Length: %d\r\n\r\n" % (len(GOOD) - 10) + GOOD,
    "too large": b"Content-Length: %d\r\n\r\n" % (len(GOOD) + 10) + GOOD,
    "missing": b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" + GOOD,
    "non-numeric": b"Content-Length: twelve\r\n\r\n" + GOOD,
    "negative": b"Content-Length: -%d\r\n\r\n" % len(GOOD) + GOOD,
    "duplicated, different": b"Content-Length: 3\r\nContent-Length: %d\r\n\r\n" % len(GOOD) + GOOD,
    "LF line ends": b"Content-Length: %d\n\n" % len(GOOD) + GOOD,
    "garbage before the header": b"hello there\r\n" + frame(GOOD),
    "garbage without a line end": b"\x00\xff{}[]" + frame(GOOD),
    "a header line longer than the header limit": b"X-Padding: " + b"a" * 20000 + b"\r\n" + frame(GOOD),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_framing_errors_are_logged_and_the_next_frame_is_read(server: RawServer, case: str) -> None:
    server.send(BROKEN[case] + status_request("next"))
    assert "result" in server.response("next")  # resynchronised: the frame after the broken one is answered
    assert errors_logged(server), "no error logged"
    assert all("framing" in line or "parse error" in line.lower() for line in errors_logged(server))
    # A broken frame is answered at most once (garbage before a good frame leaves that frame to be answered).
    assert len(server.responses("bad")) <= 1
    assert server.alive()


def test_a_too_large_content_length_on_the_last_frame_is_answered_not_waited_on(server: RawServer) -> None:
    """The client sends one request with a Content-Length beyond its body, then waits: no deadlock."""
    server.send(b"Content-Length: %d\r\n\r\n" % (len(GOOD) + 50) + GOOD)
    answer = server.response("bad")
    assert answer["error"]["code"] == -32600 and "Content-Length" in answer["error"]["message"]
    assert "result" in server.request("workspace/executeCommand", STATUS)


@pytest.mark.parametrize("header", [b"content-length: %d", b"CONTENT-LENGTH:%d", b"Content-Length:\t%d  "])
def test_header_names_are_case_insensitive_and_the_blank_is_optional(server: RawServer, header: bytes) -> None:
    server.send(header % len(GOOD) + b"\r\n\r\n" + GOOD)
    assert "result" in server.response("bad")
    assert errors_logged(server) == []


def test_input_ending_mid_frame_is_logged_and_the_process_exits(server: RawServer) -> None:
    server.send(b"Content-Length: 100\r\n\r\n{\"jsonrpc\"")
    assert server.close() == 0
    assert any("input ended mid-frame" in line for line in errors_logged(server))


# -- 5: invalid JSON, batches, envelopes ----------------------------------------------------------------------

@pytest.mark.parametrize(("body", "code", "msg_id"), [
    (b"{not json", -32700, None),
    (b'{"jsonrpc": "2.0", "id": 3, "method": "shutdown"', -32700, None),
    (b"\xff\xfe{}", -32700, None),
    (b"", -32700, None),
    (b"[]", -32600, None),
    (b"[1, 2]", -32600, None),
    (b'"a string"', -32600, None),
    (b"42", -32600, None),
    (b'{"jsonrpc": "1.0", "id": 3, "method": "shutdown"}', -32600, 3),
    (b'{"id": 3, "method": "shutdown"}', -32600, 3),
    (b'{"jsonrpc": "2.0", "id": 3, "method": null}', -32600, 3),
    (b'{"jsonrpc": "2.0", "id": 3, "method": 5}', -32600, 3),
    (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": 1.5, "method": "shutdown"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": true, "method": "shutdown"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": null, "method": "shutdown"}', -32600, None),
    (b'{"jsonrpc": "2.0", "id": 3, "method": "textDocument/hover", "params": 7}', -32602, 3),
    (b'{"jsonrpc": "2.0", "id": 3, "method": "no/such/method"}', -32601, 3),
])
def test_malformed_messages_get_the_json_rpc_error(server: RawServer, body: bytes, code: int, msg_id: object) -> None:
    before = len(server.messages)
    server.send(frame(body))
    server.status()
    errors = [m for m in server.messages[before:] if "error" in m]
    assert [(e["id"], e["error"]["code"]) for e in errors] == [(msg_id, code)]
    assert server.alive()


def test_each_request_in_a_batch_is_refused_by_its_id(server: RawServer) -> None:
    server.send(frame([{"jsonrpc": "2.0", "id": "b1", "method": "shutdown"},
                       {"jsonrpc": "2.0", "method": "initialized", "params": {}},
                       {"jsonrpc": "2.0", "id": "b2", "method": "workspace/executeCommand", "params": STATUS}]))
    assert server.response("b1")["error"]["code"] == -32600
    assert server.response("b2")["error"]["code"] == -32600
    assert "result" in server.request("shutdown")  # none of the batch was applied


# -- 6: notification methods sent with an id ------------------------------------------------------------------

@pytest.mark.parametrize(("method", "params"), [
    ("textDocument/didOpen", {"textDocument": {"uri": "file:///n.py", "languageId": "python", "version": 1,
                                               "text": "x = 1\n"}}),
    ("textDocument/willSave", {"textDocument": {"uri": "file:///n.py"}, "reason": 1}),
    ("initialized", {}),
    ("exit", None),
])
def test_a_notification_sent_with_an_id_is_answered(server: RawServer, method: str, params: object) -> None:
    answer = server.request(method, params, msg_id="n1")
    assert answer["error"]["code"] == -32600 and "notification" in answer["error"]["message"]
    assert server.alive()
    assert server.status()["open_documents"] == 0  # refused, not applied


def test_requests_after_shutdown_are_refused_and_exit_still_works(server: RawServer) -> None:
    assert server.request("shutdown", msg_id="s")["result"] is None
    assert server.request("workspace/executeCommand", STATUS, msg_id="late")["error"]["code"] == -32600
    server.notify("exit")
    assert server.proc.wait(10) == 0


# -- 7: non-finite numbers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"jsonrpc": "2.0", "id": 1e999, "method": "workspace/executeCommand", "params": {"command": "codellama.status"}}',
    b'{"jsonrpc": "2.0", "id": 5, "method": "codeAction/resolve", "params": {"title": "t", "data": NaN}}',
    b'{"jsonrpc": "2.0", "id": 5, "method": "codeAction/resolve", "params": {"title": "t", "data": -Infinity}}',
    b'{"jsonrpc": "2.0", "id": 5, "method": "codeAction/resolve", "params": {"title": "t", "data": [-1e400]}}',
])
def test_non_finite_numbers_are_refused(server: RawServer, body: bytes) -> None:
    server.send(frame(body))
    (error,) = [m for m in [server.wait_for(lambda m: "error" in m)]]
    assert error["error"]["code"] == -32700 and error["id"] is None
    assert server.status() and server.violations == []  # every byte written parsed as standard JSON


def test_a_result_with_a_non_finite_number_becomes_an_error(tmp_path: Path) -> None:
    patch = ("import math, codellama_lsp.lsp.convert as c; status = c.status; "
             "c.status = lambda *args: {**status(*args), 'load_ms': math.inf}; "
             "from codellama_lsp.cli import main; main()")
    with RawServer(BUNDLED_MODEL, tmp_path / "server.log", python=("-c", patch)) as s:
        answer = s.request("workspace/executeCommand", STATUS, msg_id=1)
        assert answer["error"]["code"] == -32603 and "not representable in JSON" in answer["error"]["message"]
        assert s.violations == [] and s.alive()


# -- 8: malformed params are -32602 naming the field ----------------------------------------------------------

def position(uri: str, line: object = 0, character: object = 0) -> dict[str, object]:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}


def test_malformed_params_are_invalid_params_naming_the_field(server: RawServer) -> None:
    server.initialize()
    server.wait_loaded()
    server.open("file:///five.py", "def add(a, b):\n    return a + b\n", language_id=5)
    log_message = server.wait_for(lambda m: m.get("method") == "window/logMessage")
    assert "params.textDocument.languageId" in log_message["params"]["message"]
    # The document was not opened with a number for a language: hover and completions answer "nothing", not -32603.
    assert server.request("textDocument/hover", position("file:///five.py"))["result"] is None
    rng = {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}
    cases = [
        ("textDocument/codeAction", {"textDocument": {"uri": "file:///five.py"}, "range": rng,
                                     "context": {"diagnostics": [], "only": [None]}}, "params.context.only[0]"),
        ("textDocument/hover", position("file:///five.py", -1), "params.position.line"),
        ("textDocument/hover", position("file:///five.py", 1.5), "params.position.line"),
        ("textDocument/hover", position("file:///five.py", 0, True), "params.position.character"),
        ("textDocument/hover", {"textDocument": {"uri": 5}, "position": {"line": 0, "character": 0}},
         "params.textDocument.uri"),
        ("textDocument/hover", {"position": {"line": 0, "character": 0}}, "params.textDocument"),
        ("textDocument/inlineCompletion", {**position("file:///five.py"), "context": {"triggerKind": "x"}},
         "params.context.triggerKind"),
        ("workspace/executeCommand", {"command": 5}, "params.command"),
        ("codeAction/resolve", {"title": None}, "params.title"),
    ]
    for method, params, field in cases:
        error = server.request(method, params)["error"]
        assert error["code"] == -32602 and field in error["message"], (method, params, error)
    server.notify("window/workDoneProgress/cancel", {"token": {}})
    server.notify("textDocument/didChange", {"textDocument": {"uri": "file:///five.py", "version": 2},
                                             "contentChanges": [{"text": 5}]})
    for field in ("params.token", "params.contentChanges[0].text"):
        server.wait_for(lambda m: m.get("method") == "window/logMessage" and field in m["params"]["message"])
    assert not [line for line in server.log().splitlines() if "Traceback" in line or "TypeError" in line]
    assert server.alive()


# -- 10: what is echoed from clients, and internal errors -----------------------------------------------------

def test_long_client_strings_are_not_echoed_in_full(server: RawServer) -> None:
    name = "x" * 3_000_000
    server.send(frame({"jsonrpc": "2.0", "id": "long", "method": name, "params": {}}))
    server.send(frame({"jsonrpc": "2.0", "method": name, "params": {}}))
    server.send(frame({"jsonrpc": "2.0", "id": "cmd", "method": "workspace/executeCommand",
                       "params": {"command": name}}))
    assert server.response("long")["error"]["code"] == -32601
    assert len(json.dumps(server.response("long"))) < 1000
    assert len(json.dumps(server.response("cmd"))) < 1000
    server.status()
    assert len(server.log()) < 100_000  # each of the three is logged, none in full


def test_internal_errors_keep_the_traceback_in_the_log(tmp_path: Path) -> None:
    patch = ("import codellama_lsp.lsp.convert as c; c.status = lambda *args: [][1]; "
             "from codellama_lsp.cli import main; main()")
    with RawServer(BUNDLED_MODEL, tmp_path / "server.log", python=("-c", patch)) as s:
        error = s.request("workspace/executeCommand", STATUS)["error"]
        assert error["code"] == -32603 and "data" not in error
        assert "IndexError" in error["message"] and "/" not in error["message"] and len(error["message"]) < 200
        assert "Traceback" in s.log() and "IndexError" in s.log()
        assert s.alive()


# -- 1: the docstring edit is for the version it was computed on ----------------------------------------------

DOCUMENT = "".join(f"x{n} = {n}\n" for n in range(40)) + "def add(a, b):\n    return a + b\n"
URI = "file:///versions.py"
CAPS = {"workspace": {"workspaceEdit": {"documentChanges": True}},
        "textDocument": {"codeAction": {"resolveSupport": {"properties": ["edit"]}}}}


def docstring_action(s: RawServer) -> dict:
    rng = {"start": {"line": 40, "character": 4}, "end": {"line": 40, "character": 4}}
    (action,) = s.request("textDocument/codeAction", {"textDocument": {"uri": URI}, "range": rng,
                                                      "context": {"diagnostics": []}})["result"]
    return action


def change(version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> bytes:
    rng = {"start": {"line": start[0], "character": start[1]}, "end": {"line": end[0], "character": end[1]}}
    return frame({"jsonrpc": "2.0", "method": "textDocument/didChange",
                  "params": {"textDocument": {"uri": URI, "version": version},
                             "contentChanges": [{"range": rng, "text": text}]}})


def resolve(action: dict, msg_id: str) -> bytes:
    return frame({"jsonrpc": "2.0", "id": msg_id, "method": "codeAction/resolve", "params": action})


def only_edit(edit: dict) -> tuple[int | None, dict]:
    """(the version the edit is for, its one TextEdit)."""
    if "documentChanges" in edit:
        (doc_edit,) = edit["documentChanges"]
        assert doc_edit["textDocument"]["uri"] == URI
        (text_edit,) = doc_edit["edits"]
        return doc_edit["textDocument"]["version"], text_edit
    ((uri, (text_edit,)),) = edit["changes"].items()
    assert uri == URI
    return None, text_edit


@pytest.fixture
def versioned(tmp_path: Path, endless_model_dir: Path):
    """A server on a model that always writes a docstring (it never ends its text), for a client that takes
    versioned edits."""
    with RawServer(endless_model_dir, tmp_path / "server.log") as s:
        s.initialize(CAPS)
        assert s.wait_loaded()["state"] == "ready"
        s.open(URI, DOCUMENT)
        yield s
        assert s.violations == []


def test_a_docstring_edit_follows_lines_inserted_while_it_is_generated(versioned: RawServer) -> None:
    action = docstring_action(versioned)
    # One write: the resolve starts generating for version 1, then three lines arrive at the top.
    versioned.send(resolve(action, "res") + change(2, (0, 0), (0, 0), "a = 1\nb = 2\nc = 3\n"))
    resolved = versioned.response("res", timeout=120)["result"]
    version, edit = only_edit(resolved["edit"])
    assert version == 2  # for the document the edit was computed on: the editor can refuse a stale one
    assert edit["range"]["start"] == {"line": 44, "character": 0} == edit["range"]["end"]
    assert edit["newText"].startswith('    """')


def test_a_docstring_edit_for_a_deleted_definition_is_dropped(versioned: RawServer) -> None:
    action = docstring_action(versioned)
    versioned.send(resolve(action, "res") + change(2, (0, 0), (42, 0), ""))
    resolved = versioned.response("res", timeout=120)
    assert "result" in resolved and "edit" not in resolved["result"]  # no edit, and no -32603


def test_a_resolve_sent_after_an_edit_finds_the_definition_again(versioned: RawServer) -> None:
    action = docstring_action(versioned)
    versioned.send(change(2, (0, 0), (0, 0), "import os\n\n"))
    version, edit = only_edit(versioned.request("codeAction/resolve", action, timeout=120)["result"]["edit"])
    assert (version, edit["range"]["start"]["line"]) == (2, 43)


def test_without_document_changes_support_the_edit_is_plain_and_current(tmp_path: Path, endless_model_dir: Path) -> None:
    with RawServer(endless_model_dir, tmp_path / "server.log") as s:
        s.initialize({"textDocument": CAPS["textDocument"]})
        s.wait_loaded()
        s.open(URI, DOCUMENT)
        action = docstring_action(s)
        s.send(resolve(action, "res") + change(2, (0, 0), (0, 0), "a = 1\nb = 2\nc = 3\n"))
        version, edit = only_edit(s.response("res", timeout=120)["result"]["edit"])
        assert version is None and edit["range"]["start"]["line"] == 44


# -- 9: the token-count cache is bounded in bytes and freed at didClose ---------------------------------------

def test_the_token_cache_is_bounded_in_bytes_and_freed_when_the_document_closes(tmp_path: Path) -> None:
    """Typing at the end of a 17k-character line: each keystroke's text before the cursor is a new 16k key."""
    with RawServer(BUNDLED_MODEL, tmp_path / "server.log") as s:
        s.initialize()
        assert s.wait_loaded()["state"] == "ready"
        line = "v = [" + ", ".join(str(i % 10) for i in range(5600)) + "]"  # about 17k characters
        s.open("file:///long.py", line + "\n")
        s.open("file:///other.py", "import os\n\n\ndef f():\n    return os.sep\n")
        s.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///other.py"},
                                                   "position": {"line": 4, "character": 17},
                                                   "context": {"triggerKind": 2}})
        rss = s.rss_kib()
        keystrokes = 1000
        chunk = []
        for k in range(keystrokes):
            at = {"line": 0, "character": len(line) + k}
            chunk.append(frame({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                "textDocument": {"uri": "file:///long.py", "version": k + 2},
                "contentChanges": [{"range": {"start": at, "end": at}, "text": "1"}]}}))
            chunk.append(frame({"jsonrpc": "2.0", "id": f"k{k}", "method": "textDocument/inlineCompletion",
                                "params": {"textDocument": {"uri": "file:///long.py"},
                                           "position": {"line": 0, "character": len(line) + k + 1},
                                           "context": {"triggerKind": 2}}}))
        s.send(b"".join(chunk))
        for k in range(keystrokes):
            s.response(f"k{k}", timeout=120)
        cache = s.status()["token_cache"]
        grown = s.rss_kib() - rss
        # Unbounded, 1000 keys of 16k characters would be 16 MB; bounded, they stay within max_bytes.
        assert cache["max_bytes"] // 2 < cache["bytes"] <= cache["max_bytes"] <= 16 * 2**20, cache
        assert grown < 64 * 1024, f"RSS grew {grown} KiB"
        s.notify("textDocument/didClose", {"textDocument": {"uri": "file:///long.py"}})
        after = s.status()["token_cache"]
        assert 0 < after["bytes"] < 64 * 1024, after  # only other.py's few lines are left
