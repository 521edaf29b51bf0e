"""Faults an unlucky machine produces: processes killed mid-way, damaged caches, files changed under the server,
clients that vanish or stop reading. Nothing is left half-written, nothing blocks the server, and every start
after a fault either works or says what is wrong. Kill and signal tests use real subprocesses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from lsprotocol import types

from codellama_lsp import files
from codellama_lsp.completion import snippets
from codellama_lsp.completion.chat import Chat
from codellama_lsp.documents import Document
from codellama_lsp.settings import Settings
from codellama_lsp.engine import default_model, llamacpp_kernels
from codellama_lsp.engine.default_model import Asset, default_gguf
from codellama_lsp.lsp import instruct_actions
from codellama_lsp.workspace import Workspace
from raw_lsp import REPO, RawServer, frame, strict_json
from test_default_model import asset_for, fake_parts

NO_HANG_S = 5.0  # a bound on waiting for an answer that must not wait on the fault: not a speed assertion


def partial_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(files.TEMPORARY_SUFFIXES))


def wait_until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


# -- 1: half-written model files -------------------------------------------------------------------------

# A child that assembles a model from a regular part and a FIFO: it blocks on the FIFO with its
# temporary file written, which is the moment it is killed. It sets the cleanup the CLI sets.
ASSEMBLER = """
import sys
from pathlib import Path
from codellama_lsp.engine.default_model import Asset, _assemble
from codellama_lsp.files import install_sigterm_cleanup
install_sigterm_cleanup()
first, fifo, cache = map(Path, sys.argv[1:4])
_assemble([first, fifo], cache / "model.gguf", Asset(("p",), "0", "0" * 64, 1, "model.gguf"))
"""


@pytest.fixture
def assembling(tmp_path: Path):
    """A child process in the middle of assembling ``cache/model.gguf``, and the cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "part1.bin").write_bytes(b"GGUF" + b"x" * 100_000)
    os.mkfifo(tmp_path / "part2.fifo")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", ASSEMBLER, str(tmp_path / "part1.bin"), str(tmp_path / "part2.fifo"),
                              str(cache)], env=env)
    try:
        wait_until(lambda: partial_files(cache))
        yield child, cache
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_start_after_an_assembly_was_killed_leaves_no_part_file(
        how: signal.Signals, assembling: tuple[subprocess.Popen, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    child, cache = assembling
    child.send_signal(how)
    assert child.wait(10) == -how  # SIGTERM still ends the process as SIGTERM does
    if how == signal.SIGTERM:
        assert partial_files(cache) == []  # removed by the dying process itself
    chunks = [b"GGUF" + bytes(range(256)) * 10, b"tail" * 100]
    asset = asset_for(fake_parts(tmp_path / "site", chunks, monkeypatch), b"".join(chunks))
    assert default_gguf(asset, cache).read_bytes() == b"".join(chunks)
    assert partial_files(cache) == []


@pytest.mark.parametrize("stage, how", [("verification", signal.SIGKILL), ("loading", signal.SIGKILL),
                                        ("loading", signal.SIGTERM)])
def test_a_start_killed_while_its_model_is_verified_or_loaded_is_followed_by_a_working_start(
        stage: str, how: signal.Signals, real_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real default model in a cache of its own, without its record: the server hashes it
    (verification), records it, then llama.cpp reads it (loading). Killed in either stage, the
    next start works, and nothing is left half-written."""
    import shutil

    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / default_model.DEFAULT.file_name
    shutil.copyfile(real_gguf, target)
    record = target.with_name(target.name + ".verified.json")
    monkeypatch.setenv("CODELLAMA_LSP_CACHE", str(cache))
    first = RawServer(target, tmp_path / "first.log")
    try:
        first.initialize()
        if stage == "verification":
            wait_until(lambda: first.status()["state"] == "loading")
            assert not record.exists(), "the record was written before the kill: verification was too quick to catch"
        else:
            wait_until(record.exists, timeout=60)
        os.kill(first.proc.pid, how)
        first.proc.wait(20)
    finally:
        first.close()
    with RawServer(target, tmp_path / "second.log") as second:
        second.initialize()
        status = second.wait_loaded(timeout=180)
        assert status["state"] == "ready", status
        assert record.exists() and partial_files(cache) == []
        assert status["model_verified"], status


def test_a_live_assemblers_part_file_is_not_swept(assembling: tuple[subprocess.Popen, Path]) -> None:
    child, cache = assembling
    live = partial_files(cache)
    assert files.sweep(cache, "model.gguf") == [] and partial_files(cache) == live
    child.kill()
    child.wait(10)
    assert [p.name for p in files.sweep(cache, "model.gguf")] == live and partial_files(cache) == []


# -- 2 and 3: a damaged model, a cache that cannot be written ----------------------------------------------

MIB = 1 << 20
BIG = [os.urandom(MIB) for _ in range(4)]  # 4 MiB: the sampled hash reads a small part of it


@pytest.fixture
def big_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Asset:
    return asset_for(fake_parts(tmp_path / "site", BIG, monkeypatch), b"".join(BIG))


def test_a_model_damaged_in_place_with_its_mtime_restored_is_noticed_and_assembled_again(
        big_asset: Asset, tmp_path: Path) -> None:
    path = default_gguf(big_asset, tmp_path)
    assert default_model.how_verified(path).startswith("full")
    assert default_gguf(big_asset, tmp_path) == path and default_model.how_verified(path).startswith("sampled")
    st = path.stat()
    with path.open("r+b") as f:  # 1 MiB in the middle flipped, size and mtime as they were
        f.seek(len(b"".join(BIG)) // 2 - MIB // 2)
        damaged = bytes(b ^ 0xFF for b in f.read(MIB))
        f.seek(-MIB, os.SEEK_CUR)
        f.write(damaged)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert default_gguf(big_asset, tmp_path).read_bytes() == b"".join(BIG)
    assert default_model.how_verified(path).startswith("full")


def test_verify_model_checks_the_whole_file(big_asset: Asset, tmp_path: Path) -> None:
    path = default_gguf(big_asset, tmp_path)
    assert default_model.verify(big_asset, tmp_path)[0]
    st = path.stat()
    with path.open("r+b") as f:  # one byte, where the sampled hash does not look
        f.seek(3 * MIB // 2 + 12345)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    good, message = default_model.verify(big_asset, tmp_path)
    assert not good and "damaged" in message and "assembles it again" in message
    assert not path.exists() and not (tmp_path / "model.gguf.verified.json").exists()


def test_the_verify_model_command_names_a_damaged_default_model(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / default_model.FILE_NAME).write_bytes(b"GGUF not the model")
    env = {**os.environ, "CODELLAMA_LSP_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "codellama_lsp", "verify-model"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "is damaged" in out.stderr and default_model.SHA256 in out.stderr, out.stderr
    assert not (cache / default_model.FILE_NAME).exists()


def test_a_good_model_whose_record_cannot_be_written_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The record's path is a directory (an unwritable cache for root too), and the cache is read-only for others."""
    whole = b"".join(BIG)
    asset = Asset(("fake-never-installed-part1",), "0.9.0", hashlib.sha256(whole).hexdigest(), len(whole), "model.gguf")
    (tmp_path / "model.gguf").write_bytes(whole)
    (tmp_path / "model.gguf.verified.json").mkdir()
    tmp_path.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="codellama_lsp"):
            assert default_gguf(asset, tmp_path) == tmp_path / "model.gguf"
    finally:
        tmp_path.chmod(0o700)
    assert any("cannot record" in r.getMessage() for r in caplog.records)
    assert partial_files(tmp_path) == []


# -- 4: a corrupt batch-invariance memo --------------------------------------------------------------------

CORRUPT_MEMOS = {"nested": b"[" * 100_000 + b"]" * 100_000, "a list": b"[true, false]", "not JSON": b"\xff\x00{",
                 "a number": b"12"}


@pytest.mark.parametrize("content", CORRUPT_MEMOS.values(), ids=CORRUPT_MEMOS.keys())
def test_a_corrupt_memo_is_ignored_and_replaced(content: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memo = tmp_path / llamacpp_kernels.MEMO_FILE
    memo.write_bytes(content)
    monkeypatch.delenv(llamacpp_kernels.SWITCH, raising=False)
    assert llamacpp_kernels.choose(memo, "cpu") is False  # measured as if there were no memo
    llamacpp_kernels.record(memo, "cpu", True)
    assert json.loads(memo.read_text()) == {"cpu": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [memo.name]


def test_a_memo_that_is_a_directory_leaves_no_scratch_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memo = tmp_path / llamacpp_kernels.MEMO_FILE
    memo.mkdir()
    monkeypatch.delenv(llamacpp_kernels.SWITCH, raising=False)
    assert llamacpp_kernels.choose(memo, "cpu") is False
    llamacpp_kernels.record(memo, "cpu", True)
    assert [p.name for p in tmp_path.iterdir()] == [memo.name] and memo.is_dir()


# -- 5: workspace files swapped after they were read -------------------------------------------------------

def swap_for_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def swap_for_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def in_thread(fn: Callable[[], Any], timeout: float = NO_HANG_S) -> Any:
    """``fn()``, failing (not hanging) if it takes longer than ``timeout``."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert result, f"still running after {timeout} s"
    return result[0]


@pytest.mark.parametrize("swap", [swap_for_fifo, swap_for_dev_zero], ids=["fifo", "dev-zero"])
def test_an_imported_file_swapped_after_it_was_read_is_refused_at_once(
        swap: Callable[[Path], None], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "helper.py").write_text("def helper_value():\n    return 1\n")
    main = Document.from_text((tmp_path / "main.py").as_uri(), "from helper import helper_value\n\nx = \n", 1, "python")
    ws = Workspace(tmp_path)
    assert any(s.path == "helper.py" for s in ws.candidates(main, (0, 3), {main.uri: main}))
    swap(tmp_path / "helper.py")
    with caplog.at_level(logging.INFO, logger="codellama_lsp"):
        assert in_thread(lambda: ws.candidates(main, (0, 3), {main.uri: main})) == []
    assert any("helper.py" in r.getMessage() and "not a regular file" in r.getMessage() for r in caplog.records)


def test_a_slow_read_does_not_hold_the_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that takes long (a network file system) leaves the request with the snippets read before."""
    helper = tmp_path / "helper.py"
    helper.write_text("def helper_value():\n    return 1\n")
    main = Document.from_text((tmp_path / "main.py").as_uri(), "from helper import helper_value\n\nx = \n", 1, "python")
    ws = Workspace(tmp_path)
    before = ws.candidates(main, (0, 3), {main.uri: main})
    release = threading.Event()
    real = files.read_regular
    monkeypatch.setattr(files, "read_regular", lambda *a: (release.wait(30), real(*a))[1])
    helper.write_text("def helper_value():\n    return 2\n\n\ndef later():\n    pass\n")
    t0 = time.monotonic()
    assert ws.candidates(main, (0, 3), {main.uri: main}) == before
    assert time.monotonic() - t0 < NO_HANG_S
    release.set()
    assert any("later" in s.text for s in wait_until(lambda: ws.candidates(main, (0, 3), {main.uri: main})))


# -- 8: one huge edited line -------------------------------------------------------------------------------

def test_an_edit_on_a_huge_line_makes_no_snippet_and_nothing_huge_is_counted() -> None:
    huge = ["x = [" + "1, " * 2_000_000 + "]\n", "y = 2\n"]
    assert snippets.around("big.py", huge, 0) is None
    counted: list[int] = []
    big = snippets.Snippet("big.py", 0, 1, "def x():\n    " + "x, " * 10_000 + "\n", "edited")
    small = snippets.Snippet("small.py", 0, 2, "def x():\n    return 1\n", "edited")
    chosen = snippets.select([big, small], "x", "", 1000, lambda s: counted.append(len(s.text)) or 10)
    assert [c.snippet for c in chosen] == [small] and max(counted) <= snippets.MAX_SNIPPET_CHARS


# -- 9: a huge Instruct selection --------------------------------------------------------------------------

class CountingTokenizer:
    """One id per 4 characters; remembers the longest text it encoded and whether the event loop's thread did."""

    bos_id, eos_id = 1, 2

    def __init__(self) -> None:
        self.longest = 0
        self.on_loop_thread = False

    def encode(self, text: str) -> list[int]:
        self.longest = max(self.longest, len(text))
        self.on_loop_thread |= threading.current_thread() is threading.main_thread()
        return [3] * (len(text) // 4 + 1)


def instruct_call(code: str) -> tuple[Any, ...]:
    doc = Document.from_text("file:///big.py", code, 1, "python")
    tok = CountingTokenizer()
    # The editor side (instruct_actions.Editor): the refusal comes before anything is shown or applied.
    editor = SimpleNamespace(document={doc.uri: doc}.get, progress=lambda title: SimpleNamespace(report=lambda text: None))
    ready = SimpleNamespace(backend=SimpleNamespace(tokenizer=tok, context_length=4096))
    last = len(doc.lines) - 1
    whole = types.Range(start=types.Position(0, 0), end=types.Position(last, len(doc.lines[last])))
    call = instruct_actions.Call("explain", doc.uri, whole, 1, None, ())
    return tok, (editor, call, ready, Chat("codellama", "test", frozenset({2})), Settings(), None)


@pytest.mark.parametrize("code", ["x = [" + "1, " * 2_000_000 + "]", "x = 1\n" * 200_000], ids=["5 MB line", "200k lines"])
def test_a_huge_instruct_selection_is_refused_without_tokenizing_it(code: str) -> None:
    tok, args = instruct_call(code)
    answer = asyncio.run(instruct_actions.run(*args))
    assert "too long" in answer["error"] and "characters" in answer["error"]
    assert tok.longest < 1000


def test_an_instruct_selection_is_tokenized_off_the_event_loop() -> None:
    tok, args = instruct_call("value = compute(1, 2)\n" * 2000)  # too long in tokens, not in characters
    answer = asyncio.run(instruct_actions.run(*args))
    assert "too long" in answer["error"] and "tokens" in answer["error"]
    assert tok.longest > 40_000 and not tok.on_loop_thread


# -- 5 and 8 through the real server: a FIFO, /dev/zero and a 5 MB edit never hold codellama.status ------------

def change(uri: str, version: int, line: int, character: int, text: str) -> dict[str, Any]:
    at = {"line": line, "character": character}
    return {"textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": at, "end": at}, "text": text}]}


def test_status_is_answered_while_a_fifo_dev_zero_or_huge_edit_is_around(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "helper.py").write_text("def helper_value(a, b):\n    return a + b\n")
    main, big = (root / "main.py").as_uri(), (root / "big.py").as_uri()
    with RawServer(tiny_model_dir, tmp_path / "server.log") as s:
        s.request("initialize", {"processId": None, "rootUri": root.as_uri(), "capabilities": {},
                                 "initializationOptions": {"timeBudgetMs": 60000, "maxNewTokens": 4,
                                                           "contextTokens": 256}})
        s.notify("initialized", {})
        assert s.wait_loaded()["state"] == "ready"
        s.open(main, "from helper import helper_value\n\nx = helper_value(\n")
        s.open(big, "x = [" + "1, " * 1_700_000 + "]\n")
        s.notify("textDocument/didChange", change(big, 2, 0, 5, "2"))  # one keystroke on the 5 MB line
        version = 1

        def complete_then_status() -> None:
            nonlocal version
            version += 1
            s.notify("textDocument/didChange", change(main, version, 2, 17, "1"))
            s.send(frame({"jsonrpc": "2.0", "id": f"c{version}", "method": "textDocument/completion",
                          "params": {"textDocument": {"uri": main}, "position": {"line": 2, "character": 18}}}))
            status = s.request("workspace/executeCommand", {"command": "codellama.status"}, timeout=NO_HANG_S)
            assert status["result"]["model_verified"] is None  # not the default model
            s.response(f"c{version}")

        complete_then_status()
        swap_for_fifo(root / "helper.py")
        complete_then_status()
        swap_for_dev_zero(root / "helper.py")
        complete_then_status()
        assert s.alive() and s.violations == []
    assert "helper.py: not a regular file" in s.log()


# -- 6 and 7: clients that stop reading or die -------------------------------------------------------------

def read_until(stream: Any, msg_id: str) -> dict[str, Any]:
    """Messages from the server's stdout, read in order, up to the response to ``msg_id``."""
    while True:
        header = b""
        while not header.endswith(b"\r\n\r\n"):
            header += stream.read(1) or pytest.fail(f"output ended before the response to {msg_id}")
        message = strict_json(stream.read(int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])))
        if message.get("id") == msg_id and "method" not in message:
            return message


def test_a_client_that_stops_reading_ends_the_server(endless_model_dir: Path, tmp_path: Path) -> None:
    """Mid-generation, the client closes its end of the server's stdout but keeps stdin open."""
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "codellama_lsp", "--stdio", "--model", str(endless_model_dir),
                             "--log-file", str(log), "--threads", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert proc.stdin is not None and proc.stdout is not None

    def send(message: dict[str, Any]) -> None:
        proc.stdin.write(frame({"jsonrpc": "2.0", **message}))
        proc.stdin.flush()

    try:
        send({"id": "init", "method": "initialize", "params": {"processId": None, "capabilities": {},
              "initializationOptions": {"maxNewTokens": 2048, "temperature": 1.0, "timeBudgetMs": 60000}}})
        read_until(proc.stdout, "init")
        send({"method": "initialized", "params": {}})
        for i in range(600):
            send({"id": f"s{i}", "method": "workspace/executeCommand", "params": {"command": "codellama.status"}})
            if read_until(proc.stdout, f"s{i}")["result"]["state"] == "ready":
                break
            time.sleep(0.1)
        send({"method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///busy.py", "languageId": "python", "version": 1, "text": "import os\n\n"}}})
        send({"id": "busy", "method": "textDocument/completion", "params": {
            "textDocument": {"uri": "file:///busy.py"}, "position": {"line": 2, "character": 0}}})
        proc.stdout.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
    assert "closed its end of the output" in log.read_text()


def test_the_server_exits_when_the_clients_process_dies(tiny_model_dir: Path, tmp_path: Path) -> None:
    client = subprocess.Popen(["sleep", "600"])
    try:
        with RawServer(tiny_model_dir, tmp_path / "server.log") as s:
            s.request("initialize", {"processId": client.pid, "capabilities": {}})
            s.notify("initialized", {})
            time.sleep(0.5)
            assert s.alive()
            client.kill()  # not reaped: a zombie, which is dead too
            assert s.proc.wait(15) == 0
        assert f"the client's process {client.pid} has ended" in s.log()
    finally:
        client.kill()
        client.wait()


# -- 10: the packaging test's venv inside a venv -----------------------------------------------------------

def test_the_packaging_venv_sees_the_packages_of_an_outer_venv(tmp_path: Path) -> None:
    """The outer venv holds a module the base interpreter lacks; the venv made from it must import it."""
    outer = tmp_path / "outer"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(outer)], check=True, timeout=120)
    python = outer / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "only_in_the_outer_venv.py").write_text("VALUE = 42\n")
    make = ("import sys; from pathlib import Path; from test_packaging import venv_seeing_this_python; "
            "print(venv_seeing_this_python(Path(sys.argv[1]), pip=False))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    inner = subprocess.run([python, "-c", make, str(tmp_path / "inner")], env=env, capture_output=True, text=True,
                           timeout=120)
    assert inner.returncode == 0, inner.stderr
    out = subprocess.run([inner.stdout.strip(), "-c", "import only_in_the_outer_venv as m; print(m.VALUE)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "42", out.stderr
