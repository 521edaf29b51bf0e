"""Read a GGUF checkpoint (llama.cpp's format): hyperparameters as ``ModelArgs``, weights as HF tensors.

The file is memory-mapped by the ``gguf`` package's ``GGUFReader``; tensors are dequantized
with ``gguf.quants.dequantize`` one at a time, in row chunks written straight into the
output tensor, so reading never holds more than the tensor being produced plus one chunk
(the library's own whole-tensor dequantize would briefly hold two copies of it).

Names and layouts are those of Hugging Face's LlamaForCausalLM / Qwen2ForCausalLM, which
the engine uses:

* GGUF stores each tensor's dimensions innermost first (ggml's ``ne`` order); the torch
  shape is that list reversed, e.g. ``token_embd.weight`` ``[hidden, vocab]`` is
  ``model.embed_tokens.weight`` ``(vocab, hidden)``.
* For ``llama`` files, llama.cpp's converter (convert_hf_to_gguf.py, ``LlamaModel.permute``)
  reorders the rows of ``q_proj``/``k_proj`` from Hugging Face's rotate-half rotary layout
  into Meta's interleaved-pairs one, per head (per KV head for ``k_proj``); reading undoes
  it. ``qwen2`` files are converted without that permutation, so their rows are taken as
  they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np
import torch

from codellama_lsp.engine.config import CheckpointError, ModelArgs
from codellama_lsp.engine.gguf_file import open_gguf

Q = gguf.GGMLQuantizationType
# Types gguf.quants.dequantize covers that llama.cpp's common model files use.
SUPPORTED_TYPES = frozenset({
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
})
# GGUF architecture -> the Hugging Face class whose names and layout the tensors get.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# blk.N.<kind> -> model.layers.N.<module>; the .weight/.bias suffix carries over.
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_CHUNK_VALUES = 1 << 21  # dequantize about 2M values (8 MB of float32) at a time
_REQUIRED = object()


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for a tensor this engine has no place for."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES \
            and parts[3] in ("weight", "bias"):
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def rotate_half_rows(n_rows: int, n_heads: int) -> torch.Tensor:
    """For each row of a llama.cpp q/k projection, the row it has in Hugging Face's layout.

    llama.cpp's row ``(head, j, k)`` of a ``(heads, head_dim/2, 2)`` grid holds Hugging Face's
    row ``(head, k, j)`` of a ``(heads, 2, head_dim/2)`` grid.
    """
    half = n_rows // n_heads // 2
    return torch.arange(n_rows).view(n_heads, 2, half).transpose(1, 2).reshape(-1)


def expected_shapes(args: ModelArgs, attention_bias: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor a Llama/Qwen2 with ``args`` has, with its shape (lm_head only when untied)."""
    d, f, kv = args.hidden_size, args.intermediate_size, args.num_key_value_heads * args.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (args.vocab_size, d), "model.norm.weight": (d,)}
    if not args.tie_word_embeddings:
        out["lm_head.weight"] = (args.vocab_size, d)
    per_layer = {
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (d, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, d),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
    }
    if attention_bias:
        per_layer.update({"self_attn.q_proj.bias": (d,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)})
    for layer in range(args.num_hidden_layers):
        out.update({f"model.layers.{layer}.{k}": v for k, v in per_layer.items()})
    return out


@dataclass
class GgufCheckpoint:
    """A GGUF file's architecture, HF-style config, ``ModelArgs`` and (lazily read) tensors.

    ``config`` is what a Hugging Face ``config.json`` for the model would hold, plus
    ``attention_bias``: True when q/k/v projections have biases (Qwen2; named
    ``model.layers.N.self_attn.{q,k,v}_proj.bias``), which ``ModelArgs`` does not carry.
    ``reader`` is the open ``gguf.GGUFReader``; ``load_gguf_tokenizer`` accepts it.
    """

    path: Path
    arch: str
    config: dict[str, Any]
    args: ModelArgs
    reader: gguf.GGUFReader = field(repr=False)
    _tensors: dict[str, Any] = field(repr=False)  # HF name -> gguf ReaderTensor

    @property
    def attention_bias(self) -> bool:
        return bool(self.config["attention_bias"])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """HF name -> torch shape of every tensor, without reading any data."""
        return {name: _torch_shape(t) for name, t in self._tensors.items()}

    def tensor_types(self) -> dict[str, str]:
        """HF name -> the GGML type it is stored as (``"Q4_K"``, ``"F32"``, …)."""
        return {name: t.tensor_type.name for name, t in self._tensors.items()}

    def tensor(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """One tensor by Hugging Face name, dequantized to ``dtype`` in HF's layout."""
        t = self._tensors[name]
        try:
            return _dequantize(t, dtype, self._row_order(name, t))
        except (ValueError, IndexError) as exc:  # the mapped data does not have the header's size
            raise CheckpointError(f"{self.path}: tensor {t.name!r} cannot be read: {exc}") from None

    def tensors(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) pairs, one dequantized tensor at a time, in file order."""
        for name in self._tensors:
            yield name, self.tensor(name, dtype)

    def _row_order(self, name: str, t: Any) -> torch.Tensor | None:
        """The rotary un-permutation for a llama file's q/k rows; None for everything else."""
        if self.arch != "llama":
            return None
        if ".self_attn.q_proj." in name:
            heads = self.args.num_attention_heads
        elif ".self_attn.k_proj." in name:
            heads = self.args.num_key_value_heads
        else:
            return None
        return rotate_half_rows(_torch_shape(t)[0], heads)


def _torch_shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def _dequantize(t: Any, dtype: torch.dtype, row_order: torch.Tensor | None) -> torch.Tensor:
    """Dequantize one GGUF tensor into a new ``dtype`` tensor, chunk by chunk of rows.

    ``row_order[i]`` is the output row of stored row ``i`` (None: the same row).
    """
    shape = _torch_shape(t)
    out = torch.empty(shape, dtype=dtype)
    # A plain ndarray view of the mapping: numpy's memmap subclass costs a Python call per slice
    # the dequantizer takes (measured: 8 of 11 s of loading the 0.5B model went there).
    data = t.data.view(np.ndarray)
    if len(shape) == 1:  # norms and biases: small, one piece
        values = _as_torch(gguf.quants.dequantize(data, t.tensor_type)).reshape(shape)
        if row_order is None:
            out.copy_(values)
        else:
            out[row_order] = values.to(dtype)
        return out
    cols = shape[-1]
    rows_out = out.view(-1, cols)
    rows_in = data.reshape(rows_out.shape[0], -1)  # bytes per row for quantized types
    step = max(1, _CHUNK_VALUES // cols)
    for r0 in range(0, rows_out.shape[0], step):
        chunk = _as_torch(gguf.quants.dequantize(rows_in[r0:r0 + step], t.tensor_type))
        if row_order is None:
            rows_out[r0:r0 + chunk.shape[0]].copy_(chunk)
        else:
            rows_out.index_copy_(0, row_order[r0:r0 + chunk.shape[0]], chunk.to(dtype))
    return out


def _as_torch(values: np.ndarray) -> torch.Tensor:
    """A float32 numpy result as a torch tensor; a read-only view of the mapping is copied first."""
    if not values.flags.writeable:
        values = values.copy()
    return torch.from_numpy(values)


def read_gguf(path: str | Path) -> GgufCheckpoint:
    """Open and validate a GGUF checkpoint; tensors are read later, by ``tensors()``.

    Everything that can be checked without reading weights is checked here, so a file that
    cannot be loaded fails before any memory is spent: the header, the architecture, every
    tensor's name, type and shape, and the hyperparameters.
    """
    path = Path(path)
    reader = open_gguf(path)
    arch = str(_get(reader, path, "general.architecture"))
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    tensors = _map_tensors(reader, path)
    config = _hf_config(reader, path, arch, tensors)
    try:
        args = ModelArgs.from_hf_config(config)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    _check_shapes(path, args, config["attention_bias"], tensors)
    return GgufCheckpoint(path=path, arch=arch, config=config, args=args, reader=reader, _tensors=tensors)


def _get(reader: gguf.GGUFReader, path: Path, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value; a missing required key is a CheckpointError naming it."""
    f = reader.get_field(key)
    if f is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path} lacks the GGUF metadata key {key!r}")
        return default
    return f.contents()


def _map_tensors(reader: gguf.GGUFReader, path: Path) -> dict[str, Any]:
    """HF name -> ReaderTensor, refusing names we cannot place and types we cannot dequantize."""
    out = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            raise CheckpointError(f"{path}: unexpected tensor {t.name!r}")
        if t.tensor_type not in SUPPORTED_TYPES:
            raise CheckpointError(
                f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which is not supported "
                f"(supported: {', '.join(sorted(q.name for q in SUPPORTED_TYPES))})"
            )
        out[name] = t
    return out


def _scalar(reader: gguf.GGUFReader, path: Path, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value that must be a single number (per-layer arrays are not supported)."""
    value = _get(reader, path, key, default)
    if isinstance(value, list):
        raise CheckpointError(f"{path}: {key} varies per layer, which is not supported")
    return value


def _hf_config(reader: gguf.GGUFReader, path: Path, arch: str, tensors: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face ``config.json`` fields the GGUF's ``{arch}.*`` metadata stands for."""
    if "model.embed_tokens.weight" not in tensors:
        raise CheckpointError(f"{path} has no token_embd.weight")
    k = f"{arch}."
    hidden = int(_scalar(reader, path, k + "embedding_length"))
    heads = int(_scalar(reader, path, k + "attention.head_count"))
    head_dim = hidden // heads if heads else 0
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        value = _scalar(reader, path, k + key, None)
        if value is not None and int(value) != head_dim:
            raise CheckpointError(f"{path}: {k}{key} is {value}, not the head size {head_dim}, which is not supported")
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": int(_scalar(reader, path, k + "feed_forward_length")),
        "num_hidden_layers": int(_scalar(reader, path, k + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_scalar(reader, path, k + "attention.head_count_kv", heads)),
        "vocab_size": _torch_shape(tensors["model.embed_tokens.weight"])[0],
        "rms_norm_eps": _f32(_scalar(reader, path, k + "attention.layer_norm_rms_epsilon")),
        # llama.cpp's default when the key is absent (llama-model.cpp), as for HF's configs.
        "rope_theta": _f32(_scalar(reader, path, k + "rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(reader, path, k),
        "max_position_embeddings": int(_scalar(reader, path, k + "context_length")),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in tensors,
        "mlp_bias": False,
    }
    for key, name in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")):
        value = _scalar(reader, path, name, None)
        if value is not None:
            config[key] = int(value)
    return config


def _f32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that is that float32 (1e-06, not 9.99999997e-07).

    ``config.json`` holds the decimal; the float32 the GGUF stores is its rounding, and the
    model computes in at most float32 precision, so nothing is lost.
    """
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def _rope_scaling(reader: gguf.GGUFReader, path: Path, k: str) -> dict[str, Any] | None:
    """HF's ``rope_scaling`` from ``{arch}.rope.scaling.*`` (or the older ``rope.scale_linear``)."""
    kind = _scalar(reader, path, k + "rope.scaling.type", None)
    factor = _scalar(reader, path, k + "rope.scaling.factor", None)
    if kind is None:
        linear = _scalar(reader, path, k + "rope.scale_linear", None)
        return {"type": "linear", "factor": _f32(linear)} if linear not in (None, 1.0) else None
    if kind == "none" or (kind == "linear" and factor in (None, 1.0)):
        return None
    return {"type": str(kind), "factor": _f32(factor if factor is not None else 1.0)}


def _check_shapes(path: Path, args: ModelArgs, attention_bias: bool, tensors: dict[str, Any]) -> None:
    """Every tensor the model needs is there with the shape the hyperparameters imply, and no other."""
    expected = expected_shapes(args, attention_bias)
    for name, t in tensors.items():
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected tensor {t.name!r} for this model's hyperparameters")
        if _torch_shape(t) != expected[name]:
            raise CheckpointError(
                f"{path}: tensor {t.name!r} has shape {_torch_shape(t)}, expected {expected[name]} (torch order)"
            )
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{path}: missing tensors {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
