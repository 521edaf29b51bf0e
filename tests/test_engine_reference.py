"""The engine's model against transformers' LlamaForCausalLM on the same safetensors files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from codellama_lsp.engine.engine import Engine

from codellama_lsp.generation import GenerationRequest

from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.checkpoint import _permute_rotary
from conftest import make_random_checkpoint

CONFIGS = {
    "gqa_theta1e6": dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6),
    "mha_linear_rope_tied": dict(num_attention_heads=4, num_key_value_heads=4, rope_theta=1e4, rope_scaling_factor=2.0,
                                 tie_word_embeddings=True),
    "mqa_3layers": dict(num_attention_heads=8, num_key_value_heads=1, num_hidden_layers=3, hidden_size=128),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer_path: Path) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp(request.param), tokenizer_path, seed=1, **CONFIGS[request.param])


def reference(path: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").eval()


def test_logits_match_transformers(checkpoint: Path) -> None:
    ours, _ = load_model(checkpoint, device="cpu", dtype="float32")
    ref = reference(checkpoint)
    tokens = torch.randint(3, ours.args.vocab_size, (2, 97), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(tokens).logits
        got = ours(tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_cached_prefill_and_decode_match_transformers(checkpoint: Path) -> None:
    """Chunked prefill into the KV cache, then one-token steps, give the full pass's logits."""
    ours, _ = load_model(checkpoint, device="cpu", dtype="float32")
    ours.setup_cache(256)
    ref = reference(checkpoint)
    tokens = torch.randint(3, ours.args.vocab_size, (1, 60), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(tokens).logits[0]
        first = ours(tokens[:, :40], start=0)[0]
        second = ours(tokens[:, 40:55], start=40)[0]
        steps = [ours(tokens[:, i : i + 1], start=i)[0, 0] for i in range(55, 60)]
    got = torch.cat([first, second, torch.stack(steps)])
    assert (got - expected).abs().max().item() <= 1e-4


def test_32_greedy_tokens_match_transformers_generate(checkpoint: Path) -> None:
    engine = Engine.load(checkpoint, device="cpu", dtype="float32", context_length=512)
    ref = reference(checkpoint)
    prompt = engine.tokenizer.encode("def fibonacci(n):\n    if n < 2:\n        return n\n")
    prompt = [engine.tokenizer.bos_id, *prompt]
    result = engine.generate(GenerationRequest(prompt, max_new_tokens=32, infilling=False))
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                           eos_token_id=sorted(engine._stop_ids), pad_token_id=0)
    expected = out[0, len(prompt):].tolist()
    expected = [t for t in expected if t not in engine._stop_ids]
    assert result.token_ids == expected
    assert len(result.token_ids) == 32, result.stop_reason


def _save_meta_layout(hf_dir: Path, out: Path, shards: int) -> None:
    """Write an HF checkpoint as Meta's params.json + consolidated.NN.pth, split for model parallelism."""
    import json

    from safetensors.torch import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    state = load_file(hf_dir / "model.safetensors")
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def unpermute(w: torch.Tensor, n: int) -> torch.Tensor:  # inverse of _permute_rotary
        o, i = w.shape
        return w.view(n, 2, o // n // 2, i).transpose(1, 2).reshape(o, i)

    meta = {"tok_embeddings.weight": (state["model.embed_tokens.weight"], 1), "norm.weight": (state["model.norm.weight"], None),
            "output.weight": (state["lm_head.weight"], 0)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        meta.update({
            f"layers.{layer}.attention.wq.weight": (unpermute(state[p + "self_attn.q_proj.weight"], heads), 0),
            f"layers.{layer}.attention.wk.weight": (unpermute(state[p + "self_attn.k_proj.weight"], kv), 0),
            f"layers.{layer}.attention.wv.weight": (state[p + "self_attn.v_proj.weight"], 0),
            f"layers.{layer}.attention.wo.weight": (state[p + "self_attn.o_proj.weight"], 1),
            f"layers.{layer}.feed_forward.w1.weight": (state[p + "mlp.gate_proj.weight"], 0),
            f"layers.{layer}.feed_forward.w2.weight": (state[p + "mlp.down_proj.weight"], 1),
            f"layers.{layer}.feed_forward.w3.weight": (state[p + "mlp.up_proj.weight"], 0),
            f"layers.{layer}.attention_norm.weight": (state[p + "input_layernorm.weight"], None),
            f"layers.{layer}.ffn_norm.weight": (state[p + "post_attention_layernorm.weight"], None),
        })
    out.mkdir()
    for s in range(shards):
        shard = {k: (w if d is None else w.chunk(shards, dim=d)[s]).clone() for k, (w, d) in meta.items()}
        torch.save(shard, out / f"consolidated.{s:02d}.pth")
    d = cfg["hidden_size"]
    # Meta's FFN size rule: multiple_of * ceil(ffn_dim_multiplier * 8d/3 / multiple_of); pick values giving 160.
    params = {"dim": d, "n_layers": cfg["num_hidden_layers"], "n_heads": heads, "n_kv_heads": kv, "norm_eps": 1e-5,
              "rope_theta": cfg["rope_theta"], "multiple_of": 32, "ffn_dim_multiplier": 160 / int(8 * d / 3),
              "vocab_size": cfg["vocab_size"]}
    (out / "params.json").write_text(json.dumps(params))
    (out / "tokenizer.model").write_bytes((hf_dir / "tokenizer.model").read_bytes())


@pytest.mark.parametrize("shards", [1, 2])
def test_meta_layout_loads_to_the_same_logits(tiny_model_dir: Path, tmp_path: Path, shards: int) -> None:
    _save_meta_layout(tiny_model_dir, tmp_path / "meta", shards)
    hf, _ = load_model(tiny_model_dir, device="cpu")
    meta, _ = load_model(tmp_path / "meta", device="cpu")
    assert meta.args.intermediate_size == hf.args.intermediate_size
    tokens = torch.arange(3, 50).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(meta(tokens), hf(tokens))


def test_rotary_permutation_roundtrip() -> None:
    w = torch.randn(64, 32)
    o, i = w.shape
    unpermuted = w.view(4, 2, o // 8, i).transpose(1, 2).reshape(o, i)
    assert torch.equal(_permute_rotary(unpermuted, 4), w)


LONG = 6000  # past the checkpoint's declared 4096 positions, allowed by its 1e6 RoPE base (engine.memory_plan)


def test_logits_at_6000_positions_match_transformers(tmp_path: Path, tokenizer_path: Path) -> None:
    """Code Llama's RoPE base at length: the engine's window (planned past the declared length), filled
    by chunked prefill, then the static-cache decode step (the CUDA-graph path's computation) at the end,
    give transformers' logits at every position. transformers' SDPA attention: eager would hold a
    6000 x 6000 matrix per head."""
    ckpt = make_random_checkpoint(tmp_path, tokenizer_path, seed=3, rope_theta=1e6, max_position_embeddings=4096)
    engine = Engine.load(ckpt, device="cpu", dtype="float32", context_length=LONG + 1)
    assert engine.context_length == LONG + 1
    ref = LlamaForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    tokens = torch.randint(3, ref.config.vocab_size, (1, LONG + 1), generator=torch.Generator().manual_seed(2))
    ours = engine.model
    with torch.no_grad():
        expected = ref(tokens).logits[0]
        chunks = [ours(tokens[:, i:i + 1000], start=i)[0] for i in range(0, LONG, 1000)]
        step = ours.decode_one(tokens[:, LONG:], torch.tensor([LONG]))[0]
    got = torch.cat([*chunks, step])
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4
