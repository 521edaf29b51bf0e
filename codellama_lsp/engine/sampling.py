"""Next-token choice: greedy, or seeded temperature / nucleus (top-p) sampling.

Logits come from either runner: a torch tensor (the torch engine, on any device) or a numpy
array (llama.cpp). Greedy choice stays on the logits' device; sampling draws on the host
with numpy, so the llama.cpp engine runs without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def generator(seed: int) -> np.random.Generator:
    """The random source of one request: a fixed seed gives the same completion every time."""
    return np.random.default_rng(seed)


def next_token(logits: Any, temperature: float, top_p: float, rng: np.random.Generator | None) -> int:
    """Pick the next id from the logits of one position ([V], a torch tensor or numpy array).

    ``temperature <= 0`` is greedy. Sampling draws from ``rng``.
    """
    if temperature <= 0:
        return int(logits.argmax())
    assert rng is not None, "sampling needs a generator"
    z = np.asarray(logits.float().cpu() if hasattr(logits, "cpu") else logits, dtype=np.float64) / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_p = probs[order]
        # Keep the smallest set whose mass reaches top_p (the first token is always kept).
        keep = np.cumsum(sorted_p) - sorted_p < top_p
        sorted_p = np.where(keep, sorted_p, 0.0)
        return int(order[rng.choice(len(sorted_p), p=sorted_p / sorted_p.sum())])
    return int(rng.choice(len(probs), p=probs))


def keep_only(logits: Any, ids: list[int]) -> Any:
    """A copy of ``logits`` ([V], a torch tensor or numpy array) with every id but ``ids`` at -inf."""
    kept = logits.clone() if hasattr(logits, "clone") else logits.copy()
    kept[:] = float("-inf")
    kept[ids] = logits[ids]
    return kept


def log_probability(logits: Any, tok: int) -> float:
    """The natural log of ``tok``'s probability under ``logits`` ([V], a torch tensor or numpy array).

    Computed where the logits are (no copy of the vocabulary to the host from a GPU).
    """
    if hasattr(logits, "logsumexp"):
        row = logits.float()
        return float(row[tok] - row.logsumexp(-1))
    top = logits.max()
    return float(logits[tok] - top - np.log(np.exp(logits - top).sum()))
