"""VS Code end to end: code-server with the built .vsix, driven by Playwright in Chromium.

code-server listens on 127.0.0.1 (a free port) with workspace trust and telemetry off;
the extension starts the real ``codellama-lsp --stdio``. The driver (vscode_driver.mjs)
opens a Python file, types, waits for VS Code's inline-suggestion ghost text, presses Tab,
saves, and hovers a function. This test then checks that the saved file holds exactly
the text the server suggested (read from the LSP trace) and that the hover showed the
generated docstring. Screenshots land in tests/e2e/artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from codellama_lsp.devtools.llamacpp_server import free_port

from .conftest import ARTIFACTS, PY_SAMPLE, REPO, TOOLS, require

VSIX = REPO / "editors" / "vscode" / "codellama-lsp.vsix"
DRIVER = Path(__file__).resolve().parent / "vscode_driver.mjs"
NODE24 = TOOLS / "node24" / "bin" / "node"
CODE_SERVER = TOOLS / "code-server" / "bin" / "code-server"
PLAYWRIGHT_CORE = TOOLS / "playwright" / "node_modules" / "playwright-core"
CHROMIUM = Path("/usr/bin/chromium")
DRIVER_TIMEOUT_S = 1500  # generous: on a loaded 2-core machine the workbench alone can take minutes


def _check_tools() -> None:
    for path, what in (
        (NODE24, "node 24"),
        (CODE_SERVER, "code-server"),
        (PLAYWRIGHT_CORE / "package.json", "playwright-core"),
        (CHROMIUM, "chromium (apt)"),
        (VSIX, "the built .vsix (editors/vscode: npm run package)"),
    ):
        require(path.exists(), f"{what} is missing: {path}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{NODE24.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def code_server(code_server_factory, server_command: list[str]):
    return code_server_factory({
        "codellamaLsp.server.command": server_command[0],
        "codellamaLsp.server.args": server_command[1:],
    })


@pytest.fixture
def code_server_factory(tmp_path: Path):
    """Start code-server with the .vsix installed and these extension settings."""
    stack = contextlib.ExitStack()
    with stack:
        yield lambda extension_settings, files=None: stack.enter_context(
            _code_server(tmp_path, extension_settings, files or {}))


@contextlib.contextmanager
def _code_server(tmp_path: Path, extension_settings: dict, files: dict[str, str]):
    """``files``: more workspace files besides sample.py, by name."""
    _check_tools()
    ext_dir = tmp_path / "extensions"
    data_dir = tmp_path / "data"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "sample.py").write_text(PY_SAMPLE, encoding="utf-8")
    for name, text in files.items():
        (workspace / name).write_text(text, encoding="utf-8")
    user = data_dir / "User"
    user.mkdir(parents=True)
    settings = {
        **extension_settings,
        "codellamaLsp.trace.server": "verbose",
        "security.workspace.trust.enabled": False,
        "telemetry.telemetryLevel": "off",
        "workbench.startupEditor": "none",
        "workbench.secondarySideBar.defaultVisibility": "hidden",
        "workbench.tips.enabled": False,
        "workbench.enableExperiments": False,
        "extensions.autoUpdate": False,
        "extensions.autoCheckUpdates": False,
        "update.mode": "none",
        # Only the inline suggestion: no suggest widget competing for Tab.
        "editor.inlineSuggest.enabled": True,
        "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
        "editor.suggestOnTriggerCharacters": False,
        "editor.hover.delay": 200,
        "files.autoSave": "off",
        "files.insertFinalNewline": False,
        "files.trimTrailingWhitespace": False,
    }
    (user / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")

    base = [str(CODE_SERVER), "--extensions-dir", str(ext_dir), "--user-data-dir", str(data_dir)]
    install = subprocess.run(
        base + ["--install-extension", str(VSIX)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert any(ext_dir.glob("codellama-lsp.codellama-lsp-*")), install.stdout + install.stderr

    port = free_port()
    log_path = tmp_path / "code-server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        base
        + [
            "--auth", "none",
            "--bind-addr", f"127.0.0.1:{port}",
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
            "--disable-getting-started-override",
            "--ignore-last-opened",
            "--log", "trace",  # so the extension's LSP trace channel records the server's answers
            str(workspace),
        ],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"code-server did not start:\n{log_path.read_text()}", pytrace=False)
        time.sleep(0.3)
    try:
        yield {"url": f"{url}?folder={workspace}", "workspace": workspace, "data": data_dir, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _server_suggestions(data_dir: Path) -> list[str]:
    """insertText of every inlineCompletion answer in the extension's LSP trace."""
    texts: list[str] = []
    for log in sorted(data_dir.glob("logs/**/*Code Llama LSP Trace*.log")):
        trace = log.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"Received response 'textDocument/inlineCompletion - \(\d+\)'.*?\nResult: ", trace):
            result, _ = json.JSONDecoder().raw_decode(trace, m.end())
            items = result.get("items", []) if isinstance(result, dict) else (result or [])
            for item in items:
                t = item.get("insertText")
                texts.append(t["value"] if isinstance(t, dict) else t)
    return texts


def _drive(cfg: dict, tmp_path: Path, code_server: dict) -> tuple[dict, str]:
    """Run the Playwright driver; its result and, for failure messages, what happened."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_path / "driver.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    proc = subprocess.run(
        [str(NODE24), str(DRIVER), str(cfg_path)],
        env=_env(), capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
    )
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    context = f"driver stderr:\n{proc.stderr[-4000:]}\ncode-server log:\n{code_server['log'].read_text()[-3000:]}"
    assert proc.returncode == 0 and not result.get("error"), f"{result.get('error')}\n{context}"
    return result, context


def _extension_log(data_dir: Path) -> str:
    """The extension's "Code Llama LSP" output channel (the LSP trace has a channel of its own)."""
    return "".join(p.read_text(encoding="utf-8", errors="replace")
                   for p in sorted(data_dir.glob("logs/**/*Code Llama LSP.log")))


def test_vscode_bad_server_command(code_server_factory, tmp_path: Path):
    """A server command that is not there: a notification names it and the setting to change,
    its button opens that setting, and the status item shows the error."""
    missing = "codellama-lsp-not-installed"
    server = code_server_factory({"codellamaLsp.server.command": missing})
    result, context = _drive({
        "playwrightCore": str(PLAYWRIGHT_CORE),
        "chromium": str(CHROMIUM),
        "url": server["url"],
        "file": "sample.py",
        "mode": "startFailure",
        "artifacts": str(ARTIFACTS),
        "timeoutMs": 300000,
    }, tmp_path, server)
    note = result["notificationText"]
    assert f"cannot start the server: `{missing}` is not on PATH" in note, note
    assert "codellamaLsp.server.command" in note and "pip install torch==2.13.0 && pip install -e '.[qwen]'" in note, note
    assert f"Code Llama error: cannot start the server: `{missing}`" in result["statusLabel"], result["statusLabel"]
    assert result.get("settingsOpened")
    assert f"cannot start the server: `{missing}`" in _extension_log(server["data"]), context


def test_vscode_inline_suggestion_tab_and_hover(code_server, tmp_path: Path):
    cfg = {
        "playwrightCore": str(PLAYWRIGHT_CORE),
        "chromium": str(CHROMIUM),
        "url": code_server["url"],
        "file": "sample.py",
        # Typed at the end of the file; Enter auto-indents the body.
        "typeChunks": ["def greet(name):", "\n", "return", " ", "n", "a"],
        "waitFrom": 3,  # look for ghost text once the cursor is past the indentation
        "hoverWord": "add",
        "artifacts": str(ARTIFACTS),
        "timeoutMs": 300000,
    }
    result, context = _drive(cfg, tmp_path, code_server)

    saved = (code_server["workspace"] / "sample.py").read_text(encoding="utf-8")
    assert saved.startswith(PY_SAMPLE), saved
    added = saved[len(PY_SAMPLE):]

    # What was typed before the ghost text showed (Enter auto-indents the body).
    typed_variants = [""]
    for chunk in cfg["typeChunks"][: result["chunksTyped"]]:
        typed_variants = [t + c for t in typed_variants for c in (["\n", "\n    "] if chunk == "\n" else [chunk])]

    # The accepted text is what the server suggested: saved = typed + suggestion.
    suggestions = _server_suggestions(code_server["data"])
    assert suggestions, f"no inlineCompletion answer in the LSP trace\n{context}"
    accepted = [s for s in suggestions if s and any(added == t + s for t in typed_variants)]
    assert accepted, f"the file's new text {added!r} is not typed text + a server suggestion {suggestions!r}"
    body = accepted[-1]

    # The DOM ghost text was that suggestion too.
    ghost = result["ghostText"]
    # VS Code draws spaces as U+00A0 and control characters as U+2400 + code ("control pictures").
    def plain(text: str) -> str:
        text = "".join(chr(ord(c) - 0x2400) if "\u2400" <= c <= "\u241f" else c for c in text)
        return "".join(text.replace("\u00a0", " ").split())  # compare without whitespace

    drawn = plain(ghost["inline"] + "".join(ghost["lines"]))
    assert drawn and drawn in plain(body), (ghost, body)

    # The hover showed the generated docstring for `add`.
    assert "add" in result["hoverText"] and "generated docstring" in result["hoverText"], result["hoverText"]
    assert (ARTIFACTS / "vscode.png").is_file()

    # "Toggle Suggestions" wrote the setting and sent it to the server live.
    assert result.get("toggledOff")
    user_settings = json.loads((code_server["data"] / "User" / "settings.json").read_text(encoding="utf-8"))
    assert user_settings.get("codellamaLsp.enabled") is False
    trace = "".join(p.read_text(encoding="utf-8", errors="replace")
                    for p in code_server["data"].glob("logs/**/*Code Llama LSP Trace*.log"))
    change = trace.rfind("Sending notification 'workspace/didChangeConfiguration'")
    assert change >= 0 and '"enabled": false' in trace[change:change + 2000], trace[change:change + 2000]

    # The status bar item opens the status: the model is loaded, suggestions are off.
    assert "Code Llama: ready" in result["statusText"] and "suggestions off" in result["statusText"], result["statusText"]

    # The server logged through the LSP: its lines are at their own level in the output
    # channel, and a healthy session has no error among them.
    log = _extension_log(code_server["data"])
    assert re.search(r"\[info\] codellama_lsp: model ready", log), log[-3000:]
    errors = [line for line in log.splitlines() if "[error]" in line]
    assert not errors, "\n".join(errors)


def test_vscode_default_model_at_default_settings_ghost_text_and_docstring(code_server_factory, server_command: list[str],
                                                                         real_gguf: Path, tmp_path: Path):
    """What a user gets: the server started as the extension starts it, on the real default model,
    every setting at its default, on a standard-library file (fnmatch.py). Typing shows a real
    ghost text (the time budget is for generation, so the first suggestion at a new place is not a
    one-token fragment), the resting cursor is told to the server (codellama/cursorRest), the
    extension leaves the CPU's budgets to the server (it sends no prefixTokens of its own), and
    hovering an undocumented function shows a generated docstring."""
    import fnmatch
    import inspect

    source = inspect.getsource(fnmatch)
    lines = source.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("def _compile_pattern("))
    assert not lines[at + 1].strip().startswith(('"""', "'''")), "the function must be undocumented"
    server = code_server_factory({
        "codellamaLsp.server.command": server_command[0],
        "codellamaLsp.server.args": ["--stdio", "--model", str(real_gguf)],
    }, {"fnmatch.py": source})
    result, context = _drive({
        "playwrightCore": str(PLAYWRIGHT_CORE),
        "chromium": str(CHROMIUM),
        "url": server["url"],
        "file": "fnmatch.py",
        "typeChunks": ["def greet(name):", "\n", "return", " ", "f", "\"", "H"],
        "waitFrom": 3,
        "hoverWord": "_compile_pattern",
        "hoverLine": at + 1,
        "artifacts": str(ARTIFACTS),
        # The first prompt in this 190-line file is a cold one of several hundred tokens, and each
        # chunk typed supersedes the last: on a busy 2-core machine a chunk may wait tens of seconds.
        "timeoutMs": 300000,
    }, tmp_path, server)
    ghost = result["ghostText"]
    drawn = (ghost["inline"] + "".join(ghost["lines"])).replace("\u00a0", " ").strip()
    assert len(drawn) > 1, (ghost, context)
    hover = result["hoverText"]
    docstring = hover.split("(generated docstring)", 1)[-1].strip()
    assert len(docstring.split()) >= 3, (hover, context)  # a sentence, not an empty or one-word answer
    trace = "".join(p.read_text(encoding="utf-8", errors="replace")
                    for p in server["data"].glob("logs/**/*Code Llama LSP Trace*.log"))
    assert "Sending notification 'codellama/cursorRest'" in trace
    assert '"prefixTokens"' not in trace.split("Sending notification 'workspace/didChangeConfiguration'")[0]


def test_vscode_instruct_edit_selection_on_the_real_model(code_server_factory, server_command: list[str],
                                                         real_gguf: Path, tmp_path: Path):
    """On the real default model, with short answers: the Refactor menu offers the Instruct actions;
    "Edit selection…" asks for the instruction in an input box, and the server's edit replaces the
    selection (the whole file), which is saved; "Explain" opens its answer as a markdown preview."""
    server = code_server_factory({
        "codellamaLsp.server.command": server_command[0],
        "codellamaLsp.server.args": ["--stdio", "--model", str(real_gguf), "--threads", "1"],
        "codellamaLsp.instructMaxTokens": 128,
    })
    result, context = _drive({
        "playwrightCore": str(PLAYWRIGHT_CORE),
        "chromium": str(CHROMIUM),
        "url": server["url"],
        "file": "sample.py",
        "mode": "instruct",
        "instruction": "rename the function to plus",
        "artifacts": str(ARTIFACTS),
        "timeoutMs": 300000,
    }, tmp_path, server)
    assert any("codellama: Explain" in a for a in result["actions"]), result["actions"]
    saved = (server["workspace"] / "sample.py").read_text(encoding="utf-8")
    trace = "".join(p.read_text(encoding="utf-8", errors="replace")
                    for p in server["data"].glob("logs/**/*Code Llama LSP Trace*.log"))
    answers = [json.JSONDecoder().raw_decode(trace, m.end())[0] for m in
               re.finditer(r"Received response 'workspace/executeCommand - \(\d+\)'.*?\nResult: ", trace)]
    edits = [a for a in answers if isinstance(a, dict) and a.get("action") == "edit"]  # not codellama.status's
    assert edits, f"no codellama.instruct answer in the LSP trace\n{context}"
    answer = edits[-1]
    assert answer.get("applied") is True and "plus" in answer["text"], answer
    assert saved == answer["text"], (saved, answer)
    explained = [a for a in answers if isinstance(a, dict) and a.get("action") == "explain"]
    assert explained and explained[-1]["markdown"].strip(), answers
    assert "Preview" in result["previewTab"], result["previewTab"]


def test_vscode_remote_backend_from_settings(code_server_factory, server_command: list[str], tmp_path: Path):
    """A team deployment set from VS Code's settings alone: `codellamaLsp.backend` and its key's
    environment variable from the extension's own settings, the `url` and `apiKeyEnv` from a
    `codellama` section in settings.json (team-deployment.md's form, passed through by the
    extension). The ghost text Tab accepts is the remote server's answer: llama-cpp-python's
    server, on the demo model exported as GGUF, logs the completion requests, which need its key."""
    from codellama_lsp.devtools.llamacpp_server import LlamaCppServer
    from codellama_lsp.engine.gguf_export import export_gguf
    from llamacpp_support import llamacpp_model_dir

    key_env, key = "CODELLAMA_E2E_REMOTE_KEY", "sk-e2e-remote-7c3a"
    scratch = tmp_path / "llamacpp"
    scratch.mkdir()
    gguf = export_gguf(llamacpp_model_dir(scratch), scratch / "model.gguf")
    remote = LlamaCppServer(gguf, scratch / "llama-server.log", api_key=key)
    try:
        server = code_server_factory({
            "codellamaLsp.server.command": server_command[0],
            "codellamaLsp.server.args": ["--stdio"],  # no --model: a remote backend loads no weights
            "codellamaLsp.server.env": {key_env: key},
            "codellamaLsp.backend": "openai",
            "codellamaLsp.tokenizer": str(gguf),  # the served model's own vocabulary
            "codellama": {"url": remote.url + "/v1", "apiKeyEnv": key_env},
        })
        result, context = _drive({
            "playwrightCore": str(PLAYWRIGHT_CORE),
            "chromium": str(CHROMIUM),
            "url": server["url"],
            "file": "sample.py",
            "typeChunks": ["def greet(name):", "\n", "return", " ", "n", "a"],
            "waitFrom": 3,
            "hoverWord": "add",
            "artifacts": str(ARTIFACTS),
            "timeoutMs": 300000,
        }, tmp_path, server)
        served = remote.read_log()
    finally:
        remote.stop()

    added = (server["workspace"] / "sample.py").read_text(encoding="utf-8")[len(PY_SAMPLE):]
    suggestions = [s for s in _server_suggestions(server["data"]) if s]
    assert any(added.endswith(s) for s in suggestions), (added, suggestions, context)
    # The requests reached the remote server, with its key (a request without it is refused with 401).
    assert re.search(r'"POST /v1/completions HTTP/1\.1" 200', served), served[-3000:]
    assert " 401 " not in served, served[-3000:]
    # The server was told the remote backend by the extension, from both places at once.
    trace = "".join(p.read_text(encoding="utf-8", errors="replace")
                    for p in server["data"].glob("logs/**/*Code Llama LSP Trace*.log"))
    start = trace.find("Sending request 'initialize")
    init = trace[start:trace.find("Received response 'initialize", start)]
    assert '"backend": "openai"' in init and f'"url": "{remote.url}/v1"' in init, init
    assert key not in trace and key not in _extension_log(server["data"])
    assert re.search(r"model ready: .* engine openai", _extension_log(server["data"])), _extension_log(server["data"])[-3000:]
