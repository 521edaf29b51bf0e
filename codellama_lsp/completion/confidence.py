"""How sure the model was of a suggestion, from the log-probabilities of the tokens it chose.

A suggestion the user has to dismiss costs more than one never shown: it interrupts the
reading of their own code. The model knows when it is guessing, so a suggestion carries
the probability of the least probable token that wrote its first line (the line every
suggestion shows, and the one the benchmarks score), and ``minConfidence`` hides those
below it. One unsure token is where a line goes wrong; an average over the line hides it
among the sure ones. How the statistic and the default were chosen: docs/measurements.md,
"Confidence gating".
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from codellama_lsp.generation import first_line_ended


def first_line_tokens(token_ids: Sequence[int], decode: Callable[[list[int]], str]) -> int:
    """How many of ``token_ids`` write the first line: up to the token whose text ends a line with
    something on it (that token included: ending the line is a choice too), else all of them."""
    text = ""
    for i, token in enumerate(token_ids):
        text += decode([token])  # one token at a time: a line end is never inside a character's bytes
        if first_line_ended(text):
            return i + 1
    return len(token_ids)


def confidence(token_ids: Sequence[int], logprobs: Sequence[float],
               decode: Callable[[list[int]], str]) -> float | None:
    """The probability of the first line's least probable token, in [0, 1]; None when the backend
    reported no log-probabilities or nothing was generated."""
    if not logprobs or not token_ids:
        return None
    return math.exp(min(logprobs[:first_line_tokens(token_ids, decode)]))


def mean_confidence(token_ids: Sequence[int], logprobs: Sequence[float],
                    decode: Callable[[list[int]], str]) -> float | None:
    """The geometric mean probability of the first line's tokens: the statistic ``confidence`` was
    measured against (benchmarks/languages.py)."""
    if not logprobs or not token_ids:
        return None
    n = first_line_tokens(token_ids, decode)
    return math.exp(sum(logprobs[:n]) / n)
