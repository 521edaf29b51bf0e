"""Token-exact Code Llama prompts: infilling (PSM, SPM) and the Instruct chat layout.

These follow Meta's reference (codellama/llama/generation.py, ``infilling_prompt_tokens``
and ``chat_completion``); tests check them id-for-id against transformers' slow
``CodeLlamaTokenizer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

Format = Literal["psm", "spm"]
FORMATS: tuple[Format, ...] = ("psm", "spm")


def prompt_format(setting: str) -> Format:
    """The concrete layout of a ``format`` setting already resolved for its model (settings.resolve_format)."""
    if setting not in FORMATS:
        raise ValueError(f"format {setting!r} must be resolved for the model first (settings.resolve_format)")
    return setting  # type: ignore[return-value]

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


class PromptTokenizer(Protocol):
    bos_id: int
    eos_id: int
    prefix_id: int | None
    suffix_id: int | None
    middle_id: int | None

    def require_fim(self) -> None: ...
    def encode(self, text: str) -> list[int]: ...
    def encode_infilling(self, text: str) -> list[int]: ...


def infill_layout(bos: int | None, markers: tuple[int, int, int], prefix: list[int], suffix: list[int],
                  fmt: Format) -> list[int]:
    """The infilling layout every family shares, from the prefix's and suffix's ids.

    PSM: ``[BOS] PRE prefix SUF suffix MID``; SPM: ``[BOS] PRE SUF suffix MID prefix``.
    SPM puts the prefix last, so keystrokes at the cursor only append to the prompt and
    the engine's KV cache reuses everything before them.
    """
    pre, suf, mid = markers
    head = [] if bos is None else [bos]
    if fmt == "psm":
        return [*head, pre, *prefix, suf, *suffix, mid]
    if fmt == "spm":
        return [*head, pre, suf, *suffix, mid, *prefix]
    raise ValueError(f"unknown prompt format {fmt!r}; expected one of {', '.join(FORMATS)}")


def infilling_tokens(tok: PromptTokenizer, prefix: str, suffix: str, fmt: Format = "psm") -> list[int]:
    """Code Llama's prompt whose continuation is the middle between ``prefix`` and ``suffix``.

    As Meta's reference: the prefix encoded with sentencepiece's leading space, the suffix
    without (``encode_infilling``), BOS first.
    """
    tok.require_fim()
    assert tok.prefix_id is not None and tok.suffix_id is not None and tok.middle_id is not None
    return infill_layout(tok.bos_id, (tok.prefix_id, tok.suffix_id, tok.middle_id), tok.encode(prefix),
                         tok.encode_infilling(suffix), fmt)


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


def instruct_tokens(tok: PromptTokenizer, dialog: Sequence[Message]) -> list[int]:
    """Code Llama - Instruct's chat layout: ``<s>[INST] <<SYS>>…<</SYS>> user [/INST] answer </s>…``.

    The dialog is an optional system message, then user/assistant turns ending with a user turn.
    """
    turns = list(dialog)
    if turns and turns[0].role == "system":
        if len(turns) < 2:
            raise ValueError("a system message must be followed by a user message")
        turns = [Message("user", B_SYS + turns[0].content + E_SYS + turns[1].content), *turns[2:]]
    if not turns or len(turns) % 2 == 0:
        raise ValueError("the dialog must alternate user/assistant turns and end with a user turn")
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise ValueError(f"turn {i} is {m.role!r}, expected {expected!r}")
    ids: list[int] = []
    for user, answer in zip(turns[:-1:2], turns[1::2]):
        ids += [tok.bos_id, *tok.encode(f"{B_INST} {user.content.strip()} {E_INST} {answer.content.strip()} "), tok.eos_id]
    ids += [tok.bos_id, *tok.encode(f"{B_INST} {turns[-1].content.strip()} {E_INST}")]
    return ids
