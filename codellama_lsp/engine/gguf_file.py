"""A GGUF file's metadata, without torch: its header, tensor names and hyperparameters.

The llama.cpp engine, GGUF tokenizers and the memory plan need no more. ``gguf.GGUFReader``
maps the file and parses its header and tensor table; reading weights (``gguf_reader``, for
the torch engine) builds on the reader this returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from codellama_lsp.engine.config import CheckpointError, ModelArgs

GGUF_MAGIC = b"GGUF"
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
_REQUIRED = object()


def open_gguf(path: Path) -> gguf.GGUFReader:
    """A ``GGUFReader`` on ``path``, or a CheckpointError saying what is wrong with the file."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from None
    if magic != GGUF_MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError, IndexError, KeyError, … on bad data
        raise CheckpointError(f"{path} is a truncated or corrupt GGUF file: {exc}") from None


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for a tensor this engine has no place for."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES \
            and parts[3] in ("weight", "bias"):
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def torch_shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape.tolist()))


def architecture(reader: gguf.GGUFReader, path: Path) -> str:
    """The file's architecture, if the torch engine lays it out (``ARCHITECTURES``); else a CheckpointError."""
    arch = str(metadata(reader, path, "general.architecture"))
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    return arch


def gguf_args(reader: gguf.GGUFReader, path: Path) -> ModelArgs:
    """The torch engine's hyperparameters from the metadata of the GGUF at ``path`` alone, for planning
    its memory before any tensor is read (``read_gguf`` checks the tensors' types and shapes)."""
    arch = architecture(reader, path)
    tensors = {name: t for t in reader.tensors if (name := hf_name(t.name)) is not None}
    try:
        return ModelArgs.from_hf_config(hf_config(reader, path, arch, tensors))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def window_args(reader: gguf.GGUFReader, path: Path) -> ModelArgs:
    """What planning a llama.cpp window needs (layers, KV heads, head size, declared length, RoPE base),
    from any architecture's metadata: llama.cpp runs architectures and RoPE scalings the torch
    engine does not, so none is refused here. The other fields are placeholders."""
    k = str(metadata(reader, path, "general.architecture")) + "."
    heads = int(_scalar(reader, path, k + "attention.head_count"))
    head_size = int(_scalar(reader, path, k + "attention.key_length", 0)) or \
        int(_scalar(reader, path, k + "embedding_length")) // max(1, heads)
    return ModelArgs(
        hidden_size=heads * head_size,  # so that ``head_dim`` is the keys' size
        num_hidden_layers=int(_scalar(reader, path, k + "block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_scalar(reader, path, k + "attention.head_count_kv", heads)),
        rope_theta=_f32(_scalar(reader, path, k + "rope.freq_base", 10000.0)),
        max_position_embeddings=int(_scalar(reader, path, k + "context_length")),
    )


def metadata(reader: gguf.GGUFReader, path: Path, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value; a missing required key is a CheckpointError naming it."""
    f = reader.get_field(key)
    if f is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path} lacks the GGUF metadata key {key!r}")
        return default
    return f.contents()


def _scalar(reader: gguf.GGUFReader, path: Path, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value that must be a single number (per-layer arrays are not supported)."""
    value = metadata(reader, path, key, default)
    if isinstance(value, list):
        raise CheckpointError(f"{path}: {key} varies per layer, which is not supported")
    return value


def hf_config(reader: gguf.GGUFReader, path: Path, arch: str, tensors: dict[str, Any]) -> dict[str, Any]:
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
        "vocab_size": torch_shape(tensors["model.embed_tokens.weight"])[0],
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
