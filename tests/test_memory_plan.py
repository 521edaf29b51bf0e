"""The window's memory plan (engine.memory_plan): the length rule, the KV bytes, refusals, and both engines honouring it."""

from __future__ import annotations

from pathlib import Path

import pytest

from codellama_lsp.engine.config import ModelArgs
from codellama_lsp.engine.memory_plan import (ContextTooLong, auto_context_length, max_context_length, plan_memory)

CODELLAMA_7B = ModelArgs()  # the defaults are Code Llama 7B's: 32 layers, 32 KV heads of 128, theta 1e6, 16384 declared
LLAMA2_7B = ModelArgs(rope_theta=1e4, max_position_embeddings=4096)
GIB = 1 << 30


def test_the_length_rule_follows_the_rope_base() -> None:
    assert max_context_length(CODELLAMA_7B) == 100_000  # declared 16384, theta 1e6: Code Llama's 100k
    assert max_context_length(LLAMA2_7B) == 4096  # a 1e4 base: only what it declares
    assert max_context_length(ModelArgs(max_position_embeddings=131072)) == 131072  # declaring more keeps it
    assert auto_context_length(CODELLAMA_7B, "cpu") == 4096
    assert auto_context_length(CODELLAMA_7B, "cuda") == 16384
    assert auto_context_length(LLAMA2_7B, "cuda") == 4096
    assert auto_context_length(ModelArgs(rope_theta=1e4, max_position_embeddings=2048), "cpu") == 2048


def test_kv_bytes_are_the_formula() -> None:
    plan = plan_memory(CODELLAMA_7B, 16384, "cuda", kv_itemsize=2, weights_bytes=0, available_bytes=None)
    assert plan.kv_bytes == 2 * 32 * 32 * 128 * 16384 * 2 == 8 * GIB
    assert plan.bytes_per_position == 2 * 32 * 32 * 128 * 2
    gqa = ModelArgs(num_attention_heads=32, num_key_value_heads=8)
    assert plan_memory(gqa, 16384, "cuda", kv_itemsize=2, weights_bytes=0, available_bytes=None).kv_bytes == 2 * GIB


def test_a_length_beyond_the_model_or_the_memory_is_refused_with_the_numbers() -> None:
    with pytest.raises(ContextTooLong, match=r"contextLength 8192 exceeds this model's 4096 positions"):
        plan_memory(LLAMA2_7B, 8192, "cpu", kv_itemsize=4, weights_bytes=0, available_bytes=None)
    with pytest.raises(ContextTooLong) as refused:
        plan_memory(CODELLAMA_7B, 100_000, "cuda", kv_itemsize=2, weights_bytes=14 * GIB, available_bytes=40 * GIB)
    message = str(refused.value)
    for part in ("contextLength 100000", "50,000 MiB of KV cache", "weights 14,336 MiB", "64,336 MiB",
                 "free memory on cuda is 40,960 MiB"):
        assert part in message, message
    # On the CPU the prompt cache's budget shares the memory: it tips a window that fits alone.
    fits = plan_memory(CODELLAMA_7B, 16384, "cpu", kv_itemsize=2, weights_bytes=0, available_bytes=9 * GIB)
    assert fits.context_length == 16384
    with pytest.raises(ContextTooLong, match="prompt cache budget 2,048 MiB"):
        plan_memory(CODELLAMA_7B, 16384, "cpu", kv_itemsize=2, weights_bytes=0, available_bytes=9 * GIB,
                    prompt_cache_bytes=2 * GIB)


def test_auto_shrinks_to_what_fits_and_reports_the_prompt_cache_in_sequences() -> None:
    # 16384 positions need 8 GiB, 8192 need 4: with 14 GiB of weights in 17 GiB free, auto takes 4096 (2 GiB).
    plan = plan_memory(CODELLAMA_7B, "auto", "cuda", kv_itemsize=2, weights_bytes=14 * GIB, available_bytes=17 * GIB)
    assert plan.context_length == 4096 and plan.kv_bytes == 2 * GIB
    assert plan.describe(prompt_cache_budget=5 * GIB)["prompt_cache_full_sequences"] == 2
    with pytest.raises(ContextTooLong):  # not even 4096 fits
        plan_memory(CODELLAMA_7B, "auto", "cuda", kv_itemsize=2, weights_bytes=14 * GIB, available_bytes=15 * GIB)


def test_the_torch_engine_allocates_the_planned_window(tiny_model_dir: Path) -> None:
    """Past the tiny model's declared 2048 positions (its base is 1e6); the cache is exactly the plan's bytes."""
    from codellama_lsp.engine.engine import Engine

    engine = Engine.load(tiny_model_dir, device="cpu", context_length=6000)
    caches = [layer.self_attn.kv_cache for layer in engine.model.model.layers]
    assert engine.context_length == 6000 and all(c.k.shape[2] == 6000 for c in caches)
    assert engine.memory.kv_bytes == sum(c.k.nbytes + c.v.nbytes for c in caches)
    assert Engine.load(tiny_model_dir, device="cpu").context_length == 4096  # auto on the CPU
    with pytest.raises(ContextTooLong, match="exceeds this model's 100000 positions"):
        Engine.load(tiny_model_dir, device="cpu", context_length=100_001)


def test_the_llamacpp_engine_opens_the_planned_window(real_gguf: Path) -> None:
    """Past the file's declared 32768 positions; its float32 KV cache is planned at 4 bytes an element."""
    pytest.importorskip("llama_cpp")
    from codellama_lsp.engine.llamacpp import open_llamacpp

    engine = open_llamacpp(real_gguf, 40960, threads=1)
    try:
        assert engine.context_length == 40960
        assert engine.runner._lib.llama_n_ctx(engine.runner._ctx) == 40960
        assert engine.memory.kv_bytes == 2 * 24 * 2 * 64 * 40960 * 4  # Qwen2.5-Coder-0.5B: 24 layers, 2 KV heads of 64
    finally:
        engine.close()
