"""Server processes of their own: negotiated encodings, settings sources, broken models, exit."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

from lsprotocol import types

from codellama_lsp.devtools.lsp_client import stop
from lsp_harness import start

LINE = 'name = "😀 日本語 😀" + suffix\n'


async def test_settings_from_initialization_options_and_workspace_configuration(tiny_model_dir: Path, tmp_path: Path) -> None:
    client = await start(tiny_model_dir, tmp_path / "server.log", options={"codellama": {"format": "spm", "prefixTokens": 300}},
                         initialize=False)
    client.configuration = {"suffixTokens": 64, "temperature": 0.5}
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(configuration=True)),
        initialization_options={"codellama": {"format": "spm", "prefixTokens": 300}}))
    client.initialized(types.InitializedParams())
    try:
        # Asked before the model has loaded: answered empty, at once.
        client.open("file:///early.py", "def f(x):\n    return x\n")
        early = await client.inline("file:///early.py", 1, 11)
        if (await client.status())["state"] != "ready":
            assert early == ""  # answered while the model was still loading, not after it
        status = await client.wait_loaded()
        settings = status["settings"]
        assert (settings["format"], settings["prefix_tokens"], settings["suffix_tokens"], settings["temperature"]) == \
            ("spm", 300, 64, 0.5)
        client.open("file:///spm.py", "def f(x):\n    return x\n")
        assert isinstance(await client.inline("file:///spm.py", 1, 11), str)
        # A change of model path reloads the model: a bad one is reported and completions go quiet.
        await client.configure(model=str(tmp_path / "nowhere"))
        status = await client.wait_loaded()
        assert status["state"] == "failed"
        assert f"cannot load the model at {tmp_path / 'nowhere'}: " in client.messages[-1].message
        assert "is not a directory" in client.messages[-1].message
        assert await client.inline("file:///spm.py", 1, 11) == ""
    finally:
        await stop(client)


async def test_context_length_is_planned_shown_and_reloads(tiny_model_dir: Path, tmp_path: Path) -> None:
    """contextLength sizes the KV cache (status: context_length, kv_bytes); a change reloads; too long is refused."""
    per_position = 2 * 2 * 2 * 16 * 4  # the tiny model: 2 layers, 2 KV heads of 16, float32
    client = await start(tiny_model_dir, tmp_path / "server.log", options={"codellama": {"contextLength": 3000}})
    try:
        status = await client.wait_loaded()
        assert (status["context_length"], status["kv_bytes"]) == (3000, 3000 * per_position)
        plan = status["memory_plan"]
        assert plan["bytes_per_position"] == per_position and plan["available_bytes"] > plan["kv_bytes"]
        assert plan["prompt_cache_full_sequences"] == plan["prompt_cache_budget_bytes"] // (3000 * per_position)
        await client.configure(contextLength=200_000)
        status = await client.wait_loaded()
        assert status["state"] == "failed" and "contextLength 200000 exceeds this model's 100000 positions" in status["error"]
        await client.configure(contextLength=8192)  # past the 2048 it declares: its RoPE base is 1e6
        status = await client.wait_loaded()
        assert (status["state"], status["context_length"], status["kv_bytes"]) == ("ready", 8192, 8192 * per_position)
        client.open("file:///a.py", "def f(x):\n    return x\n")
        assert isinstance(await client.inline("file:///a.py", 1, 11), str)
    finally:
        await stop(client)


async def test_budgets_beyond_the_context_are_cut_with_one_warning(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A 2048-token window; these budgets ask for 4,564, and the file is long enough to fill them.
    client = await start(tiny_model_dir, tmp_path / "server.log",
                         options={"codellama": {"prefixTokens": 4000, "suffixTokens": 500, "maxNewTokens": 8,
                                                "contextLength": 2048}})
    try:
        await client.wait_loaded()
        client.open("file:///long.py", "".join(f"value_{i} = compute({i}, 'item {i}')\n" for i in range(3000)))
        for line in (1500, 1501):
            assert isinstance(await client.inline("file:///long.py", line, 0), str)
        status = await client.status()
        assert "failed" not in status["requests"]  # without the cut, the engine refuses the 4,500-token prompt
        assert status["requests"]["completion"] == 2
        (warning,) = [m for m in client.messages if "context" in m.message]  # shown once, not per keystroke
        assert warning.type == types.MessageType.Warning
        assert "exceed the model's 2048-token context" in warning.message and "prefixTokens 4000" in warning.message
    finally:
        await stop(client)


async def test_format_auto_follows_the_models_declared_preference(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "prefers-spm"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "infilling_format": "spm"}))
    client = await start(model, tmp_path / "server.log")
    try:
        status = await client.wait_loaded()
        assert (status["settings"]["format"], status["format"]) == ("auto", "spm")
        await client.configure(format="psm")  # an explicit setting wins over the model's preference
        assert (await client.status())["format"] == "psm"
    finally:
        await stop(client)
    client = await start(tiny_model_dir, tmp_path / "plain.log")  # a config without the key: PSM, Code Llama's
    try:
        assert (await client.wait_loaded())["format"] == "psm"
    finally:
        await stop(client)


def _corrupt(tmp_path: Path, tiny_model_dir: Path) -> Path:
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (bad / "tokenizer.model").write_bytes((tiny_model_dir / "tokenizer.model").read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    return bad


async def test_corrupt_model_is_reported_and_the_server_stays_up(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = _corrupt(tmp_path, tiny_model_dir)
    client = await start(path, tmp_path / "server.log")
    try:
        status = await client.wait_loaded()
        assert status["state"] == "failed" and status["error"]
        (message,) = [m for m in client.messages if m.type == types.MessageType.Error]
        assert str(path) in message.message
        assert "not a readable safetensors file" in message.message
        client.open("file:///a.py", "x = 1\n")
        assert await client.inline("file:///a.py", 0, 5) == ""
        assert await client.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri="file:///a.py"), position=types.Position(0, 0))) is None
        assert (await client.status())["state"] == "failed"
    finally:
        await stop(client)


async def _exits_mid_request(client) -> int:
    """The exit code, once the process has ended without finishing the request ``_busy`` started.

    The server logs every finished completion ("N generated, stop ..."); none for busy.py
    means the process ended while the engine was still writing, rather than waiting for it.
    The wait is a no-hang bound only.
    """
    code = await asyncio.wait_for(client.process.wait(), 30)
    log = client.log_file.read_text(encoding="utf-8", errors="replace")
    assert not any("busy.py" in line and " generated, stop " in line for line in log.splitlines()), log[-2000:]
    return code


async def _busy(client) -> None:
    """Start a long completion and leave it running."""
    await client.wait_loaded()
    await client.configure(maxNewTokens=1024, temperature=1.0)  # sampled: greedy would soon loop, and stop
    client.open("file:///busy.py", "import os\n\n")
    asyncio.ensure_future(client.inline("file:///busy.py", 2, 0))
    await client.wait_writing("file:///busy.py")


async def test_exit_paths_end_the_process_while_a_request_runs(endless_model_dir: Path, tmp_path: Path) -> None:
    """shutdown + exit (code 0), exit alone (code 1), stdin closed (code 0): each while a request runs."""
    clients = await asyncio.gather(*(start(endless_model_dir, tmp_path / f"server{i}.log") for i in range(3)))
    await asyncio.gather(*(c.wait_loaded() for c in clients))
    with_shutdown, without, closed = clients
    # One at a time, so that only one busy engine competes with the process handling its exit.
    await _busy(with_shutdown)
    assert await with_shutdown.shutdown_async(None) is None
    with_shutdown.exit(None)
    assert await _exits_mid_request(with_shutdown) == 0
    await _busy(without)
    without.exit(None)
    assert await _exits_mid_request(without) == 1
    await _busy(closed)
    closed.process.stdin.close()
    assert await _exits_mid_request(closed) == 0
    for c in clients:
        await c.stop()


def test_nothing_but_json_rpc_on_stdout(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Everything the server writes to stdout, start to exit, parses as framed JSON-RPC."""
    import json
    import subprocess

    def frame(payload: dict) -> bytes:
        body = json.dumps(payload).encode()
        return b"Content-Length: %d\r\n\r\n" % len(body) + body

    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}},
        {"jsonrpc": "2.0", "method": "initialized", "params": {}},
        {"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand", "params": {"command": "codellama.status"}},
        {"jsonrpc": "2.0", "id": 3, "method": "shutdown"},
        {"jsonrpc": "2.0", "method": "exit"},
    ]
    done = subprocess.run([sys.executable, "-m", "codellama_lsp", "--stdio", "--model", str(tiny_model_dir)],
                          input=b"".join(map(frame, messages)), capture_output=True, timeout=60)
    out = done.stdout
    received = []
    while out:
        header, _, rest = out.partition(b"\r\n\r\n")
        length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        received.append(json.loads(rest[:length]))
        out = rest[length:]
    assert [m["id"] for m in received if "id" in m] == [1, 2, 3]
    assert done.returncode == 0
    # The log went to the client as window/logMessage, each line at its level, not to stderr
    # (editors file a server's stderr as errors).
    logged = [m["params"] for m in received if m.get("method") == "window/logMessage"]
    assert any(p["type"] == 3 and p["message"].startswith("codellama_lsp: ") for p in logged), logged
    assert b"INFO" not in done.stderr, done.stderr
    # Nothing is sent before initialize has been answered (the log before it waits; LSP allows
    # no notification before the InitializeResult but during the request).
    first_log = next(i for i, m in enumerate(received) if m.get("method") == "window/logMessage")
    assert received.index(next(m for m in received if m.get("id") == 1)) < first_log


def test_version_and_help() -> None:
    import subprocess

    from codellama_lsp import __version__

    out = subprocess.run([sys.executable, "-m", "codellama_lsp", "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == f"codellama-lsp {__version__}"
    out = subprocess.run([sys.executable, "-m", "codellama_lsp", "--help"], capture_output=True, text=True, timeout=30)
    for flag in ("--stdio", "--tcp", "--host", "--port", "--model", "--device", "--dtype", "--engine", "--log-file",
                 "--log-level", "complete"):
        assert flag in out.stdout


def test_complete_prints_the_suggestion(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``codellama-lsp complete`` goes the server's way: same context, budgets for the device, prompt, engine and
    post-processing."""
    import subprocess

    import torch

    from codellama_lsp.completion.planning import generation_request, plan, shown

    from codellama_lsp.completion.families import detect
    from codellama_lsp.completion.context import TokenCounter
    from codellama_lsp.documents import Document
    from codellama_lsp.engine.engine import Engine
    from codellama_lsp.settings import Settings, apply, for_backend

    source = tmp_path / "add.py"
    # Long enough before the cursor that the CPU's prefix budget (512 tokens, not 1024) shapes the prompt.
    text = "".join(f"def add{i}(a, b):\n    return a + b + {i}\n\n" for i in range(60)) + "def add(a, b):\n    return a + b\n"
    source.write_text(text)
    line = text.count("\n")
    out = subprocess.run([sys.executable, "-m", "codellama_lsp", "complete", str(source), "--line", str(line),
                          "--column", "12", "--model", str(tiny_model_dir), "--format", "spm", "--max-new-tokens", "8",
                          "--threads", "1", "--min-confidence", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    torch.set_num_threads(1)
    engine = Engine.load(tiny_model_dir, device="cpu")
    asked, _ = apply(Settings(), {"format": "spm", "maxNewTokens": 8, "timeBudgetMs": 60_000})
    settings, _ = for_backend(asked, engine)
    doc = Document.from_text(source.as_uri(), text, encoding="utf-32")
    counter = TokenCounter(engine.tokenizer.encode)
    p = plan(doc, doc.cursor(line - 1, 11), settings, detect(engine.tokenizer), engine.tokenizer, counter,
             heal=settings.token_healing and engine.heals)
    gpu = plan(doc, doc.cursor(line - 1, 11), asked, detect(engine.tokenizer), engine.tokenizer, counter)
    assert len(p.token_ids) < len(gpu.token_ids)  # the CPU's budgets, as the server would use
    assert out.stdout == shown(engine.generate(generation_request(p, settings)), p) + "\n"


async def test_tcp_binds_localhost(tiny_model_dir: Path, tmp_path: Path) -> None:
    import socket

    from codellama_lsp.devtools.lsp_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codellama_lsp", "--tcp", "--port", str(port), "--model", str(tiny_model_dir),
        "--log-file", str(tmp_path / "server.log"))
    try:
        client = Client()
        for _ in range(300):  # until it listens
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        result = await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities()))
        assert result.server_info.name == "codellama-lsp"
        await client.shutdown_async(None)
        client.exit(None)
        await asyncio.wait_for(server.wait(), 10)
        await client.stop()
    finally:
        if server.returncode is None:
            server.kill()
