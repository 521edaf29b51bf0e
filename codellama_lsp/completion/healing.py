"""Token healing at the cursor: which text the prompt backs up over, and how the answer loses it again.

A cursor inside a word (``retu|``, ``self.conf|``) or after a lone symbol (``#|``) leaves the
prompt ending in a token the tokenizer would not have produced for the finished text: ``return``
is one token, not `` ret`` + ``u``, and ``#[`` is one, not ``#``. A model trained on tokenized
text reads that boundary as information (the word ends here, no ``[`` follows) and writes
around it, often repeating what is left of the cursor (``#`` then ``#[test]``). Healing removes
the partial token(s) from the prompt and has the engine start its answer with the removed text
(``GenerationRequest.heal``), so the model picks the token boundary itself; the removed text is
the user's, so the suggestion shown is what follows it.

Pure functions over a tokenizer's ``encode``/``decode``, so they are tested without a model.
"""

from __future__ import annotations

import re
from typing import Callable

# How far back healing may reach: the word the cursor is in, with one symbol and one space in front
# of it (``.conf``, `` retu``, `` #``). Tokens beyond that are whole and are kept.
_TAIL = re.compile(r"\s?[^\w\s]?\w*\Z")
MAX_HEAL_TOKENS = 4


def heal_text(head: str, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str]) -> str:
    """The text at the end of ``head`` (the cursor's line before the cursor) that the prompt backs up over.

    The last token always, when the cursor follows a non-space character; more tokens while what
    they cover stays inside the cursor's word (``_TAIL``). "" at a line's start, after a space,
    and where the tokens do not decode to the end of ``head`` (a character split across tokens).
    """
    if not head or head[-1].isspace():
        return ""
    ids = encode(head)
    reach = len(_TAIL.search(head).group(0))  # type: ignore[union-attr]
    removed = ""
    for k in range(1, min(MAX_HEAL_TOKENS, len(ids)) + 1):
        text = decode(ids[-k:])
        if not text or not head.endswith(text) or (k > 1 and len(text) > reach):
            break
        removed = text
    return removed


def healed(text: str, heal: str) -> str | None:
    """``text`` (the model's answer from the backed-up prompt) without the removed ``heal`` text;
    None when it does not start with it (generation stopped before writing all of it)."""
    return text[len(heal):] if text.startswith(heal) else None
