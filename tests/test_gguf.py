"""``codellama-lsp export-gguf``: the file's metadata and tensors, and llama.cpp computing what the engine computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from llama_cpp import Llama

from codellama_lsp.backends.text_prompt import as_text
from codellama_lsp.engine.engine import Engine
from codellama_lsp.generation import GenerationRequest
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.gguf_export import export_gguf, to_interleaved
from codellama_lsp.completion.templates import infilling_tokens
from conftest import make_random_checkpoint
from llamacpp_support import llamacpp_model_dir

PREFIX = "import os\n\n\ndef read_config(path):\n    with open(path) as f:\n        "
SUFFIX = "\n\n\ndef write_config(path, text):\n    pass  # naïve ✓\n"


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_metadata_tokenizer_and_tensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = export_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    reader = gguf.GGUFReader(out)
    model, tok = load_model(tiny_model_dir, device="cpu")
    args = model.args
    assert _field(reader, "general.architecture") == "llama"
    assert (_field(reader, "llama.rope.freq_base"), _field(reader, "llama.attention.head_count"),
            _field(reader, "llama.attention.head_count_kv"), _field(reader, "llama.block_count"),
            _field(reader, "llama.context_length")) == (1e6, 4, 2, 2, 2048)
    assert (_field(reader, "tokenizer.ggml.fim_pre_token_id"), _field(reader, "tokenizer.ggml.fim_suf_token_id"),
            _field(reader, "tokenizer.ggml.fim_mid_token_id"), _field(reader, "tokenizer.ggml.eot_token_id")) == \
        (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id)
    assert _field(reader, "tokenizer.ggml.add_space_prefix") is False
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == args.vocab_size and tokens[tok.prefix_id] == "▁<PRE>"
    assert types[tok.prefix_id] == gguf.TokenType.CONTROL and types[tok.sp.PieceToId("☺")] == gguf.TokenType.USER_DEFINED
    assert types[tok.sp.PieceToId("<0x0A>")] == gguf.TokenType.BYTE and types[0] == gguf.TokenType.UNKNOWN
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 9 * args.num_hidden_layers
    state = model.state_dict()
    q = state["model.layers.1.self_attn.q_proj.weight"]
    k = state["model.layers.1.self_attn.k_proj.weight"]
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_q.weight"].data), to_interleaved(q, 4).numpy())
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_k.weight"].data), to_interleaved(k, 2).numpy())
    np.testing.assert_array_equal(np.asarray(tensors["output.weight"].data), state["lm_head.weight"].numpy())


def test_rotary_permutation_inverts_the_meta_to_hf_one() -> None:
    from codellama_lsp.engine.checkpoint import _permute_rotary

    w = torch.randn(4 * 16, 32)
    assert torch.equal(to_interleaved(_permute_rotary(w, 4), 4), w)
    assert not torch.equal(to_interleaved(w, 4), w)


def test_tied_embeddings_and_f16(tokenizer_path: Path, tmp_path: Path) -> None:
    tied = make_random_checkpoint(tmp_path / "tied", tokenizer_path, tie_word_embeddings=True)
    reader = gguf.GGUFReader(export_gguf(tied, tmp_path / "tied.gguf", "f16"))
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" not in names  # llama.cpp falls back to token_embd
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16


def test_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "codellama_lsp", "export-gguf"]
    ok = subprocess.run(run + [str(tiny_model_dir), str(tmp_path / "x.gguf")], capture_output=True, text=True)
    assert ok.returncode == 0 and f"wrote {tmp_path / 'x.gguf'}" in ok.stdout, ok.stderr
    bad = subprocess.run(run + [str(tmp_path / "nowhere"), str(tmp_path / "y.gguf")], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot export" in bad.stderr and "is not a directory" in bad.stderr
    assert not (tmp_path / "y.gguf").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    scratch = tmp_path_factory.mktemp("gguf")
    model_dir = llamacpp_model_dir(scratch)
    return model_dir, export_gguf(model_dir, scratch / "model.gguf")


def _llamacpp_greedy(llm: Llama, prompt: list[int], n: int, stop: set[int]) -> list[int]:
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
        if token in stop or len(out) == n:
            break
        out.append(token)
    return out


@pytest.mark.parametrize("fmt", ["psm", "spm"])
def test_llamacpp_greedy_output_equals_the_engine(exported: tuple[Path, Path], fmt: str) -> None:
    model_dir, path = exported
    torch.set_num_threads(1)
    engine = Engine.load(model_dir, device="cpu")
    tok = engine.tokenizer
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        prompt = infilling_tokens(tok, PREFIX, SUFFIX, fmt)  # type: ignore[arg-type]
        # What a text-taking server (llama-cpp-python's OpenAI endpoint) does with our text is our ids.
        assert llm.tokenize(as_text(tok, prompt).encode(), add_bos=True, special=True) == prompt
        ours = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=24))
        theirs = _llamacpp_greedy(llm, prompt, 24, {tok.eot_id, tok.eos_id})
        assert theirs == ours.token_ids, (tok.decode(theirs), ours.text)
        assert llm.detokenize(theirs).decode() == ours.text
    finally:
        llm.close()
        engine.close()
