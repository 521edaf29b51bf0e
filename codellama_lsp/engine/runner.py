"""What the resident engine runs: a model that extends its KV cache by some tokens and returns their logits.

``Engine`` owns everything about a request (reuse of the cached prefix, chunked prefill,
drafts, stopping, cancellation); a runner only computes. ``TorchRunner`` is our PyTorch
model; ``engine.llamacpp.LlamaCppRunner`` is llama.cpp's kernels on a GGUF file. Both keep
one sequence whose first ``n`` positions stay valid until ``truncate(n)`` drops the rest.
"""

from __future__ import annotations

from typing import Protocol

import torch

from codellama_lsp.engine.model import Transformer


class Runner(Protocol):
    kind: str  # which engine computes: "torch" or "llamacpp" (codellama.status shows it)
    device: torch.device | str
    dtype: torch.dtype | str
    context_length: int  # positions the KV cache holds
    preferred_format: str | None  # the infilling layout the checkpoint declares (None: PSM)

    def forward(self, tokens: list[int], start: int, last_only: bool) -> torch.Tensor:
        """Logits [len(tokens) or 1, vocab] for ``tokens`` at positions ``start..``, extending the cache."""
        ...

    def truncate(self, n: int) -> None:
        """Only the first ``n`` cached positions are kept (a new prefix, or rejected draft tokens)."""
        ...

    def splice(self, keep: int, start: int, end: int, delta: int, tokens: list[int]) -> None:
        """Keep the first ``keep`` positions and the block ``start..end-1`` moved ``delta`` positions on.

        ``tokens`` are computed at ``keep..`` (``keep + len(tokens) == start + delta``) and
        attend to the kept prefix only; every other cached position goes. The moved block
        keeps its keys/values, computed when other text preceded it: an approximation the
        engine uses for the suffix of an infilling prompt (``Engine`` ``reuse_suffix``).
        """
        ...

    def close(self) -> None: ...


class TorchRunner:
    """Our Transformer with a preallocated KV cache; positions past ``n`` are simply overwritten later."""

    kind = "torch"

    def __init__(self, model: Transformer, context_length: int, compile_decode: bool = False) -> None:
        self.model = model
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.context_length = min(context_length, model.args.max_position_embeddings)
        self.preferred_format = model.args.infilling_format
        model.fuse_for_inference()
        model.setup_cache(self.context_length)
        # GPU only (not exercised on this CPU-only project machine): compile the forward pass.
        self._forward = torch.compile(model, dynamic=True) if compile_decode else model

    def forward(self, tokens: list[int], start: int, last_only: bool) -> torch.Tensor:
        x = torch.tensor([tokens], dtype=torch.long, device=self.device)
        return self._forward(x, start=start, last_only=last_only)[0]

    def truncate(self, n: int) -> None:
        """Nothing to do: the cache is indexed by position, and attention reads only up to the current one."""

    def splice(self, keep: int, start: int, end: int, delta: int, tokens: list[int]) -> None:
        """Move the block, then compute ``tokens`` in front of it: their attention reads positions up to their own only."""
        if delta:
            self.model.move_cache(start, end, delta)
        if tokens:
            self.forward(tokens, keep, last_only=True)

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
