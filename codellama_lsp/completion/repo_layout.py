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

Each text between two special tokens is encoded on its own, as a tokenizer that splits
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


def commented(s: Snippet, marker: str) -> str:
    """``s`` as comments headed by its path: code the model reads without taking it as the current file's."""
    body = "".join(f"{marker} {line}".rstrip() + "\n" for line in s.text.splitlines())
    return f"{marker} Path: {s.path}\n{body}\n"


def repo_head(tok: Any, ids: tuple[int, int], ctx: RepoContext) -> list[int]:
    """The repository layout's ids before the FIM part: the repo name, each snippet's block, the current path."""
    repo_name, file_sep = ids
    out = [repo_name, *tok.encode(f"{ctx.repo}\n")]
    for s in ctx.snippets:
        out += [file_sep, *tok.encode(f"{s.path}\n{s.text.rstrip(chr(10))}\n")]
    return [*out, file_sep, *tok.encode(f"{ctx.path}\n")]
