"""Next-token choice: greedy, or seeded temperature / nucleus (top-p) sampling."""

from __future__ import annotations

import torch
from torch import Tensor


def next_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Pick the next id from the logits of one position ([V]).

    ``temperature <= 0`` is greedy. Sampling draws from ``generator`` so a fixed seed
    gives the same completion every time.
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # Keep the smallest set whose mass reaches top_p (the first token is always kept).
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))
