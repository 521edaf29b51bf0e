"""Which tokens may come next while an answer must start with a given text (token healing).

``completion.healing`` backs the prompt up over the cursor's partial token; here the engine
keeps to the removed text: the next token must be a prefix of what is still to be written
(``.con`` of ``.conf``) or start with all of it (``.config``). The vocabulary's texts are
sorted once, so both kinds are found by lookups rather than by a scan of every token.
"""

from __future__ import annotations

import bisect
from array import array
from typing import Callable, Iterable


class HealingIndex:
    """Token ids by their text, for the constraint; special tokens (empty text) never qualify.

    Two parallel arrays sorted by text, rather than a dict of lists: the server holds it for its
    whole life, and a vocabulary of 150k entries took 22 MB as a dict, 10.5 MB as these.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        by_id = list(texts)
        # A byte fragment of a character cannot spell user text. Sorted without (text, id) pairs:
        # 150k short-lived tuples would leave the heap they took resident.
        self._ids = array("l", sorted((i for i, t in enumerate(by_id) if t and "\ufffd" not in t),
                                      key=by_id.__getitem__))
        self._texts = [by_id[i] for i in self._ids]

    @classmethod
    def of(cls, vocab_size: int, decode: Callable[[list[int]], str]) -> "HealingIndex":
        return cls(decode([i]) for i in range(vocab_size))

    def allowed(self, rest: str) -> list[int]:
        """Ids whose text is a non-empty prefix of ``rest`` or starts with ``rest``."""
        texts, out = self._texts, []
        for n in range(1, len(rest)):
            at, end = bisect.bisect_left(texts, rest[:n]), bisect.bisect_right(texts, rest[:n])
            out += self._ids[at:end]
        at = end = bisect.bisect_left(texts, rest)
        while end < len(texts) and texts[end].startswith(rest):
            end += 1
        return out + list(self._ids[at:end])
