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
from codellama_lsp.engine.gguf_file import architecture, hf_config, hf_name, open_gguf, torch_shape

Q = gguf.GGMLQuantizationType
# Types gguf.quants.dequantize covers that llama.cpp's common model files use.
SUPPORTED_TYPES = frozenset({
    Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
})
_CHUNK_VALUES = 1 << 21  # dequantize about 2M values (8 MB of float32) at a time


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
        return {name: torch_shape(t) for name, t in self._tensors.items()}

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
        return rotate_half_rows(torch_shape(t)[0], heads)


def _dequantize(t: Any, dtype: torch.dtype, row_order: torch.Tensor | None) -> torch.Tensor:
    """Dequantize one GGUF tensor into a new ``dtype`` tensor, chunk by chunk of rows.

    ``row_order[i]`` is the output row of stored row ``i`` (None: the same row).
    """
    shape = torch_shape(t)
    out = torch.empty(shape, dtype=dtype)
    # A plain ndarray view of the mapping: numpy's memmap subclass costs a Python call per slice
    # the dequantizer takes, most of a load's time (docs/measurements.md, "Torch engine: loading a GGUF").
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
    arch = architecture(reader, path)
    tensors = _map_tensors(reader, path)
    config = hf_config(reader, path, arch, tensors)
    try:
        args = ModelArgs.from_hf_config(config)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    _check_shapes(path, args, config["attention_bias"], tensors)
    return GgufCheckpoint(path=path, arch=arch, config=config, args=args, reader=reader, _tensors=tensors)


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


def _check_shapes(path: Path, args: ModelArgs, attention_bias: bool, tensors: dict[str, Any]) -> None:
    """Every tensor the model needs is there with the shape the hyperparameters imply, and no other."""
    expected = expected_shapes(args, attention_bias)
    for name, t in tensors.items():
        if name not in expected:
            raise CheckpointError(f"{path}: unexpected tensor {t.name!r} for this model's hyperparameters")
        if torch_shape(t) != expected[name]:
            raise CheckpointError(
                f"{path}: tensor {t.name!r} has shape {torch_shape(t)}, expected {expected[name]} (torch order)"
            )
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{path}: missing tensors {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
