"""The static-shape decode step (Transformer.decode_one) and its torch.compile'd form against the dynamic forward."""

from __future__ import annotations

import copy

import pytest
import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.config import ModelArgs
from codellama_lsp.engine.model import Transformer
from codellama_lsp.engine.torch_runner import TorchRunner, resolve_compile

PROMPT = [1, 17, 230, 44, 901, 12, 7, 300, 55, 81]


def greedy(runner: TorchRunner, steps: int, static: bool) -> tuple[list[int], list[torch.Tensor]]:
    """Prefill ``PROMPT`` with the dynamic forward, then ``steps`` greedy one-token steps; tokens and logits."""
    with torch.inference_mode():
        logits = runner.forward(PROMPT, 0, last_only=True)[-1]
        tokens, rows = [], []
        for pos in range(len(PROMPT), len(PROMPT) + steps):
            tok = int(logits.argmax())
            tokens.append(tok)
            if static:
                logits = runner.model.decode_one(torch.tensor([[tok]]), torch.tensor([pos]))[0, -1]
            else:
                logits = runner.forward([tok], pos, last_only=True)[-1]
            rows.append(logits.clone())
    return tokens, rows


@pytest.mark.parametrize("shape", [
    dict(hidden_size=224, num_attention_heads=14, num_key_value_heads=2, attention_bias=True),  # Qwen2.5-like
    dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=4, attention_bias=False),  # Llama-like MHA
])
def test_static_step_equals_dynamic_forward(shape: dict) -> None:
    """Same greedy tokens and logits (float32, 1e-5) from decode_one as from forward, with stale garbage in the cache."""
    torch.manual_seed(0)
    args = ModelArgs(intermediate_size=256, num_hidden_layers=2, vocab_size=1024, max_position_embeddings=256, **shape)
    model = Transformer(args).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)  # nn.Linear's default init is small; make the biases matter
    dynamic, static = TorchRunner(copy.deepcopy(model), 64), TorchRunner(model, 64)
    for layer in static.model.model.layers:
        layer.self_attn.kv_cache.k.normal_(0.0, 10.0)  # positions past the current one must be masked out
        layer.self_attn.kv_cache.v.normal_(0.0, 10.0)
    want_tokens, want = greedy(dynamic, 12, static=False)
    got_tokens, got = greedy(static, 12, static=True)
    assert got_tokens == want_tokens
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compile_setting() -> None:
    assert resolve_compile("auto", torch.device("cpu")) is False
    assert resolve_compile("auto", torch.device("cuda")) is True
    assert resolve_compile("on", torch.device("cpu")) is True and resolve_compile("off", torch.device("cuda")) is False
    with pytest.raises(ValueError, match="unknown compile 'yes'; expected one of auto, on, off"):
        resolve_compile("yes", torch.device("cpu"))


def test_compiled_decode_matches_eager_on_the_bundled_model() -> None:
    """torch.compile(decode_one, fullgraph=True) on the CPU: the eager runner's greedy tokens, logits within 1e-4.

    Takes 25 s on one core (a minute with a cold Inductor cache): compiling, then 6 steps. A graph break would raise
    (fullgraph), and a recompile per position would show as minutes, not seconds.
    """
    eager_model, _ = load_model(BUNDLED_MODEL, device="cpu", dtype="float32")
    compiled_model, _ = load_model(BUNDLED_MODEL, device="cpu", dtype="float32")
    eager = TorchRunner(eager_model, 256)
    compiled = TorchRunner(compiled_model, 256, compile=True)
    want_tokens, want = greedy(eager, 6, static=False)
    got_tokens, got = greedy(compiled, 6, static=False)  # the runner's one-token path is the compiled step
    assert got_tokens == want_tokens
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
