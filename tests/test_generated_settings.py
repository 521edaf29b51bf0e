"""The editors' settings and the docs' tables are generated from the one schema, and kept fresh.

``scripts/generate_settings.py --check`` is what fails here when a setting changed in
``codellama_lsp/settings.py`` and the generator was not run; the copies in ``tmp_path`` show
that the check does catch a stale file, and that running the generator mends it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from codellama_lsp.settings import SCHEMA

REPO = Path(__file__).resolve().parents[1]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_settings", REPO / "scripts" / "generate_settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_files_are_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    assert generator().main(["--check"]) == 0, capsys.readouterr().err


def copy_targets(gen: ModuleType, root: Path) -> None:
    for name in gen.TARGETS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)


@pytest.mark.parametrize("name, old, new", [
    ("editors/vscode/package.json", '"maximum": 1024', '"maximum": 2048'),
    ("editors/vscode/src/settings.ts", '  "apiKeyEnv",\n', ""),
    ("editors/neovim/lua/codellama/config.lua", "    tokenizer = nil,", "    tokeniser = nil,"),
    ("README.md", "| `suffixTokens` | `256`; `64`", "| `suffixTokens` | `256`"),
    ("docs/server.md", "Flag: `--device`.", ""),
])
def test_a_stale_file_fails_the_check_until_generated(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                                      old: str, new: str) -> None:
    gen = generator()
    copy_targets(gen, tmp_path)
    path = tmp_path / name
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    assert gen.main(["--check", "--root", str(tmp_path)]) == 1
    assert f"stale: {path}" in capsys.readouterr().err
    assert gen.main(["--root", str(tmp_path)]) == 0
    assert path.read_text(encoding="utf-8") == text
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0


def test_vscode_contributes_every_server_setting_and_keeps_its_own() -> None:
    props = json.loads((REPO / "editors/vscode/package.json").read_text())["contributes"]["configuration"]["properties"]
    for s in SCHEMA:
        prop = props[f"codellamaLsp.{s.key}"]
        assert prop["enum"] == list(s.spec.choices) if s.spec.choices else "enum" not in prop
        # null (the server's default) where the default depends on the device or is none
        assert (prop["default"] is None) == (s.default is None or s.spec.cpu is not None), s.key
    assert {"codellamaLsp.server.command", "codellamaLsp.languages", "codellamaLsp.trace.server"} <= props.keys()
    assert props["codellamaLsp.backend"]["enum"] == ["local", "openai", "vllm", "tgi", "llamacpp"]
