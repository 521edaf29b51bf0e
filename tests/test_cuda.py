"""The CUDA paths against CPU float32 logits of the same model: bf16, int8, int4 and the compiled (CUDA graph) step.

The project machine has no GPU, so these are skipped there; on a GPU box run
``python -m pytest tests/test_cuda.py -rs``. Each check prefills the same prompt, then
decodes greedily from the CPU reference's tokens (teacher forcing, so one early flip
cannot make every later comparison meaningless) and compares each step's logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.torch_runner import TorchRunner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: bf16, int8, int4 and CUDA-graph decode run only there")

STEPS = 8


def models() -> list[Path]:
    """The bundled demo model, and the real default model when it is installed."""
    from codellama_lsp.engine import default_model

    return [BUNDLED_MODEL, *([default_model.default_gguf()] if default_model.installed() else [])]


def run(path: Path, device: str, dtype: str, compile: bool = False, quantize: str = "none",
        forced: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Prefill a prompt, then STEPS one-token steps (feeding ``forced`` when given): float32 logits [STEPS+1, vocab]
    on the CPU, and the greedy tokens."""
    model, tok = load_model(path, device=device, dtype=dtype)
    runner = TorchRunner(model, 512, compile=compile, quantize=quantize)
    prompt = [tok.bos_id or 1, *tok.encode("def quicksort(items):\n    if len(items) <= 1:\n        return items\n")]
    rows, tokens = [], []
    with torch.inference_mode():
        logits = runner.forward(prompt, 0, last_only=True)[-1]
        for i in range(STEPS):
            rows.append(logits.float().cpu())
            tokens.append(forced[i] if forced else int(logits.argmax()))
            logits = runner.forward([tokens[-1]], len(prompt) + i, last_only=True)[-1]
        rows.append(logits.float().cpu())
    return torch.stack(rows), tokens


# (dtype, compile, quantize) -> (max |diff| relative to the logits' range, top-1 agreement) on the CUDA runs.
# bf16 keeps 8 bits of mantissa: a few percent of the range; int4 adds its rounding on top.
CASES = {
    ("bfloat16", False, "none"): (0.05, 0.85),
    ("bfloat16", True, "none"): (0.05, 0.85),
    ("bfloat16", False, "int8"): (0.06, 0.85),
    ("bfloat16", True, "int8"): (0.06, 0.85),
    ("bfloat16", False, "int4"): (0.15, 0.65),
    ("float32", True, "none"): (1e-3, 1.0),  # the CUDA graph itself changes nothing beyond TF32-free float32 rounding
}


@pytest.mark.parametrize("path", models(), ids=lambda p: p.name)
@pytest.mark.parametrize("case", list(CASES), ids=lambda c: "-".join(str(x) for x in c))
def test_cuda_logits_track_cpu_float32(path: Path, case: tuple[str, bool, str]) -> None:
    dtype, compile, quantize = case
    want, tokens = run(path, "cpu", "float32")
    got, _ = run(path, "cuda", dtype, compile=compile, quantize=quantize, forced=tokens)
    rel, agreement = CASES[case]
    scale = (want.max() - want.min()).item()
    diff = (got - want).abs().max().item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    assert diff <= rel * scale, f"max |diff| {diff:.3f} against a logit range of {scale:.1f}"
    assert agree >= agreement, f"top-1 agreement {agree:.0%}"
