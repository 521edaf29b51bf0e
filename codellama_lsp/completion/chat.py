"""Chat layouts: how an Instruct model is prompted with a dialog, and which layout a model has.

Two layouts, token for token:

* Code Llama - Instruct's ``[INST]``/``<<SYS>>`` (``templates.instruct_tokens``, as Meta's
  ``chat_completion``).
* ChatML, which Qwen2.5(-Coder)-Instruct uses (its ``tokenizer_config.json`` / GGUF
  ``tokenizer.chat_template``): each message is ``<|im_start|>{role}\\n{content}<|im_end|>\\n``
  and the prompt ends ``<|im_start|>assistant\\n``. Qwen2.5's template adds the system message
  "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." when the dialog has
  none; the answer ends at ``<|im_end|>`` (or EOS).

A model's layout is the one its own chat template uses (the GGUF's ``tokenizer.chat_template``);
a model without one (the demo model, a safetensors checkpoint, a base GGUF without a template)
has none, because a vocabulary alone does not tell: Code Llama's base and Instruct models share
theirs, and Qwen's base models have ``<|im_start|>`` too. The ``chat`` setting can name the
layout instead (or turn chat off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from codellama_lsp.completion.templates import B_INST, Message, instruct_tokens

Layout = Literal["chatml", "codellama"]
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Qwen2.5's chat template, the branch for a dialog without a system message (and without tools).
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@dataclass(frozen=True)
class Chat:
    """A model's chat layout bound to its tokenizer's ids, or none (``layout`` None), and why."""

    layout: Layout | None
    why: str  # for codellama.status: where the layout was found, or why there is none
    stop_ids: frozenset[int] = frozenset()
    markers: tuple[int, int] | None = None  # ChatML's <|im_start|>, <|im_end|> ids
    default_system: str | None = None  # what the model's template puts when the dialog has no system message

    @property
    def available(self) -> bool:
        return self.layout is not None

    def describe(self) -> str:
        return f"{self.layout or 'none'}: {self.why}"

    def prompt(self, tok: Any, dialog: Sequence[Message]) -> list[int]:
        """The ids whose continuation is the assistant's answer to ``dialog`` (ending with a user turn)."""
        if self.layout == "codellama":
            return instruct_tokens(tok, dialog)
        if self.layout != "chatml" or self.markers is None:
            raise ValueError(f"the model has no chat layout ({self.why})")
        start, end = self.markers
        turns = list(dialog)
        if self.default_system is not None and (not turns or turns[0].role != "system"):
            turns.insert(0, Message("system", self.default_system))
        if not turns or turns[-1].role != "user":
            raise ValueError("the dialog must end with a user turn")
        newline = tok.encode("\n")
        ids: list[int] = []
        for m in turns:  # the text between special tokens is encoded alone, as transformers does
            ids += [start, *tok.encode(f"{m.role}\n{m.content}"), end, *newline]
        return [*ids, start, *tok.encode("assistant\n")]


def _specials(tok: Any) -> dict[str, int]:
    return dict(getattr(tok, "special_tokens", {}) or {})


def _ends(tok: Any) -> set[int]:
    return {i for i in (getattr(tok, "eos_id", None), getattr(tok, "eot_id", None)) if i is not None and i >= 0}


def detect_chat(tok: Any, setting: str = "auto") -> Chat:
    """The chat layout of ``tok``'s model: the one ``setting`` names, else the one its chat template uses."""
    if setting == "off":
        return Chat(None, "turned off by the chat setting")
    template = getattr(tok, "chat_template", None) or ""
    wanted = setting if setting != "auto" else "chatml" if IM_START in template else "codellama" if B_INST in template \
        else None
    source = "the chat setting" if setting != "auto" else "the model's chat template (tokenizer.chat_template)"
    if wanted == "chatml":
        ids = _specials(tok)
        if IM_START not in ids or IM_END not in ids:
            return Chat(None, f"{source} says ChatML, but the vocabulary has no {IM_START}/{IM_END}")
        default = QWEN_DEFAULT_SYSTEM if QWEN_DEFAULT_SYSTEM in template else None
        return Chat("chatml", source, frozenset({ids[IM_END], *_ends(tok)}), (ids[IM_START], ids[IM_END]), default)
    if wanted == "codellama":
        if getattr(tok, "bos_id", None) is None or getattr(tok, "eos_id", None) is None:
            return Chat(None, f"{source} says Code Llama - Instruct, but the tokenizer has no BOS/EOS")
        return Chat("codellama", source, frozenset(_ends(tok)))
    return Chat(None, "the model has no chat template (GGUF tokenizer.chat_template), so it is not an Instruct "
                      "model as far as the server can tell; the chat setting can name its layout "
                      "(chatml, codellama)")
