"""What the resident engine runs: a model that extends its KV cache by some tokens and returns their logits.

``Engine`` owns everything about a request (reuse of the cached prefix, chunked prefill,
drafts, stopping, cancellation); a runner only computes. ``torch_runner.TorchRunner`` is our
PyTorch model; ``llamacpp.LlamaCppRunner`` is llama.cpp's kernels on a GGUF file. Both keep
one sequence whose first ``n`` positions stay valid until ``truncate(n)`` drops the rest.
"""

from __future__ import annotations

from typing import Any, Protocol


class Runner(Protocol):
    kind: str  # which engine computes: "torch" or "llamacpp" (codellama.status shows it)
    device: Any  # a torch.device, or "cpu"
    dtype: Any  # a torch.dtype, or the file's quantization's name
    context_length: int  # positions the KV cache holds
    preferred_format: str | None  # the infilling layout the checkpoint declares (None: PSM)

    def forward(self, tokens: list[int], start: int, last_only: bool) -> Any:
        """Logits [len(tokens) or 1, vocab] for ``tokens`` at positions ``start..``, extending the cache.

        A torch tensor (the torch runner, on its device) or a numpy array (llama.cpp): the engine
        only indexes rows and takes ``argmax`` and ``tolist``, which both have; ``engine.sampling``
        handles each kind where they differ (a copy, a log-sum-exp), so llama.cpp runs without torch.
        """
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

    def save(self) -> tuple[Any, int]:
        """A host-memory copy of every cached position's keys and values, and its size in bytes."""
        ...

    def restore(self, state: Any) -> None:
        """The cache holds exactly what ``save`` copied into ``state`` (which stays valid)."""
        ...

    def close(self) -> None: ...
