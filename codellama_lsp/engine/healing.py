"""Which tokens may come next while an answer must start with a given text (token healing).

``completion.healing`` backs the prompt up over the cursor's partial token; here the engine
keeps to the removed text: the next token must be a prefix of what is still to be written
(``.con`` of ``.conf``) or start with all of it (``.config``). The vocabulary's texts are
sorted once, so both kinds are found by lookups rather than by a scan of every token.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable


class HealingIndex:
    """Token ids by their text, for the constraint; special tokens (empty text) never qualify."""

    def __init__(self, texts: Iterable[str]) -> None:
        by_text: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if text and "\ufffd" not in text:  # a byte fragment of a character cannot spell user text
                by_text.setdefault(text, []).append(i)
        self._by_text = by_text
        self._sorted = sorted(by_text)

    @classmethod
    def of(cls, vocab_size: int, decode: Callable[[list[int]], str]) -> "HealingIndex":
        return cls(decode([i]) for i in range(vocab_size))

    def allowed(self, rest: str) -> list[int]:
        """Ids whose text is a non-empty prefix of ``rest`` or starts with ``rest``."""
        out: list[int] = []
        for n in range(1, len(rest)):
            out += self._by_text.get(rest[:n], ())
        at = bisect.bisect_left(self._sorted, rest)
        while at < len(self._sorted) and self._sorted[at].startswith(rest):
            out += self._by_text[self._sorted[at]]
            at += 1
        return out
