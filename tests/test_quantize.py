"""int8 and int4 weight-only quantization (engine.quantize) against float32 on the bundled model, on the CPU."""

from __future__ import annotations

import pytest
import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.quantize import Int4Projection, Int8Projection, int4_group_size, resolve_quantize
from codellama_lsp.engine.torch_runner import TorchRunner
from codellama_lsp.generation import GenerationRequest

PROMPT_TEXT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\ndef "


def all_logits(quantize: str) -> tuple[torch.Tensor, list[int]]:
    """Logits at every prompt position, and 12 greedy tokens, from the bundled model quantized as ``quantize``."""
    model, tok = load_model(BUNDLED_MODEL, device="cpu", dtype="float32")
    runner = TorchRunner(model, 256, quantize=quantize)
    prompt = [tok.bos_id, *tok.encode(PROMPT_TEXT)]
    engine = Engine(runner, tok, draft_tokens=0)
    with torch.inference_mode():
        logits = runner.forward(prompt, 0, last_only=False)
    out = engine.generate(GenerationRequest(prompt=prompt, max_new_tokens=12, temperature=0.0)).token_ids
    return logits, out


@pytest.fixture(scope="module")
def reference() -> tuple[torch.Tensor, list[int]]:
    return all_logits("none")


# Measured on the bundled model (logits up to about 14.5 in magnitude), one run: int8 max |diff|
# 0.37, top-1 agreement 100%, the same 12 greedy tokens; int4 (groups of 32) max |diff| 3.8,
# agreement 87%, greedy tokens equal for the first 3. A 192-wide model is int4's hard case:
# each group is a sixth of a row. The bounds leave some room and still fail for a wrong
# scale, zero or packing (diffs of the logits' own size, agreement near chance).
@pytest.mark.parametrize("mode, max_diff, agreement", [("int8", 0.6, 0.98), ("int4", 5.0, 0.8)])
def test_quantized_logits_track_float32(reference: tuple[torch.Tensor, list[int]], mode: str, max_diff: float,
                                        agreement: float) -> None:
    want, want_tokens = reference
    got, got_tokens = all_logits(mode)
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"{mode}: logit scale {scale:.1f}, max |diff| {diff:.3f}, top-1 agreement {agree:.2%}, tokens {got_tokens}")
    assert diff <= max_diff and agree >= agreement
    if mode == "int8":
        assert got_tokens == want_tokens
    else:  # int4 diverges after a few tokens; its first ones must match
        assert got_tokens[:3] == want_tokens[:3]


def test_quantized_projection_is_the_dequantized_matmul() -> None:
    """Each kind's kernel computes x @ dequantize(W).T + bias (exactly what its stored values mean)."""
    torch.manual_seed(0)
    w, bias, x = torch.randn(96, 128), torch.randn(96), torch.randn(2, 3, 128)
    int8 = Int8Projection(w, bias)
    w8 = int8.weight.float() * int8.scales[:, None]
    torch.testing.assert_close(int8(x), x @ w8.T + bias, atol=1e-4, rtol=1e-4)
    assert (w8 - w).abs().max() <= int8.scales.max() / 2 + 1e-6  # rounding to the nearest step
    int4 = Int4Projection(w, bias)
    assert int4.group == 128
    eye = torch.eye(128)
    w4 = int4(eye) - bias  # row i of W.T, dequantized, through the kernel itself
    assert (w4.T - w).abs().max() <= ((w.amax(1) - w.amin(1)) / 15 / 2).max() + 1e-5
    torch.testing.assert_close(int4(x), x @ w4 + bias, atol=1e-4, rtol=1e-4)


def test_quantize_setting() -> None:
    assert resolve_quantize("auto", torch.device("cpu")) == "none"
    assert resolve_quantize("auto", torch.device("cuda")) == "int8"
    assert resolve_quantize("int4", torch.device("cpu")) == "int4"
    with pytest.raises(ValueError, match="unknown quantize 'int3'; expected one of auto, none, int8, int4"):
        resolve_quantize("int3", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown quantize 'fp8'"):
        Engine.load(BUNDLED_MODEL, device="cpu", quantize="fp8")
    assert int4_group_size(896) == 128 and int4_group_size(192) == 32
    with pytest.raises(ValueError, match="divisible by 32; this linear has 100"):
        int4_group_size(100)
