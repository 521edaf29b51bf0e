"""Our PyTorch model as the engine's ``Runner``: a preallocated KV cache, an optional compiled decode step."""

from __future__ import annotations

from typing import Any, Callable

import torch

from codellama_lsp.engine.model import Transformer
from codellama_lsp.engine.quantize import quantize_model
from codellama_lsp.settings import COMPILE_CHOICES


def resolve_compile(setting: str, device: torch.device) -> bool:
    """Whether ``setting`` compiles the decode step on ``device``; a ValueError for an unknown value.

    "auto" is on for CUDA, where a CUDA graph removes the per-kernel launch cost that
    dominates a small model's decode step, and off on the CPU, where the compiled static step
    is slower than eager (it attends over the whole cache, which Inductor does not win back)
    and compiling holds up the first suggestion for minutes (docs/measurements.md, "Torch
    engine: compiling the decode step on the CPU").
    """
    if setting not in COMPILE_CHOICES:
        raise ValueError(f"unknown compile {setting!r}; expected one of {', '.join(COMPILE_CHOICES)}")
    return device.type == "cuda" if setting == "auto" else setting == "on"


class TorchRunner:
    """Our Transformer with a preallocated KV cache; positions past ``n`` are simply overwritten later.

    ``quantize`` ("none", "int8", "int4": see engine.quantize) stores the linears' weights in
    fewer bits, after they are fused. With ``compile``, one-token steps run
    ``Transformer.decode_one`` through ``torch.compile(fullgraph=True)`` (mode
    "reduce-overhead" on CUDA: a CUDA graph per step); prefill and draft checks keep the
    dynamic ``forward``, whose shapes follow the chunk. Without it every step is the dynamic
    forward, which in eager mode reads only the cache rows in use.
    """

    kind = "torch"

    def __init__(self, model: Transformer, context_length: int, compile: bool = False, quantize: str = "none") -> None:
        self.model = model
        weight = model.model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        # As given: the caller's plan (engine.memory_plan) may go past the declared length by RoPE's base.
        self.context_length = context_length
        self.preferred_format = model.args.infilling_format
        self.quantize = quantize
        model.fuse_for_inference()
        quantize_model(model, quantize)
        model.setup_cache(self.context_length)
        self._length = 0  # cached positions, for save: the engine's truncate and forward keep it
        self._decode_one: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._decode_one = torch.compile(model.decode_one, mode=mode, fullgraph=True, dynamic=False)

    @torch.inference_mode()
    def forward(self, tokens: list[int], start: int, last_only: bool) -> torch.Tensor:
        self._length = start + len(tokens)
        x = torch.tensor([tokens], dtype=torch.long, device=self.device)
        if self._decode_one is not None and len(tokens) == 1:
            index = torch.tensor([start], dtype=torch.long, device=self.device)
            # A copy: a CUDA graph's output is overwritten by its next replay.
            return self._decode_one(x, index)[0].clone()
        return self.model(x, start=start, last_only=last_only)[0]

    def truncate(self, n: int) -> None:
        """Nothing to free: the cache is indexed by position, and attention reads only up to the current one."""
        self._length = min(self._length, n)

    @torch.inference_mode()
    def splice(self, keep: int, start: int, end: int, delta: int, tokens: list[int]) -> None:
        """Move the block, then compute ``tokens`` in front of it: their attention reads positions up to their own only."""
        if delta:
            self.model.move_cache(start, end, delta)
        if tokens:
            self.forward(tokens, keep, last_only=True)
        self._length = end + delta

    @torch.inference_mode()
    def save(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Each layer's keys and values [1, kv heads, positions, head dim], copied to the CPU."""
        n = self._length
        state = [(c.k[:, :, :n].to("cpu", copy=True), c.v[:, :, :n].to("cpu", copy=True)) for c in self._caches()]
        return state, sum(k.nbytes + v.nbytes for k, v in state)

    @torch.inference_mode()
    def restore(self, state: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copied into the preallocated cache in place, so a compiled step's buffers stay the same."""
        for cache, (k, v) in zip(self._caches(), state):
            cache.k[:, :, :k.shape[2]].copy_(k)
            cache.v[:, :, :v.shape[2]].copy_(v)
        self._length = state[0][0].shape[2] if state else 0

    def _caches(self) -> list[Any]:
        return [layer.self_attn.kv_cache for layer in self.model.model.layers]

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
