"""The Llama transformer used by Code Llama: RMSNorm, RoPE, grouped-query attention, SwiGLU.

One module serves both inference (with a preallocated KV cache) and training (no cache,
full causal attention). Parameter names follow Hugging Face's ``LlamaForCausalLM`` so a
``model.safetensors`` loads into it, and saves from it, without renaming.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codellama_lsp.engine.config import ModelArgs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 as the reference does, so bf16/fp16 runs stay stable.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(args: ModelArgs, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed-sin tables of shape [len(positions), head_dim] for the rotate-half (Hugging Face) layout.

    The sine table carries the rotation's sign (-sin on the first half, +sin on the second),
    so applying RoPE is three kernels: ``x*cos + roll(x)*sin``. A position may be negative:
    rotating by -d undoes a rotation by d, which is how cached keys move to earlier positions.
    """
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=positions.device).float() / hd))
    freqs = torch.outer(positions.float() / args.rope_scaling_factor, inv_freq)
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-freqs.sin(), freqs.sin()), dim=-1).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, T, D] by the tables' rows for its positions ([T, D]).

    Rotate-half pairs element i with i ± D/2: rolling by D/2 swaps the halves, and the
    signed sine table supplies the minus sign of the first half.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


class Projection(nn.Module):
    """``x @ weight.T + bias`` on float weights held as buffers (the quantized kinds are in ``quantize.py``).

    Buffers, not parameters: the fused weights are views shared with the checkpoint's own
    parameters, so ``parameters()`` and ``state_dict()`` still list each weight once, and a
    buffer is a fixed address that CUDA graphs can capture.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def fuse_linears(*linears: nn.Linear) -> Projection:
    """One projection computing the linears' outputs side by side; each parameter becomes a view of it.

    The parameters keep their names, shapes and values (checkpoints and state_dict are
    unchanged) and no memory is duplicated. Inference then needs one matmul where it
    needed several, in the layout the GEMV kernels read fastest: input-major for float32,
    but output-major, nn.Linear's own, for bfloat16 and float16 on the CPU, whose kernels
    read input-major at about half the speed (docs/measurements.md, "Torch engine: the layout
    of fused weights"). A GPU keeps input-major, as before (untested here). One linear alone just gets the layout.
    """
    weight = linears[0].weight
    if weight.dtype != torch.float32 and weight.device.type == "cpu":
        fused = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    else:
        fused = torch.cat([lin.weight.detach().t() for lin in linears], dim=1).contiguous().t()
    bias = None if linears[0].bias is None else torch.cat([lin.bias.detach() for lin in linears])
    row = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = nn.Parameter(fused[row : row + n], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[row : row + n], requires_grad=False)
        row += n
    return Projection(fused, bias)


class DecodePosition(NamedTuple):
    """Where the one token of a static-shape decode step goes: tensors, so every step has the same graph.

    ``index`` [1] is its position; ``visible`` [1, 1, 1, cache length] is True for the cache
    rows it attends to (0..index), so attention always reads the whole cache and never
    changes shape as the sequence grows (what CUDA graphs need).
    """

    index: Tensor
    visible: Tensor


class KVCache(nn.Module):
    """Keys and values for one layer, preallocated to the engine's context length."""

    def __init__(self, n_kv_heads: int, head_dim: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (1, n_kv_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k``/``v`` at ``start..``; the keys and values up to them (shapes grow with ``start``)."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def write(self, index: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write one position's ``k``/``v`` at the position tensor ``index``; the whole cache (fixed shapes)."""
        self.k.index_copy_(2, index, k)
        self.v.index_copy_(2, index, v)
        return self.k, self.v

    def move(self, start: int, end: int, delta: int, cos: Tensor, sin: Tensor) -> None:
        """Positions ``start..end-1`` move ``delta`` later; keys are rotated by the tables of position ``delta``.

        RoPE rotations compose, so a key rotated for position p, rotated again by delta, is the
        key rotated for p + delta: the block's keys are as if computed there, except that
        they attended to what preceded them when they were computed.
        """
        k, v = self.k[:, :, start:end].clone(), self.v[:, :, start:end].clone()
        self.k[:, :, start + delta:end + delta] = apply_rope(k, cos, sin)
        self.v[:, :, start + delta:end + delta] = v


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        d, hd = args.hidden_size, args.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = args.num_attention_heads, args.num_key_value_heads, hd
        bias = args.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)
        self.kv_cache: KVCache | None = None
        self.qkv: nn.Module | None = None  # q, k, v in one projection, once fuse() has run

    def fuse(self) -> None:
        """Back q/k/v with one tensor (they become views of it): one matmul per step instead of three."""
        self.qkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int | DecodePosition | None) -> Tensor:
        b, t, _ = x.shape
        h, kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if self.qkv is not None:
            # Rotate q and k together: they are adjacent heads of the fused output.
            qk, v = self.qkv(x).view(b, t, h + 2 * kv, hd).transpose(1, 2).split([h + kv, kv], dim=1)
            q, k = apply_rope(qk, cos, sin).split([h, kv], dim=1)
        else:
            q = self.q_proj(x).view(b, t, h, hd).transpose(1, 2)
            k = self.k_proj(x).view(b, t, kv, hd).transpose(1, 2)
            v = self.v_proj(x).view(b, t, kv, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = None
        causal = t > 1
        if isinstance(start, DecodePosition):
            assert self.kv_cache is not None, "setup_cache() first"
            k, v = self.kv_cache.write(start.index, k, v)
            mask, causal = start.visible, False
        elif start is not None:
            assert self.kv_cache is not None, "setup_cache() first"
            k, v = self.kv_cache.update(start, k, v)
            if start > 0 and t > 1:
                # New queries see every cached key plus the new ones up to themselves.
                cols = torch.arange(start + t, device=x.device)
                rows = torch.arange(start, start + t, device=x.device)
                mask, causal = cols[None, :] <= rows[:, None], False
            elif t == 1:
                causal = False
        gqa = self.n_heads != self.n_kv_heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)
        self.gate_up: nn.Module | None = None  # gate and up in one projection, once fuse() has run

    def fuse(self) -> None:
        self.gate_up = fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int | DecodePosition | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """The stack under the LM head; named ``model`` in the parent to match HF's weight names."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class RotaryTables(nn.Module):
    """RoPE's cos and signed-sin rows (``rope_tables``), grown on demand.

    Buffers, so they follow the model's device and a compiled decode step reads them at
    fixed addresses; not persistent, since they are computed, never loaded.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def ensure(self, length: int, like: Tensor) -> None:
        """At least ``length`` rows, in ``like``'s dtype and on its device (doubling, so growth is rare)."""
        if self.cos.shape[0] < length or self.cos.dtype != like.dtype or self.cos.device != like.device:
            positions = torch.arange(max(length, 2 * self.cos.shape[0]), device=like.device)
            self.cos, self.sin = rope_tables(self.args, positions, like.dtype)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = Body(args)
        self.lm_head: nn.Module = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope = RotaryTables(args)
        self.cache_length = 0
        self.register_buffer("cache_positions", torch.empty(0, dtype=torch.long), persistent=False)

    def _rope_rows(self, start: int, t: int, like: Tensor) -> tuple[Tensor, Tensor]:
        self.rope.ensure(max(start + t, self.cache_length), like)
        return self.rope.cos[start : start + t], self.rope.sin[start : start + t]

    def setup_cache(self, length: int) -> None:
        """Preallocate every layer's KV cache for ``length`` positions (the memory bound), and RoPE rows for them."""
        p = self.model.embed_tokens.weight  # float even when the linears are quantized
        self.cache_length = length
        for layer in self.model.layers:
            layer.self_attn.kv_cache = KVCache(self.args.num_key_value_heads, self.args.head_dim, length, p.dtype, p.device)
        self.rope.ensure(length, p)
        self.cache_positions = torch.arange(length, device=p.device)

    def move_cache(self, start: int, end: int, delta: int) -> None:
        """Move every layer's cached positions ``start..end-1`` by ``delta`` (see ``KVCache.move``)."""
        p = self.model.embed_tokens.weight  # the cache's dtype and device (the head may be quantized)
        cos, sin = rope_tables(self.args, torch.tensor([delta], device=p.device), p.dtype)
        for layer in self.model.layers:
            assert layer.self_attn.kv_cache is not None, "setup_cache() first"
            layer.self_attn.kv_cache.move(start, end, delta, cos, sin)

    def fuse_for_inference(self) -> None:
        """Store every linear input-major, q/k/v and gate/up each as one tensor (see ``fuse_linears``).

        Values and parameter names are unchanged; only the storage moves, so this is done once
        after loading, for inference, and never for training.
        """
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
            fuse_linears(layer.self_attn.o_proj)
            fuse_linears(layer.mlp.down_proj)
        fuse_linears(self.lm_head)
        if self.args.tie_word_embeddings:
            self.model.embed_tokens.weight = self.lm_head.weight

    def forward(self, tokens: Tensor, start: int | None = None, last_only: bool = False) -> Tensor:
        """Logits for ``tokens`` [B, T].

        With ``start`` (an int), the tokens sit at positions ``start..start+T-1`` and attend
        to the cache, which they extend; without it, this is a plain causal pass (training).
        ``last_only`` computes logits for the final position only, which is all decoding needs.
        Shapes follow ``start`` and T: prefill and drafts come here; ``decode_one`` is the
        fixed-shape step for one token.
        """
        x = self.model.embed_tokens(tokens)
        cos, sin = self._rope_rows(start or 0, tokens.shape[1], x)
        return self._head(self._layers(x, cos, sin, start), last_only)

    def decode_one(self, token: Tensor, index: Tensor) -> Tensor:
        """Logits [1, 1, vocab] for ``token`` [1, 1] at the position tensor ``index`` [1], extending the cache.

        The same computation as ``forward(token, start=index.item())``, but every shape is fixed
        whatever the position: the cache is written with ``index_copy_``, attention reads the
        whole cache through a mask row (``DecodePosition``), RoPE rows are gathered by
        ``index``. So ``torch.compile(fullgraph=True)`` traces it once, and on CUDA
        mode "reduce-overhead" replays it as a CUDA graph. Attention reads all ``cache_length``
        positions, which costs more than ``forward`` early in a sequence when not compiled.
        """
        x = self.model.embed_tokens(token)
        at = DecodePosition(index, (self.cache_positions <= index).view(1, 1, 1, -1))
        return self._head(self._layers(x, self.rope.cos[index], self.rope.sin[index], at), False)

    def _layers(self, x: Tensor, cos: Tensor, sin: Tensor, start: int | DecodePosition | None) -> Tensor:
        for layer in self.model.layers:
            x = layer(x, cos, sin, start)
        return x

    def _head(self, x: Tensor, last_only: bool) -> Tensor:
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x))
