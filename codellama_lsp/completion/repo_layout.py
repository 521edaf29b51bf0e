"""How other files' snippets are written into a prompt: a family's repository layout, or comments.

Qwen2.5-Coder was trained on whole repositories in its own layout (Qwen2.5-Coder technical
report, Figure 4 "Repo-Level FIM format")::

    <|repo_name|>{repo_name}
    <|file_sep|>{file_path1}
    {file_content1}
    <|file_sep|>{file_path2}
    {file_content2}
    <|file_sep|>{file_path3}
    <|fim_prefix|>{code_pre}<|fim_suffix|>{code_suf}<|fim_middle|>

The model saw each file once, whole; snippets of one file go in one block, the outline
first and then the ranges in line order (``by_file``). Each text between two special
tokens is encoded on its own, as a tokenizer that splits
on special tokens first encodes the whole string, so the ids are those of the documented
text. Families without such tokens get each snippet as comments in the language's line
comment syntax, headed by its path, at the start of the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from codellama_lsp.completion.snippets import Snippet

# Line comment markers by language id; others get "//".
_HASH = ("python", "ruby", "shellscript", "sh", "bash", "perl", "r", "yaml", "toml", "elixir", "julia", "nim",
         "coffeescript", "dockerfile", "makefile", "cmake", "powershell")
_DASHES = ("lua", "sql", "haskell", "elm", "ada")
COMMENT_MARKERS = {**{k: "#" for k in _HASH}, **{k: "--" for k in _DASHES}}


def comment_marker(language: str) -> str:
    return COMMENT_MARKERS.get(language, "//")


@dataclass(frozen=True)
class RepoContext:
    """The other files' snippets for one prompt, and where the current file sits."""

    repo: str  # the workspace folder's name
    path: str  # the current file, workspace-relative
    comment: str  # the current language's line comment marker
    snippets: Sequence[Snippet]
    header: str = ""  # the current file's import statements above its window: they open the prefix


def commented(path: str, text: str, marker: str) -> str:
    """``text`` as comments headed by its ``path``: code the model reads without taking it as the current file's."""
    body = "".join(f"{marker} {line}".rstrip() + "\n" for line in text.splitlines())
    return f"{marker} Path: {path}\n{body}\n"


def by_file(snippets: Sequence[Snippet]) -> list[tuple[str, str]]:
    """(path, text) per file, files in the order of their first snippet; in a file, its outline first,
    then its ranges in line order."""
    files: dict[str, list[Snippet]] = {}
    for s in snippets:
        files.setdefault(s.path, []).append(s)
    return [(path, "".join(s.text for s in sorted(group, key=lambda s: (not s.outline, s.start))))
            for path, group in files.items()]


def repo_head(tok: Any, ids: tuple[int, int], ctx: RepoContext) -> list[int]:
    """The repository layout's ids before the FIM part: the repo name, each file's block, the current path."""
    repo_name, file_sep = ids
    out = [repo_name, *tok.encode(f"{ctx.repo}\n")]
    for path, text in by_file(ctx.snippets):
        out += [file_sep, *tok.encode(f"{path}\n{text.rstrip(chr(10))}\n")]
    return [*out, file_sep, *tok.encode(f"{ctx.path}\n")]
