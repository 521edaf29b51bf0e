"""Instruct actions (Explain, Write tests, Fix, Edit selection, and a docstring): their prompts and answers.

Pure functions: a dialog from the code and what the action needs, and the model's markdown
answer turned into what the editor gets (Explain stays markdown; the others are the code in
the answer's first fenced block, re-indented to where it goes). Prompted through a model's
chat layout (``chat.py``).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Literal, Sequence

from codellama_lsp.completion.templates import Message

Action = Literal["explain", "tests", "fix", "edit"]
TITLES: dict[Action, str] = {"explain": "Explain", "tests": "Write tests", "fix": "Fix", "edit": "Edit selection…"}
SYSTEM = ("You are an expert programmer and a careful code reviewer. Answer briefly and precisely. "
          "When you write code, put it in one fenced code block.")


@dataclass(frozen=True)
class Code:
    """The code an action is about, and where it comes from."""

    text: str
    language: str
    path: str


def _block(code: Code) -> str:
    return f"File `{code.path}` ({code.language}):\n```{code.language}\n{textwrap.dedent(code.text).strip(chr(10))}\n```"


def dialog(action: Action, code: Code, diagnostics: Sequence[str] = (), instruction: str | None = None) -> list[Message]:
    """The system and user messages that ask for ``action`` on ``code``."""
    ask = {
        "explain": "Explain what this code does, how, and anything surprising in it. Answer in markdown.",
        "tests": "Write unit tests for this code, covering normal use and edge cases. Answer with the test code "
                 "only, in one code block.",
        "fix": "Fix the problems in this code" + (":\n" + "\n".join(f"- {d}" for d in diagnostics) if diagnostics
                                                  else ".") +
               "\nAnswer with the whole corrected code only, in one code block.",
        "edit": f"Rewrite this code as follows: {instruction or ''}\nAnswer with the whole rewritten code only, in one "
                "code block.",
    }[action]
    return [Message("system", SYSTEM), Message("user", f"{_block(code)}\n\n{ask}")]


def docstring_dialog(code: Code, name: str) -> list[Message]:
    """Ask for ``name``'s docstring: its text only, so ``docstring.clean`` and ``edit`` place it as infilling's."""
    return [Message("system", SYSTEM), Message("user", (
        f"{_block(code)}\n\nWrite the docstring for `{name}`: one summary line, then a short description of each "
        "parameter and of the return value. Answer with the docstring's text only, without quotes or code."))]


_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n`]*\n", re.M)


def _closing(fence: re.Match[str], body: str) -> re.Match[str] | None:
    """Where the fenced block that ``fence`` opens ends in ``body`` (the text after it), if it does."""
    return re.search(rf"^[ \t]*{re.escape(fence[1][0])}{{{len(fence[1])},}}[ \t]*$", body, re.M)


def code_in(answer: str) -> str:
    """The code of an answer: its first fenced block (to its end when cut off by the token limit), else all of it."""
    m = _FENCE.search(answer)
    if m is None:
        return answer.strip("\n")
    body = answer[m.end():]
    close = _closing(m, body)
    return (body[: close.start()] if close else body).rstrip()


def code_closed(answer: str) -> bool:
    """Whether the answer's code is whole although the answer was cut: its first fenced block is closed."""
    m = _FENCE.search(answer)
    return m is not None and _closing(m, answer[m.end():]) is not None


def placed(code: str, like: str) -> str:
    """``code`` indented as ``like`` (the text it replaces or follows) is, with ``like``'s final newline."""
    indent = re.match(r"[ \t]*", next((line for line in like.split("\n") if line.strip()), "")).group(0)
    body = textwrap.indent(textwrap.dedent(code).strip("\n"), indent)
    return body + ("\n" if like.endswith("\n") else "")


_TRIPLE_QUOTED = re.compile(r"(\"\"\"|''')(.*?)(?:\1|$)", re.S)


def docstring_text(answer: str) -> str:
    """A docstring answer without the fences or quotes a model may still put around it; when it wrote the
    whole function (Qwen2.5-Coder-0.5B often does), the first triple-quoted string in it."""
    text = code_in(answer) if _FENCE.search(answer) else answer
    quoted = _TRIPLE_QUOTED.search(text)
    if quoted is not None:
        text = quoted[2]
    return text.strip().strip("\"'").strip()
