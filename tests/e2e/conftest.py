"""Shared pieces of the editor end-to-end tests (VS Code via code-server, Neovim headless).

A missing editor dependency fails these tests; it is never a skip. Everything they need
is installed by ``scripts/setup-editors.sh``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
BUNDLED_MODEL = REPO / "codellama_lsp" / "demo_model"
# Where scripts/setup-editors.sh puts node 24, code-server and playwright-core.
TOOLS = Path(os.environ.get("CODELLAMA_EDITORS_HOME", Path.home() / ".cache" / "codellama-lsp-editors"))

PY_SAMPLE = '''def add(a, b):
    return a + b


'''


def require(condition: bool, message: str) -> None:
    """Fail (never skip) when an editor dependency is missing."""
    if not condition:
        pytest.fail(f"{message} (run scripts/setup-editors.sh)", pytrace=False)


def bundled_model_ready() -> bool:
    has_weights = any(BUNDLED_MODEL.glob("*.safetensors")) or any(BUNDLED_MODEL.glob("*.pth"))
    return (BUNDLED_MODEL / "config.json").is_file() and has_weights


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def e2e_model(request: pytest.FixtureRequest) -> Path | None:
    """The demo model, named explicitly: the server's default is the real model when it is
    installed, which is slower to load and whose suggestions these suites do not pin down.
    Else a tiny random model, while the demo one is absent (garbage text, but the whole path runs)."""
    if bundled_model_ready():
        return BUNDLED_MODEL
    return request.getfixturevalue("tiny_model_dir")


@pytest.fixture(scope="session")
def server_command(e2e_model: Path | None) -> list[str]:
    """The command line an editor uses to start the language server."""
    override = os.environ.get("CODELLAMA_E2E_SERVER")  # for debugging the clients alone
    if override:
        return override.split()
    exe = shutil.which("codellama-lsp") or str(Path(sys.executable).with_name("codellama-lsp"))
    require(Path(exe).is_file(), "the codellama-lsp console script is not installed (pip install -e .)")
    cmd = [exe, "--stdio"]
    if e2e_model is not None:
        cmd += ["--model", str(e2e_model)]
    return cmd


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)
