"""Model hyperparameters, read from a Hugging Face ``config.json`` or Meta's ``params.json``.

One dataclass serves both layouts so the rest of the engine never cares where a
checkpoint came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class CheckpointError(Exception):
    """A checkpoint directory is missing a file or holds something we cannot use."""


@dataclass(frozen=True)
class ModelArgs:
    """Llama hyperparameters, named as in Hugging Face's LlamaConfig."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    vocab_size: int = 32016
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    rope_scaling_factor: float = 1.0  # "linear" rope scaling; 1.0 means none
    max_position_embeddings: int = 16384
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on q/k/v (Qwen2's layout; Llama has none)
    # The infilling prompt layout the model does best in ("psm" or "spm"), for the server's format
    # "auto". Not a LlamaConfig field: None (Code Llama's checkpoints) means PSM, Code Llama's main one.
    infilling_format: str | None = None

    def __post_init__(self) -> None:
        if self.infilling_format not in (None, "psm", "spm"):
            raise CheckpointError(f"infilling_format {self.infilling_format!r} is not 'psm' or 'spm'")
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> "ModelArgs":
        """Build from the fields of a Hugging Face LlamaConfig ``config.json``."""
        scaling = cfg.get("rope_scaling") or {}
        kind = scaling.get("type", scaling.get("rope_type", "linear")) if scaling else None
        if scaling and kind != "linear":
            raise CheckpointError(f"rope_scaling type {kind!r} is not supported (only 'linear')")
        try:
            heads = int(cfg["num_attention_heads"])
            return cls(
                hidden_size=int(cfg["hidden_size"]),
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                vocab_size=int(cfg["vocab_size"]),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                rope_theta=float(cfg.get("rope_theta", 10000.0)),
                rope_scaling_factor=float(scaling.get("factor", 1.0)) if scaling else 1.0,
                max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                # Qwen2's config has no such field: its q/k/v always have biases (transformers' Qwen2Attention).
                attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
                infilling_format=cfg.get("infilling_format"),
            )
        except KeyError as exc:
            raise CheckpointError(f"config.json lacks the field {exc.args[0]!r}") from None

    @classmethod
    def from_meta_params(cls, params: dict[str, Any], vocab_size: int) -> "ModelArgs":
        """Build from Meta's ``params.json``; its FFN size is derived as in Meta's model code."""
        dim = int(params["dim"])
        heads = int(params["n_heads"])
        hidden = int(2 * (4 * dim) / 3)
        if params.get("ffn_dim_multiplier") is not None:
            hidden = int(float(params["ffn_dim_multiplier"]) * hidden)
        multiple = int(params.get("multiple_of", 256))
        hidden = multiple * ((hidden + multiple - 1) // multiple)
        vocab = int(params.get("vocab_size", -1))
        return cls(
            hidden_size=dim,
            intermediate_size=hidden,
            num_hidden_layers=int(params["n_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(params.get("n_kv_heads") or heads),
            vocab_size=vocab if vocab > 0 else vocab_size,
            rms_norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 10000.0)),
            max_position_embeddings=16384,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The ``config.json`` a Hugging Face LlamaForCausalLM (and this engine) reads back."""
        out = asdict(self)
        factor = out.pop("rope_scaling_factor")
        if out["infilling_format"] is None:
            del out["infilling_format"]
        out.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            hidden_act="silu",
            rope_scaling={"type": "linear", "factor": factor} if factor != 1.0 else None,
            bos_token_id=1,
            eos_token_id=2,
            torch_dtype="float32",
            mlp_bias=False,
        )
        return out

    def num_parameters(self) -> int:
        """Parameter count, embeddings included (tied ones counted once)."""
        d, f, L = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        kv = self.num_key_value_heads * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        biases = (d + 2 * kv) if self.attention_bias else 0
        return L * (per_layer + biases) + emb + d

    def kv_cache_bytes(self, positions: int, itemsize: int) -> int:
        """Bytes of every layer's keys and values for ``positions`` positions, ``itemsize`` bytes an element."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * positions * itemsize


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file, turning every failure into a CheckpointError naming the path."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from None
