"""GGUF checkpoints: the llama round trip, every quantization type, clear errors, and the real default model."""

from __future__ import annotations

import ctypes
import dataclasses
from importlib.metadata import version
import tracemalloc
import weakref
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.config import CheckpointError, ModelArgs
from codellama_lsp.engine import gguf_reader
from codellama_lsp.engine.checkpoint import read_args
from codellama_lsp.engine.gguf_reader import GgufCheckpoint, read_gguf, rotate_half_rows
from codellama_lsp.engine.gguf_export import export_gguf, to_interleaved
from codellama_lsp.engine.gguf_file import gguf_args, open_gguf, window_args
from conftest import make_random_checkpoint

Q = gguf.GGMLQuantizationType

# GGUF's names (llama.cpp's gguf-py constants) for the HF ones, written out for the test files.
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def to_gguf_name(hf: str) -> str:
    if hf in _GLOBAL:
        return _GLOBAL[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{suffix}"


# Hidden size 256 so that every row is a whole number of K-quant super-blocks (256 values).
K_ARGS = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def write_gguf(path: Path, state: dict[str, torch.Tensor], args: ModelArgs, arch: str = "llama",
               encode: Callable[[str, np.ndarray], tuple[np.ndarray, Q | None]] | None = None,
               extra: dict[str, np.ndarray] | None = None, skip_keys: tuple[str, ...] = (),
               metadata: Callable[[gguf.GGUFWriter], None] | None = None) -> Path:
    """A GGUF with llama.cpp's metadata keys and tensor layout for ``state`` (HF names and layout).

    ``encode(name, array)`` gives each tensor's stored bytes and type (default: float32 as is).
    For ``llama`` the q/k rows are permuted to Meta's interleaved layout, as llama.cpp's converter does.
    """
    w = gguf.GGUFWriter(path, arch)
    keys = {
        "context_length": (w.add_uint32, args.max_position_embeddings),
        "embedding_length": (w.add_uint32, args.hidden_size),
        "block_count": (w.add_uint32, args.num_hidden_layers),
        "feed_forward_length": (w.add_uint32, args.intermediate_size),
        "attention.head_count": (w.add_uint32, args.num_attention_heads),
        "attention.head_count_kv": (w.add_uint32, args.num_key_value_heads),
        "attention.layer_norm_rms_epsilon": (w.add_float32, args.rms_norm_eps),
        "rope.freq_base": (w.add_float32, args.rope_theta),
    }
    for key, (add, value) in keys.items():
        if key not in skip_keys:
            add(f"{arch}.{key}", value)
    if metadata is not None:
        metadata(w)
    for name, t in state.items():
        if arch == "llama" and name.endswith("q_proj.weight"):
            t = to_interleaved(t, args.num_attention_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            t = to_interleaved(t, args.num_key_value_heads)
        data, qtype = (encode or (lambda n, a: (a, None)))(name, t.contiguous().numpy())
        w.add_tensor(to_gguf_name(name), data, raw_dtype=qtype)
    for name, data in (extra or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantizing(qtype: Q) -> Callable[[str, np.ndarray], tuple[np.ndarray, Q | None]]:
    """Matrices stored as ``qtype`` with gguf's quantizer; vectors (norms, biases) stay float32, as in llama.cpp."""
    def encode(name: str, a: np.ndarray) -> tuple[np.ndarray, Q | None]:
        if a.ndim < 2:
            return a, None
        data = gguf.quants.quantize(a, qtype)
        return data, (qtype if data.dtype == np.uint8 else None)
    return encode


def rel_rmse(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()


# Bounds on relative RMS error against the float source: about twice what each type's bits give
# for normal data (a uniform quantizer's step/sqrt(12); measured: Q8_0 0.005, Q6_K 0.018, Q5_K
# 0.036, Q4_K 0.072, Q4_0 0.087, Q3_K 0.15, Q2_K 0.30). A wrong layout or a missed q/k
# permutation gives about 1.4.
REL_RMSE = {"F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.035, "Q5_0": 0.06, "Q5_1": 0.05,
            "Q5_K": 0.07, "Q4_0": 0.15, "Q4_1": 0.12, "Q4_K": 0.14, "Q3_K": 0.3, "Q2_K": 0.55}


@pytest.fixture(scope="module")
def k_source(tmp_path_factory: pytest.TempPathFactory,
             tokenizer_path: Path) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """A random GQA llama (hidden 256) in HF layout: state dict and args."""
    ckpt = make_random_checkpoint(tmp_path_factory.mktemp("k_model"), tokenizer_path, **K_ARGS)
    return load_file(ckpt / "model.safetensors"), read_args(ckpt)


# --- the llama round trip through the project's exporter ------------------------------------------


def test_bundled_model_round_trip_is_exact(tmp_path: Path) -> None:
    """export-gguf, then read back: the same hyperparameters and bit-identical tensors (about 2 s)."""
    ckpt = read_gguf(export_gguf(BUNDLED_MODEL, tmp_path / "bundled.gguf"))
    assert ckpt.arch == "llama" and ckpt.config["architectures"] == ["LlamaForCausalLM"]
    # infilling_format is this project's config.json field; GGUF has no key for it.
    assert ckpt.args == dataclasses.replace(read_args(BUNDLED_MODEL), infilling_format=None)
    assert ckpt.config["attention_bias"] is False
    source = load_file(BUNDLED_MODEL / "model.safetensors")
    got = dict(ckpt.tensors())
    assert got.keys() == source.keys()  # tied: no lm_head in either
    for name, t in source.items():
        assert got[name].dtype == torch.float32 and torch.equal(got[name], t), name
    stored = {t.name: t for t in ckpt.reader.tensors}["blk.0.attn_q.weight"]
    # The file really holds the interleaved layout; equality above means it was undone.
    assert not np.array_equal(np.asarray(stored.data), source["model.layers.0.self_attn.q_proj.weight"].numpy())


def test_untied_gqa_round_trip_in_f32_and_f16(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = load_file(tiny_model_dir / "model.safetensors")
    f32 = read_gguf(export_gguf(tiny_model_dir, tmp_path / "f32.gguf"))
    assert f32.args == read_args(tiny_model_dir) and not f32.args.tie_word_embeddings
    assert {n: torch.equal(t, source[n]) for n, t in f32.tensors()} == {n: True for n in source}
    f16 = read_gguf(export_gguf(tiny_model_dir, tmp_path / "f16.gguf", "f16"))
    for name, t in f16.tensors(torch.float16):
        assert t.dtype == torch.float16 and torch.equal(t, source[name].half()), name
    assert f16.tensor_types()["model.layers.0.self_attn.q_proj.weight"] == "F16"


def test_rotate_half_rows_inverts_llamacpp_permutation() -> None:
    w = torch.randn(4 * 16, 8)
    out = torch.empty_like(w)
    out[rotate_half_rows(64, 4)] = to_interleaved(w, 4)
    assert torch.equal(out, w)


def test_qwen2_has_biases_and_no_permutation(k_source: tuple[dict[str, torch.Tensor], ModelArgs],
                                            tmp_path: Path) -> None:
    state, args = k_source
    kv = args.num_key_value_heads * args.head_dim
    state = dict(state)
    for layer in range(args.num_hidden_layers):
        for proj, n in (("q_proj", args.hidden_size), ("k_proj", kv), ("v_proj", kv)):
            state[f"model.layers.{layer}.self_attn.{proj}.bias"] = torch.randn(n)
    ckpt = read_gguf(write_gguf(tmp_path / "qwen.gguf", state, args, arch="qwen2"))
    assert ckpt.arch == "qwen2" and ckpt.config["architectures"] == ["Qwen2ForCausalLM"]
    assert ckpt.attention_bias and ckpt.config["tie_word_embeddings"] is False
    assert ckpt.args == dataclasses.replace(args, attention_bias=True)
    got = dict(ckpt.tensors())
    assert got.keys() == state.keys()
    assert all(torch.equal(got[n], t) for n, t in state.items())


# --- quantization types ---------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q5_0, Q.Q5_1, Q.Q4_0, Q.Q4_1,
                                   Q.Q6_K, Q.Q5_K, Q.Q4_K, Q.Q3_K, Q.Q2_K], ids=lambda q: q.name)
def test_gguf_quantized_types_dequantize_within_tolerance(
        qtype: Q, k_source: tuple[dict[str, torch.Tensor], ModelArgs], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantized by the gguf package; ours equals the library's whole-tensor dequantization exactly
    (rows un-permuted, chunks of 5 rows so every chunk boundary is crossed) and is near the source."""
    state, args = k_source
    try:
        gguf.quants.quantize(np.zeros((1, 256), np.float32), qtype)
    except NotImplementedError:
        pytest.skip(f"gguf {version('gguf')} cannot quantize {qtype.name}; "
                    "llama.cpp quantizes it in test_llamacpp_quantized_files_dequantize_within_tolerance")
    monkeypatch.setattr(gguf_reader, "_CHUNK_VALUES", 5 * args.hidden_size)
    ckpt = read_gguf(write_gguf(tmp_path / f"{qtype.name}.gguf", state, args, encode=quantizing(qtype)))
    stored = {t.name: t for t in ckpt.reader.tensors}
    for name, got in ckpt.tensors():
        raw = stored[to_gguf_name(name)]
        whole = torch.from_numpy(gguf.quants.dequantize(raw.data, raw.tensor_type).copy())
        heads = {"q_proj": args.num_attention_heads, "k_proj": args.num_key_value_heads}.get(name.split(".")[-2])
        assert torch.equal(to_interleaved(got, heads) if heads else got, whole), name
        assert rel_rmse(got, state[name]) <= REL_RMSE[raw.tensor_type.name], (name, raw.tensor_type.name)
    assert qtype.name in set(ckpt.tensor_types().values())


@pytest.fixture(scope="module")
def f32_k_gguf(k_source: tuple[dict[str, torch.Tensor], ModelArgs], tmp_path_factory: pytest.TempPathFactory) -> Path:
    state, args = k_source
    return write_gguf(tmp_path_factory.mktemp("f32") / "model-f32.gguf", state, args)


@pytest.mark.parametrize("ftype", ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K",
                                   "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_llamacpp_quantized_files_dequantize_within_tolerance(
        ftype: str, k_source: tuple[dict[str, torch.Tensor], ModelArgs], f32_k_gguf: Path, tmp_path: Path) -> None:
    """llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize), which writes every
    K-type; about 1 s each on one core."""
    llama_cpp = pytest.importorskip("llama_cpp")
    state, _ = k_source
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 1
    out = tmp_path / f"{ftype}.gguf"
    assert llama_cpp.llama_model_quantize(str(f32_k_gguf).encode(), str(out).encode(), ctypes.byref(params)) == 0
    ckpt = read_gguf(out)
    types = ckpt.tensor_types()
    assert ftype.removesuffix("_M") in set(types.values())
    for name, got in ckpt.tensors():
        assert rel_rmse(got, state[name]) <= REL_RMSE[types[name]], (name, types[name])


def test_dequantizing_holds_a_chunk_not_a_second_copy(
        k_source: tuple[dict[str, torch.Tensor], ModelArgs], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy's allocations (traced by tracemalloc; torch's output tensor is not) stay at chunk
    size while a 2 MB Q8_0 matrix is dequantized; the library's whole-tensor call would hold
    the full float32 result twice."""
    state, args = k_source
    args = dataclasses.replace(args, vocab_size=2048)
    state = dict(state, **{"model.embed_tokens.weight": torch.randn(2048, args.hidden_size),
                           "lm_head.weight": torch.randn(2048, args.hidden_size)})
    ckpt = read_gguf(write_gguf(tmp_path / "big.gguf", state, args, encode=quantizing(Q.Q8_0)))
    monkeypatch.setattr(gguf_reader, "_CHUNK_VALUES", 32 * args.hidden_size)
    tracemalloc.start()
    try:
        t = ckpt.tensor("model.embed_tokens.weight")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < t.numel() * 4 // 8
    assert rel_rmse(t, state["model.embed_tokens.weight"]) < REL_RMSE["Q8_0"]


def test_tensors_yields_one_at_a_time_and_keeps_none(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt = read_gguf(export_gguf(tiny_model_dir, tmp_path / "tiny.gguf"))
    refs = []
    for _, t in ckpt.tensors():
        refs.append(weakref.ref(t))
        del t
    assert len(refs) == len(ckpt.shapes()) and all(r() is None for r in refs)


# --- errors ---------------------------------------------------------------------------------------


def _expect(path: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as err:
        read_gguf(path)
    assert str(path) in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_missing_and_non_gguf_files(tmp_path: Path) -> None:
    _expect(tmp_path / "nowhere.gguf", "does not exist")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    _expect(tmp_path / "model.safetensors", "is not a GGUF file")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _expect(tmp_path / "empty.gguf", "is not a GGUF file")


@pytest.mark.parametrize("cut", ["in the version", "in the metadata", "in the tensor data", "in the last byte"])
def test_truncated_files(cut: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = export_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    data = path.read_bytes()
    keep = {"in the version": 6, "in the metadata": 200, "in the tensor data": len(data) // 2,
            "in the last byte": len(data) - 1}[cut]
    path.write_bytes(data[:keep])
    _expect(path, "truncated or corrupt")


def test_unsupported_architecture(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(tmp_path / "mamba.gguf", "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _expect(tmp_path / "mamba.gguf", "architecture 'mamba' is not supported", "llama", "qwen2")


def test_unsupported_quantization_names_type_and_tensor(
        k_source: tuple[dict[str, torch.Tensor], ModelArgs], tmp_path: Path) -> None:
    state, args = k_source

    def encode(name: str, a: np.ndarray) -> tuple[np.ndarray, Q | None]:
        return (a.astype(np.int8), None) if name == "model.layers.0.mlp.up_proj.weight" else (a, None)

    _expect(write_gguf(tmp_path / "i8.gguf", state, args, encode=encode), "'blk.0.ffn_up.weight'", "I8",
            "not supported")


def test_unexpected_tensor_missing_key_and_wrong_shape(
        k_source: tuple[dict[str, torch.Tensor], ModelArgs], tmp_path: Path) -> None:
    state, args = k_source
    extra = {"rope_freqs.weight": np.ones(32, np.float32)}
    _expect(write_gguf(tmp_path / "a.gguf", state, args, extra=extra), "unexpected tensor 'rope_freqs.weight'")
    _expect(write_gguf(tmp_path / "b.gguf", state, args, skip_keys=("embedding_length",)),
            "'llama.embedding_length'")
    narrow = dataclasses.replace(args, num_key_value_heads=1)
    _expect(write_gguf(tmp_path / "c.gguf", state, narrow), "'blk.0.attn_k.weight'", "shape")
    missing = {n: t for n, t in state.items() if "down_proj" not in n}
    _expect(write_gguf(tmp_path / "d.gguf", missing, args), "missing tensors", "mlp.down_proj")


def test_unsupported_rope_scaling_names_the_file(
        k_source: tuple[dict[str, torch.Tensor], ModelArgs], tmp_path: Path) -> None:
    state, args = k_source

    def yarn(w: gguf.GGUFWriter) -> None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)

    _expect(write_gguf(tmp_path / "yarn.gguf", state, args, metadata=yarn), "rope_scaling type 'yarn' is not supported")


def test_a_window_is_planned_for_files_only_llama_cpp_runs(
        k_source: tuple[dict[str, torch.Tensor], ModelArgs], tmp_path: Path) -> None:
    """llama.cpp runs architectures and RoPE scalings the torch engine does not: its memory plan reads
    only what a window needs, where the torch engine's refuses such a file with a CheckpointError."""
    state, args = k_source

    def yarn(w: gguf.GGUFWriter) -> None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)

    for path, refusal in ((write_gguf(tmp_path / "sc2.gguf", state, args, arch="starcoder2"),
                           "architecture 'starcoder2' is not supported"),
                          (write_gguf(tmp_path / "yarn.gguf", state, args, metadata=yarn),
                           "rope_scaling type 'yarn' is not supported")):
        planned = window_args(open_gguf(path), path)
        assert (planned.num_hidden_layers, planned.num_key_value_heads, planned.head_dim,
                planned.max_position_embeddings, planned.rope_theta) == (
            args.num_hidden_layers, args.num_key_value_heads, args.head_dim, args.max_position_embeddings,
            pytest.approx(args.rope_theta))
        assert planned.kv_cache_bytes(100, 4) == args.kv_cache_bytes(100, 4)
        with pytest.raises(CheckpointError, match=refusal):
            gguf_args(open_gguf(path), path)


# --- the real default model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) ---------------------------------


@pytest.fixture(scope="module")
def real_ckpt(real_gguf: Path) -> GgufCheckpoint:
    """About 10 s on one core (20 s when it is busy): gguf's GGUFReader parses 300k vocabulary strings in Python."""
    return read_gguf(real_gguf)


def test_real_model_metadata(real_ckpt: GgufCheckpoint) -> None:
    assert real_ckpt.arch == "qwen2"
    assert real_ckpt.args == ModelArgs(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151_936, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=32768, tie_word_embeddings=False, attention_bias=True,
    )
    assert real_ckpt.attention_bias and real_ckpt.config["architectures"] == ["Qwen2ForCausalLM"]
    assert real_ckpt.reader.get_field("general.file_type").contents() == 15  # MOSTLY_Q4_K_M
    assert {"Q4_K", "Q6_K"} <= set(real_ckpt.tensor_types().values())


def test_real_model_shapes_are_what_transformers_qwen2_expects(real_ckpt: GgufCheckpoint) -> None:
    """transformers' Qwen2ForCausalLM built from our config on the meta device (2-5 s: the import)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = {k: v for k, v in real_ckpt.config.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**config))
    assert real_ckpt.shapes() == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def transformers_tensors(real_gguf: Path) -> dict[str, torch.Tensor]:
    """transformers' dequantized state dict of the real file: about 30 s on one core and 2.5 GB (float32)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    torch.set_num_threads(1)
    return load_gguf_checkpoint(str(real_gguf), return_tensors=True)["tensors"]


def test_real_model_tensors_equal_transformers(real_ckpt: GgufCheckpoint,
                                               transformers_tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor, Q4_K and Q6_K among them, equals transformers' reference (about 17 s on one core)."""
    types = real_ckpt.tensor_types()
    q4k = next(n for n, t in types.items() if t == "Q4_K")
    q6k = next(n for n, t in types.items() if t == "Q6_K")
    assert torch.equal(real_ckpt.tensor(q4k), transformers_tensors[q4k]), q4k
    assert torch.equal(real_ckpt.tensor(q6k), transformers_tensors[q6k]), q6k
    assert set(types) == set(transformers_tensors)
    unequal = [n for n, t in real_ckpt.tensors() if not torch.equal(t, transformers_tensors[n])]
    assert unequal == []
