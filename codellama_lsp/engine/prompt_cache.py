"""Several KV-cached sequences in host memory, so that a return to a place computes only what changed.

The engine computes in one live sequence (the runner's KV cache). Before it throws away a
large part of it (the user moved to another place or file, or a hover or an Instruct action
came in between), it keeps a copy here; a later request whose prompt shares a longer prefix
with a kept copy than with the live sequence gets that copy back, and computes only the rest.
That is llama.cpp server's host-memory prompt cache, and the longest-prefix match of vLLM's
automatic prefix caching and SGLang's RadixAttention, at the grain of whole sequences.

Copies are evicted least recently used within a byte budget, with one rule on top: the
sequences of other requests (hovers, Instruct actions, prefetches, warm-ups) go before those
of the place being typed at, and the most recent typing sequence goes last of all, so that
nothing in between evicts where the user is typing.

Pure bookkeeping: the ``state`` of an entry is whatever the runner's ``save`` returned, and
the engine moves it in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(eq=False)
class Entry:
    """One kept sequence: its tokens, the runner's copy of their keys and values, and its use."""

    tokens: list[int]
    state: Any
    nbytes: int
    typing: bool  # made by requests at the place being typed at
    used: int = 0  # the cache's clock when it was last kept or taken
    hits: int = 0  # requests it served


class PromptCache:
    """Kept sequences within ``budget_bytes``; the engine calls it on its worker thread only."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.entries: list[Entry] = []
        self._clock = 0
        self.hits = 0  # requests served from a kept sequence
        self.kept = 0  # sequences put here
        self.evicted = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def best(self, prompt: Sequence[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``prompt``, and that length (None, 0: none shares any)."""
        found, longest = None, 0
        for entry in self.entries:
            n = common_prefix_length(entry.tokens, prompt)
            if n > longest:
                found, longest = entry, n
        return found, longest

    def take(self, entry: Entry) -> Entry:
        """Remove ``entry`` to become the live sequence again (it is put back when it is next thrown away)."""
        self.entries.remove(entry)
        self.hits += 1
        entry.hits += 1
        return entry

    def put(self, entry: Entry) -> None:
        """Keep ``entry``; entries it extends (their tokens are a prefix of its) are redundant and go."""
        if entry.nbytes > self.budget_bytes or not entry.tokens:
            return
        n = len(entry.tokens)
        self.entries = [e for e in self.entries
                        if not (len(e.tokens) <= n and common_prefix_length(e.tokens, entry.tokens) == len(e.tokens))]
        self._clock += 1
        entry.used = self._clock
        self.entries.append(entry)
        self.kept += 1
        while self.nbytes > self.budget_bytes:
            self.entries.remove(self._victim())
            self.evicted += 1

    def _victim(self) -> Entry:
        """Least recently used, other requests' sequences first; the newest typing sequence last."""
        typing = [e for e in self.entries if e.typing]
        newest_typing = max(typing, key=lambda e: e.used) if typing else None
        others = [e for e in self.entries if not e.typing]
        pool = others or [e for e in typing if e is not newest_typing] or typing
        return min(pool, key=lambda e: e.used)

    def describe(self) -> dict[str, Any]:
        """What ``codellama.status`` shows: the budget, the counters, and each kept sequence."""
        entries = list(self.entries)  # read from the event loop while the worker may change the list
        return {
            "budget_bytes": self.budget_bytes,
            "bytes": sum(e.nbytes for e in entries),
            "hits": self.hits,
            "kept": self.kept,
            "evicted": self.evicted,
            "sequences": [{"tokens": len(e.tokens), "bytes": e.nbytes, "hits": e.hits,
                           "kind": "typing" if e.typing else "other"} for e in entries],
        }
