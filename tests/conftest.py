"""Fixtures: a tiny sentencepiece tokenizer with Code Llama's pieces, and random-weight checkpoints."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from codellama_lsp.engine.config import ModelArgs

from codellama_lsp.engine.checkpoint import save_checkpoint
from codellama_lsp.engine.model import Transformer
from lsp_harness import endless_copy

# llama.cpp reads this once per process, at its first matrix product. Off in the tests and in the
# servers they start, whatever an earlier process measured on this CPU (engine/llamacpp_kernels.py):
# where every batch size then gives the same logits, the tests check that it does.
os.environ.setdefault("GGML_CPU_TILED_MM", "0")

TINY_ARGS = dict(
    hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    rope_theta=1e6, max_position_embeddings=2048, tie_word_embeddings=False,
)


def train_test_tokenizer(out: Path, vocab_size: int = 512, fim: bool = True) -> Path:
    """A small BPE tokenizer trained on a few stdlib modules, shaped like Code Llama's."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "\n".join((stdlib / name).read_text(encoding="utf-8") for name in ("textwrap.py", "heapq.py", "bisect.py"))
    sentences = [line for line in text.splitlines() if line.strip()] + ["naïve café 日本語 ünïcödé ✓ 😀"]
    prefix = out / "tok"
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(sentences),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        control_symbols=["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"] if fim else [],
        user_defined_symbols=["☺"],
        character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2,
    )
    return Path(f"{prefix}.model")


def make_random_checkpoint(out: Path, tokenizer: Path, seed: int = 0, **overrides) -> Path:
    """Save a random-weight Llama in the Hugging Face layout, sized for ``tokenizer``."""
    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer)).GetPieceSize()
    args = ModelArgs(**{**TINY_ARGS, "vocab_size": vocab, **overrides})
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)  # larger than init so logits are far from uniform and greedy is well defined
    return save_checkpoint(model, out, tokenizer)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_test_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def endless_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_path: Path) -> Path:
    """The tiny model made never to emit EOS or EOT: a request runs until its token limit, a
    stop string, a loop, or a cancel; tests wait for it to write (``Client.wait_writing``)
    before they cancel it or type. Its 4096-token context holds the default budgets plus
    1024 new tokens, so those are not cut."""
    tiny = make_random_checkpoint(tmp_path_factory.mktemp("tiny_4k"), tokenizer_path, max_position_embeddings=4096)
    return endless_copy(tiny, tmp_path_factory.mktemp("endless"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_path: Path) -> Path:
    """A random GQA model (4 heads, 2 KV heads, rope_theta 1e6) with the test tokenizer."""
    return make_random_checkpoint(tmp_path_factory.mktemp("tiny_model"), tokenizer_path)


@pytest.fixture(scope="session")
def real_gguf() -> Path:
    """The real default model's GGUF (assembled on first use), or a visible skip when its packages are missing."""
    from codellama_lsp.engine import default_model

    if not default_model.installed():
        pytest.skip(f"the real default model is not installed ({default_model.DEFAULT.requirement()})")
    return default_model.default_gguf()
