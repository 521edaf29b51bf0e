"""Suffix reuse: a cached tail block moved to new positions (``Runner.splice``), and the engine's use of it.

What is exact is tested as exact: the moved keys are the keys computed at the new position
in the first layer (which sees only the token and its position), and the tokens computed in
front of the block equal a fresh computation in every layer (they attend to the kept prefix
only). Deeper layers of the block are the approximation itself (they attended the old text);
llama.cpp's own shift must approximate the same way ours does, so the logits after a splice
agree between the two runners on the same f32 weights. Each test takes a few seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine import engine as engine_module
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.torch_runner import TorchRunner
from codellama_lsp.generation import GenerationRequest

CONTEXT = 256
A = list(range(100, 140))  # kept prefix
S = list(range(300, 360))  # the block (an infilling prompt's suffix)
X = [500, 501, 502]  # typed in front of it
LAST = [7]  # the prompt's last token, computed after the splice


def torch_runner() -> TorchRunner:
    model, _ = load_model(BUNDLED_MODEL, device="cpu", dtype="float32")
    return TorchRunner(model, CONTEXT)


def caches(runner: TorchRunner, lo: int, hi: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in runner.model.model.layers:
        c = layer.self_attn.kv_cache
        out.append((c.k[:, :, lo:hi].clone(), c.v[:, :, lo:hi].clone()))
    return out


@torch.inference_mode()
def test_moved_block_and_new_tokens_equal_a_fresh_computation_where_exact() -> None:
    a, s, k = len(A), len(S), len(X)
    moved = torch_runner()
    moved.forward(A + S, 0, last_only=True)
    moved.splice(a, a, a + s, k, X)
    fresh = torch_runner()
    fresh.forward(A + X + S, 0, last_only=True)

    block_moved, block_fresh = caches(moved, a + k, a + k + s), caches(fresh, a + k, a + k + s)
    torch.testing.assert_close(block_moved[0], block_fresh[0], atol=1e-5, rtol=1e-5)  # layer 0: exact
    assert (block_moved[-1][0] - block_fresh[-1][0]).abs().max() > 1e-3  # deeper: the approximation

    for got, want in zip(caches(moved, a, a + k), caches(fresh, a, a + k)):  # the new tokens: every layer
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_moving_a_block_earlier_after_a_deletion() -> None:
    """Deleting tokens in front of the block moves it back (negative delta); layer 0 stays exact."""
    a, s = len(A), len(S)
    moved = torch_runner()
    moved.forward(A + X + S, 0, last_only=True)
    moved.splice(a, a + len(X), a + len(X) + s, -len(X), [])
    fresh = torch_runner()
    fresh.forward(A + S, 0, last_only=True)
    torch.testing.assert_close(caches(moved, a, a + s)[0], caches(fresh, a, a + s)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
@torch.inference_mode()
def test_llamacpp_splice_approximates_as_ours_does(tmp_path: Path) -> None:
    """Same f32 weights, same splice, then the last token: llama.cpp's logits equal the torch runner's.

    Two controls make the agreement mean something: other tokens typed in front of the block
    change llama.cpp's logits by far more (so the new tokens are seen after the splice), and so
    does computing the block afresh after them (so llama.cpp moved the block rather than
    recomputing or losing it).
    """
    from codellama_lsp.engine.gguf_export import export_gguf
    from codellama_lsp.engine.llamacpp import LlamaCppRunner

    a, s, k = len(A), len(S), len(X)
    ours = torch_runner()
    ours.forward(A + S, 0, last_only=True)
    ours.splice(a, a, a + s, k, X)
    want = ours.forward(LAST, a + k + s, last_only=True)[-1]
    fresh = torch_runner().forward(A + X + S + LAST, 0, last_only=True)[-1]

    lcpp = LlamaCppRunner(export_gguf(BUNDLED_MODEL, tmp_path / "demo.gguf"), CONTEXT, threads=1)

    def spliced(typed: list[int]) -> torch.Tensor:
        lcpp.truncate(0)
        lcpp.forward(A + S, 0, last_only=True)
        lcpp.splice(a, a, a + s, len(typed), typed)
        return torch.from_numpy(lcpp.forward(LAST, a + len(typed) + s, last_only=True)[-1])

    try:
        got, other = spliced(X), spliced([900, 901, 902])
    finally:
        lcpp.close()
    error = (got - want).abs().max().item()
    assert error < 2e-3 * want.abs().max().item()
    assert (other - got).abs().max().item() > 50 * error
    assert (fresh - want).abs().max().item() > 50 * error


def typed_prompts() -> list[list[int]]:
    """An infilling-shaped prompt per keystroke: a prefix growing by one token, a fixed 60-token suffix."""
    suffix = list(range(300, 360))
    return [list(range(100, 140 + i)) + suffix for i in range(0, 40)]


@torch.inference_mode()
def test_engine_computes_only_the_typed_tokens_and_recomputes_once_stale() -> None:
    engine = Engine(torch_runner(), load_model(BUNDLED_MODEL, device="cpu")[1], draft_tokens=0, reuse_suffix=True)
    computed = []
    for prompt in typed_prompts():
        r = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=4))
        computed.append(r.computed_tokens)
    # The first prompt is computed whole; then each keystroke computes the typed token and the
    # last one, until MAX_STALE_TOKENS typed tokens have gone in front of the block: then the
    # suffix is computed afresh (with the typed token: 61), and the count starts again.
    limit = engine_module.MAX_STALE_TOKENS
    assert computed[0] == 100
    assert computed[1:limit + 1] == [2] * limit
    assert computed[limit + 1] == 1 + 60
    assert computed[limit + 2:] == [2] * (len(computed) - limit - 2)

    off = Engine(torch_runner(), engine.tokenizer, draft_tokens=0)  # the default: the suffix is always recomputed
    assert [off.generate(GenerationRequest(prompt=p, max_new_tokens=4)).computed_tokens
            for p in typed_prompts()[:3]] == [100, 61, 61]
