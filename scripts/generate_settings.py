"""Write every list of the server's settings from the one schema, ``codellama_lsp.settings``.

    python scripts/generate_settings.py          # rewrite what is stale
    python scripts/generate_settings.py --check  # exit 1, naming the stale files, when any is

Generated: VS Code's settings (``package.json``'s ``contributes.configuration`` and the key
lists in ``src/settings.ts``), Neovim's server-setting defaults (``config.lua``, its help and
editors/README.md's ``setup{}`` block) and the settings tables of README.md, docs/server.md and
editors/README.md. Each generated part sits between BEGIN and END marker lines; the text
around them is written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

from codellama_lsp.settings import SCHEMA, SECTION, Setting

VSCODE_SECTION = "codellamaLsp"
# Neovim's plugin owns `enabled` (:CodeLlamaToggle) and sends it itself, so its `settings` table has no entry.
NEOVIM_OWN = {"enabled"}
BEGIN, END = "BEGIN generated settings", "END generated settings"


def _plain(text: str) -> str:
    return text.replace("`", "")


def _null_means(s: Setting) -> str | None:
    """What an editor's null (the server's default) means, for the settings whose default is not one value;
    "" for those whose default is none."""
    if s.default is None or s.spec.cpu is not None:
        return "" if s.default_words() == "none" else s.default_words()
    return None


def _notes(s: Setting) -> str:
    """The parts of a description every editor shows: the default when it depends, and a reload."""
    parts = [s.spec.description]
    if s.spec.reloads:
        parts.append("Changing it reloads the model.")
    return " ".join(parts)


# -- VS Code ---------------------------------------------------------------------------------------------

def vscode_property(s: Setting) -> dict[str, Any]:
    """``s`` as a VS Code configuration property; null (the server's default) where the default depends."""
    json_type = {bool: "boolean", int: "integer", float: "number", str: "string"}[s.kind]
    null_means = _null_means(s)
    prop: dict[str, Any] = {"type": [json_type, "null"] if null_means is not None else json_type,
                            "default": None if null_means is not None else s.default}
    if s.spec.choices:
        prop["enum"] = list(s.spec.choices)
        if s.spec.choice_notes:
            prop["enumDescriptions"] = list(s.spec.choice_notes)
    if s.spec.bounds is not None:
        lo, hi = s.spec.bounds
        prop["minimum"], prop["maximum"] = (int(lo), int(hi)) if s.kind is int or float(lo).is_integer() and \
            float(hi).is_integer() else (lo, hi)
    if s.spec.pattern is not None:
        prop["pattern"] = f"^\\s*({s.spec.pattern})\\s*$"
        prop["patternErrorMessage"] = f"Expected {_plain(s.spec.accepts)}."
    prop["markdownDescription"] = _notes(s) + (f" `null`: the server's default, {null_means}." if null_means else "")
    return prop


def package_json(text: str) -> str:
    """package.json with its server settings' properties made from the schema; the editor's own are kept."""
    pkg = json.loads(text)
    props: dict[str, Any] = pkg["contributes"]["configuration"]["properties"]
    server = {f"{VSCODE_SECTION}.{s.key}" for s in SCHEMA}
    own = {k: v for k, v in props.items() if k not in server}
    last = {k: v for k, v in own.items() if k.startswith(f"{VSCODE_SECTION}.trace.")}  # the trace stays at the end
    merged = {k: v for k, v in own.items() if k not in last}
    merged.update({f"{VSCODE_SECTION}.{s.key}": vscode_property(s) for s in SCHEMA})
    merged.update(last)
    pkg["contributes"]["configuration"]["properties"] = merged
    return json.dumps(pkg, indent=2, ensure_ascii=False) + "\n"


def settings_ts() -> list[str]:
    keys = "\n".join(f'  "{s.key}",' for s in SCHEMA)
    reloads = ", ".join(f'"{s.key}"' for s in SCHEMA if s.spec.reloads)
    return ["/** Settings the server reads (initializationOptions, workspace/configuration, didChangeConfiguration). */",
            "export const SERVER_KEYS = [", *keys.split("\n"), "] as const;",
            "/** Server settings whose change reloads the model. */",
            f"export const RELOAD_KEYS: readonly string[] = [{reloads}];"]


# -- Neovim ----------------------------------------------------------------------------------------------

def _lua_comment(s: Setting) -> str:
    return _plain(f"{s.spec.description} Default: {s.default_words()}.")


def lua_block(indent: str, width: int) -> Callable[[], list[str]]:
    """The ``settings`` entries of a ``setup{}`` example, comments wrapped to ``width`` columns."""
    def render() -> list[str]:
        lines = []
        for s in SCHEMA:
            if s.key in NEOVIM_OWN:
                continue
            head = f"{indent}{s.key} = nil,"
            column = max(len(indent) + 22, len(head) + 1)
            wrapped = textwrap.wrap(_lua_comment(s), width - column - 3)
            lines.append(f"{head.ljust(column)}-- {wrapped[0]}")
            lines.extend(f"{' ' * column}-- {more}" for more in wrapped[1:])
        return lines
    return render


# -- Markdown tables -------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme_table() -> list[str]:
    rows = [f"| `{s.key}` | {_cell(s.default_words())} | {_cell(s.spec.description)} |" for s in SCHEMA]
    return ["| Setting | Default | What it does |", "|---|---|---|", *rows]


def server_table() -> list[str]:
    rows = []
    for s in SCHEMA:
        how = [s.spec.description]
        if s.spec.reloads:
            how.append("Reloads the model.")
        if s.spec.flag:
            how.append(f"Flag: `{s.flag}`.")
        rows.append(f"| `{SECTION}.{s.key}` | {_cell(s.default_words())} | {_cell(s.accepted_words())} | "
                    f"{_cell(' '.join(how))} |")
    return ["| Setting | Default | Accepted | What it does |", "|---|---|---|---|", *rows]


def vscode_table() -> list[str]:
    rows = []
    for s in SCHEMA:
        null_means = _null_means(s)
        default = s.default_words() if null_means is None else "`null`" + (f": {null_means}" if null_means else "")
        rows.append(f"| `{VSCODE_SECTION}.{s.key}` | {_cell(default)} | {_cell(_notes(s))} |")
    return ["| Setting | Default | What it does |", "| --- | --- | --- |", *rows]


# -- Files -----------------------------------------------------------------------------------------------

def between_markers(text: str, render: Callable[[], list[str]], occurrence: int = 0) -> str:
    """``text`` with the lines between its ``occurrence``-th BEGIN/END marker lines replaced by ``render()``."""
    lines = text.split("\n")
    begins = [i for i, line in enumerate(lines) if BEGIN in line]
    ends = [i for i, line in enumerate(lines) if END in line]
    if len(begins) <= occurrence or len(ends) != len(begins):
        raise ValueError(f"expected matching '{BEGIN}' and '{END}' lines (block {occurrence + 1})")
    return "\n".join(lines[:begins[occurrence] + 1] + render() + lines[ends[occurrence]:])


# Each file and how its generated parts are made from its current text.
TARGETS: dict[str, Callable[[str], str]] = {
    "editors/vscode/package.json": package_json,
    "editors/vscode/src/settings.ts": lambda t: between_markers(t, settings_ts),
    "editors/neovim/lua/codellama/config.lua": lambda t: between_markers(t, lua_block(" " * 4, 110)),
    "editors/neovim/doc/codellama.txt": lambda t: between_markers(t, lua_block(" " * 8, 78)),
    "editors/README.md": lambda t: between_markers(between_markers(t, vscode_table), lua_block(" " * 4, 110), 1),
    "README.md": lambda t: between_markers(t, readme_table),
    "docs/server.md": lambda t: between_markers(t, server_table),
}


def stale(root: Path) -> dict[Path, str]:
    """The files under ``root`` whose generated parts differ from the schema's, with their new text."""
    out = {}
    for name, make in TARGETS.items():
        path = root / name
        text = path.read_text(encoding="utf-8")
        new = make(text)
        if new != text:
            out[path] = new
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is stale")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="the repository")
    args = ap.parse_args(argv)
    changed = stale(args.root)
    for path, text in changed.items():
        if args.check:
            print(f"stale: {path} (run python scripts/generate_settings.py)", file=sys.stderr)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 1 if changed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
