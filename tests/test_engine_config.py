"""Real Code Llama hyperparameters are accepted; shapes and parameter counts match transformers (meta device)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from codellama_lsp.engine.config import CheckpointError, ModelArgs
from codellama_lsp.engine.checkpoint import read_args
from codellama_lsp.engine.model import Transformer

# Code Llama's published config.json values (Hugging Face model cards for CodeLlama-{7,13,34,70}b-hf).
REAL = {
    "7B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32016),
    "13B": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                intermediate_size=13824, vocab_size=32016),
    "34B": dict(hidden_size=8192, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8,
                intermediate_size=22016, vocab_size=32000),
    "70B": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                intermediate_size=28672, vocab_size=32016),
}
COMMON = dict(rope_theta=1_000_000.0, rms_norm_eps=1e-5, max_position_embeddings=16384, tie_word_embeddings=False,
              model_type="llama", architectures=["LlamaForCausalLM"], torch_dtype="bfloat16")


@pytest.mark.parametrize("name", list(REAL))
def test_real_config_is_accepted(name: str, tmp_path: Path) -> None:
    cfg = {**REAL[name], **COMMON}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    args = read_args(tmp_path)
    assert (args.hidden_size, args.num_hidden_layers, args.num_attention_heads, args.num_key_value_heads,
            args.intermediate_size, args.vocab_size) == tuple(REAL[name].values())
    assert args.rope_theta == 1e6 and args.rms_norm_eps == 1e-5 and args.head_dim == 128
    with torch.device("meta"):
        ours = Transformer(args)
        ref = LlamaForCausalLM(LlamaConfig(**cfg))
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if not k.endswith("inv_freq")}
    assert ours_shapes == ref_shapes
    assert args.num_parameters() == sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_published_7b_size() -> None:
    """Code Llama 7B has 6.74 B parameters (Meta's model card)."""
    args = ModelArgs(**REAL["7B"])
    assert round(args.num_parameters() / 1e9, 2) == 6.74


def test_roundtrip_through_hf_config() -> None:
    args = ModelArgs(**REAL["34B"], rope_scaling_factor=2.0)
    assert ModelArgs.from_hf_config(args.to_hf_config()) == args


def test_infilling_format_preference_round_trips_and_is_checked() -> None:
    assert "infilling_format" not in ModelArgs(**REAL["7B"]).to_hf_config()  # Code Llama's configs have none
    args = ModelArgs(**REAL["7B"], infilling_format="spm")
    assert ModelArgs.from_hf_config(args.to_hf_config()) == args
    with pytest.raises(CheckpointError, match="infilling_format 'fim' is not 'psm' or 'spm'"):
        ModelArgs.from_hf_config({**args.to_hf_config(), "infilling_format": "fim"})


def test_bad_head_counts_are_reported() -> None:
    with pytest.raises(CheckpointError, match="not a multiple of num_key_value_heads"):
        ModelArgs(hidden_size=512, num_attention_heads=8, num_key_value_heads=3)
    with pytest.raises(CheckpointError, match="lacks the field 'hidden_size'"):
        ModelArgs.from_hf_config({"num_attention_heads": 8})
