"""The Llama transformer used by Code Llama: RMSNorm, RoPE, grouped-query attention, SwiGLU.

One module serves both inference (with a preallocated KV cache) and training (no cache,
full causal attention). Parameter names follow Hugging Face's ``LlamaForCausalLM`` so a
``model.safetensors`` loads into it, and saves from it, without renaming.
"""

from __future__ import annotations

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


def rope_tables(args: ModelArgs, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and signed-sin tables of shape [length, head_dim] for the rotate-half (Hugging Face) layout.

    The sine table carries the rotation's sign (-sin on the first half, +sin on the second),
    so applying RoPE is three kernels: ``x*cos + roll(x)*sin``.
    """
    hd = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd))
    pos = torch.arange(length, device=device, dtype=torch.float32) / args.rope_scaling_factor
    freqs = torch.outer(pos, inv_freq)
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-freqs.sin(), freqs.sin()), dim=-1).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, T, D] by the tables' rows for its positions ([T, D]).

    Rotate-half pairs element i with i ± D/2: rolling by D/2 swaps the halves, and the
    signed sine table supplies the minus sign of the first half.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def fuse_linears(*linears: nn.Linear) -> tuple[Tensor, Tensor | None]:
    """Concatenate the linears' weights and biases, each parameter a view of them.

    The parameters keep their names, shapes and values (checkpoints and state_dict are
    unchanged) and no memory is duplicated. Inference then needs one matmul where it
    needed several, in the layout the GEMV kernels read fastest: input-major for float32
    (measured here: the 8192×192 LM head in ~0.6× the time), but output-major, nn.Linear's
    own, for bfloat16 and float16 on the CPU, whose kernels read input-major at about half
    the speed (measured here on CodeLlama-7B's shapes, one thread: bf16 5.1 vs 2.7 GB/s
    for q/k/v, 4.8 vs 1.7 for the LM head). A GPU keeps input-major, as before (untested
    here). One linear alone just gets the layout.
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
    return fused, bias


class KVCache(nn.Module):
    """Keys and values for one layer, preallocated to the engine's context length."""

    def __init__(self, n_kv_heads: int, head_dim: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        shape = (1, n_kv_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


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
        self.qkv: Tensor | None = None  # q, k, v weights in one tensor, once fuse() has run
        self.qkv_bias: Tensor | None = None

    def fuse(self) -> None:
        """Back q/k/v with one tensor (they become views of it): one matmul per step instead of three."""
        self.qkv, self.qkv_bias = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int | None) -> Tensor:
        b, t, _ = x.shape
        h, kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if self.qkv is not None:
            # Rotate q and k together: they are adjacent heads of the fused output.
            qk, v = F.linear(x, self.qkv, self.qkv_bias).view(b, t, h + 2 * kv, hd).transpose(1, 2).split([h + kv, kv], dim=1)
            q, k = apply_rope(qk, cos, sin).split([h, kv], dim=1)
        else:
            q = self.q_proj(x).view(b, t, h, hd).transpose(1, 2)
            k = self.k_proj(x).view(b, t, kv, hd).transpose(1, 2)
            v = self.v_proj(x).view(b, t, kv, hd).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = None
        causal = t > 1
        if start is not None:
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
        self.gate_up: Tensor | None = None

    def fuse(self) -> None:
        self.gate_up, _ = fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up is not None:
            gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """The stack under the LM head; named ``model`` in the parent to match HF's weight names."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = Body(args)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rope: tuple[Tensor, Tensor] | None = None
        self.cache_length = 0

    def _rope_rows(self, start: int, t: int, like: Tensor) -> tuple[Tensor, Tensor]:
        need = start + t
        if self._rope is None or self._rope[0].shape[0] < need or self._rope[0].dtype != like.dtype:
            length = max(need, self.cache_length, 2 * (self._rope[0].shape[0] if self._rope else 0))
            self._rope = rope_tables(self.args, length, like.device, like.dtype)
        cos, sin = self._rope
        return cos[start:need], sin[start:need]

    def setup_cache(self, length: int) -> None:
        """Preallocate every layer's KV cache for ``length`` positions (the memory bound)."""
        p = self.lm_head.weight
        self.cache_length = length
        for layer in self.model.layers:
            layer.self_attn.kv_cache = KVCache(self.args.num_key_value_heads, self.args.head_dim, length, p.dtype, p.device)

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
        """
        x = self.model.embed_tokens(tokens)
        cos, sin = self._rope_rows(start or 0, tokens.shape[1], x)
        for layer in self.model.layers:
            x = layer(x, cos, sin, start)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x))
