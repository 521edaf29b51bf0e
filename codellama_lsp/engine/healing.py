"""Which tokens may come next while an answer must start with a given text (token healing).

``completion.healing`` backs the prompt up over the cursor's partial token; here the engine
keeps to the removed text: the next token must be a prefix of what is still to be written
(``.con`` of ``.conf``) or start with all of it (``.config``). The vocabulary's texts are
sorted once, so both kinds are found by lookups rather than by a scan of every token.
"""

from __future__ import annotations

import bisect
from array import array
from itertools import accumulate
from typing import Callable, Iterable


class _SortedTexts:
    """The i-th text of a sorted run of UTF-8 texts stored end to end, for ``bisect``."""

    def __init__(self, blob: bytes, ends: array) -> None:
        self._blob, self._ends = blob, ends

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> bytes:
        return self._blob[self._ends[i - 1] if i else 0:self._ends[i]]


class HealingIndex:
    """Token ids by their text, for the constraint; special tokens (empty text) never qualify.

    The texts are kept as UTF-8, sorted, end to end in one bytes object (UTF-8's byte order is
    the code points' order), with their ids alongside: the server holds the index for its whole
    life, and a vocabulary of 150k entries took 22 MB as a dict of lists, 10.5 MB as a sorted
    list of str, 2.3 MB as this.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        # A byte fragment of a character cannot spell user text.
        by_id = [t.encode("utf-8") if "\ufffd" not in t else b"" for t in texts]
        ids = sorted((i for i, t in enumerate(by_id) if t), key=by_id.__getitem__)
        self._ids = array("i", ids)
        self._texts = _SortedTexts(b"".join(by_id[i] for i in ids), array("I", accumulate(len(by_id[i]) for i in ids)))

    @classmethod
    def of(cls, vocab_size: int, decode: Callable[[list[int]], str]) -> "HealingIndex":
        return cls(decode([i]) for i in range(vocab_size))

    def allowed(self, rest: str) -> list[int]:
        """Ids whose text is a non-empty prefix of ``rest`` or starts with ``rest``."""
        texts, out = self._texts, []
        for n in range(1, len(rest)):
            prefix = rest[:n].encode("utf-8")
            at, end = bisect.bisect_left(texts, prefix), bisect.bisect_right(texts, prefix)
            out += self._ids[at:end]
        whole = rest.encode("utf-8")
        at = end = bisect.bisect_left(texts, whole)
        while end < len(texts) and texts[end].startswith(whole):
            end += 1
        return out + list(self._ids[at:end])
