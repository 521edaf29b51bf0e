"""Draft tokens for greedy decoding, looked up in tokens the model has already seen.

While a user types, much of what the model is about to write already exists as tokens:
the suggestion it made one keystroke ago (which the user is now typing through), and
code repeated elsewhere in the prompt or in its own output. Proposing those tokens as a
draft lets the engine check several of them in one forward pass instead of one pass per
token. Greedy output stays what one-token-at-a-time decoding produces, because a draft
token is kept only where it equals the model's own argmax.

This is "prompt lookup" decoding: find an earlier occurrence of the sequence's last
tokens and propose what followed it.
"""

from __future__ import annotations

from typing import Hashable, Sequence


def _positions_after(keys: Sequence[Hashable], first: int) -> dict[Hashable, int]:
    """Map each key to the index just after its latest occurrence; ``first`` is that index for keys[0]."""
    return dict(zip(keys, range(first, first + len(keys))))


class LookupDrafter:
    """Proposes continuations for a growing token sequence.

    ``history`` is what the engine computed before this request and no longer shares
    with it (the last keystroke's suggestion, mostly); ``sequence`` is the current prompt,
    to which generated tokens are appended. Lookups try, in order: the tail bigram in the
    history, the tail bigram earlier in the sequence, then the last token alone in the
    history (after a keystroke the prompt's last token is often retokenised, so only the
    newest token still lines up with the old suggestion).
    """

    def __init__(self, sequence: Sequence[int], history: Sequence[int] = ()) -> None:
        self.sequence = list(sequence)
        self.history = list(history)
        s, h = self.sequence, self.history
        # An occurrence at the very end has nothing after it to propose, so it is left out.
        self._history_pairs = _positions_after(list(zip(h, h[1:]))[:-1], 2)
        self._history_tokens = _positions_after(h[:-1], 1)
        self._sequence_pairs = _positions_after(list(zip(s, s[1:]))[:-1], 2)

    def append(self, token: int) -> None:
        """Extend the sequence by ``token``; the bigram that was its tail becomes searchable."""
        s = self.sequence
        if len(s) >= 2:
            self._sequence_pairs[(s[-2], s[-1])] = len(s)
        s.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens expected to follow the sequence; empty when nothing matches."""
        if limit <= 0 or len(self.sequence) < 2:
            return []
        pair = (self.sequence[-2], self.sequence[-1])
        for index, tokens, key in ((self._history_pairs, self.history, pair),
                                   (self._sequence_pairs, self.sequence, pair),
                                   (self._history_tokens, self.history, pair[1])):
            at = index.get(key)
            if at is not None:
                return tokens[at : at + limit]
        return []
