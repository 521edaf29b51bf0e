"""Weight-only quantization of the torch engine's linear layers: int8 per output channel, int4 per group.

Decoding one token reads every weight once, so its speed is the weights' bytes over memory
bandwidth; storing them in 8 or 4 bits instead of 16 is what makes a GPU decode faster.
Activations, the embedding table, norms and the KV cache stay in the model's dtype.

"auto" is int8 on CUDA and none on the CPU. On CUDA, gpt-fast's published numbers make int8
and int4 decode faster than bf16; int8 is the safe default because per-channel int8 barely
moves the logits while int4 changes greedy tokens more often (tests/test_quantize.py measures
both). On the CPU PyTorch's quantized kernels read weights far slower than the float32 GEMV,
which reads at the memory bandwidth, so quantization would make decoding slower, not faster
(docs/measurements.md, "Torch engine: quantized kernels", which also quotes gpt-fast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codellama_lsp.settings import QUANTIZE_CHOICES


def resolve_quantize(setting: str, device: torch.device) -> str:
    """What ``setting`` means on ``device``: "none", "int8" or "int4"; a ValueError for an unknown value."""
    if setting not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantize {setting!r}; expected one of {', '.join(QUANTIZE_CHOICES)}")
    if setting == "auto":
        return "int8" if device.type == "cuda" else "none"
    return setting


class Int8Projection(nn.Module):
    """``x @ W.T (+ bias)`` with W stored as int8 and one float scale per output channel (symmetric)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        self.register_buffer("weight", (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(weight.dtype))
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scales)
            y = y.view(*x.shape[:-1], -1)
        else:
            # Dequantize inside the matmul: torch.compile fuses the cast into the GEMV's weight load.
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales
        return y if self.bias is None else y + self.bias


def int4_group_size(in_features: int) -> int:
    """The group (input columns sharing a scale and zero): 128 as gpt-fast uses, 32 for widths 128 does not divide."""
    for group in (128, 32):
        if in_features % group == 0:
            return group
    raise ValueError(f"int4 quantization needs an input width divisible by 32; this linear has {in_features}")


class Int4Projection(nn.Module):
    """``x @ W.T (+ bias)`` with W in 4 bits per group of input columns (asymmetric: a scale and a zero each).

    Stored as PyTorch's packed layout for its int4 kernels: ``_weight_int4pack_mm`` on CUDA
    (bfloat16 activations), ``_weight_int4pack_mm_for_cpu`` on the CPU.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        n, k = weight.shape
        if weight.device.type != "cpu" and weight.dtype != torch.bfloat16:
            raise ValueError(f"int4 quantization on {weight.device.type} needs dtype bfloat16 (its kernel's), "
                             f"not {str(weight.dtype).removeprefix('torch.')}")
        self.group = int4_group_size(k)
        w = weight.detach().float().reshape(n, k // self.group, self.group)
        lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
        scales = ((hi - lo) / 15).clamp(min=1e-6)
        q = ((w - lo) / scales).round().clamp(0, 15).to(torch.int32).reshape(n, k).contiguous()
        # The kernels compute (q - 8) * scale + zero, so zero is the value of q = 8.
        zeros = lo + 8 * scales
        self.register_buffer("scales_and_zeros", torch.stack([scales.view(n, -1), zeros.view(n, -1)], dim=-1)
                             .transpose(0, 1).contiguous().to(weight.dtype))
        if weight.device.type == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
        else:
            inner_k_tiles = next(t for t in (8, 4, 2) if k % (t * 16) == 0)
            packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), inner_k_tiles)
        self.register_buffer("weight", packed)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if x.device.type == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm(flat, self.weight, self.group, self.scales_and_zeros)
        y = y.view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def quantize_model(model: nn.Module, mode: str) -> None:
    """Replace the fused model's projections (qkv, gate_up, o_proj, down_proj, lm_head) by ``mode``'s kind, in place.

    Runs after ``Transformer.fuse_for_inference``, so q/k/v and gate/up are quantized as the
    one matrix each that the forward pass multiplies by. The per-projection linears whose
    weights were views of the fused ones are dropped, so their float storage is freed (the
    state_dict no longer has them: a quantized model is for inference only). The embedding
    table stays float, even when the LM head shares it.
    """
    if mode == "none":
        return
    kind = {"int8": Int8Projection, "int4": Int4Projection}[mode]

    def quantized(linear: nn.Module) -> nn.Module:
        return kind(linear.weight, linear.bias)

    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.qkv is not None and mlp.gate_up is not None, "fuse_for_inference() first"
        attn.qkv, mlp.gate_up = quantized(attn.qkv), quantized(mlp.gate_up)
        attn.o_proj, mlp.down_proj = quantized(attn.o_proj), quantized(mlp.down_proj)
        attn.q_proj = attn.k_proj = attn.v_proj = mlp.gate_proj = mlp.up_proj = None
    model.lm_head = quantized(model.lm_head)
