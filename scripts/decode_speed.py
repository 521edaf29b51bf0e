"""The numbers behind the ``compile`` and ``quantize`` settings' ``auto`` on the CPU.

1. Weight bandwidth of one decode-step matmul (one token) through a 4864×896 linear
   (Qwen2.5-Coder-0.5B's MLP width) in float32, int8 and int4 (engine.quantize).
2. Greedy decode tokens per second through ``TorchRunner``: eager (the dynamic forward),
   the static step eager (``Transformer.decode_one``), and the static step compiled (what
   compile "on" runs), on the bundled model and on the real default model when installed
   (``--bundled-only`` skips it).

CPU time (``time.process_time``), best of three, one thread: run it pinned to one core,

    taskset -c 0 env OMP_NUM_THREADS=1 python scripts/decode_speed.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.checkpoint import load_model
from codellama_lsp.engine.model import fuse_linears
from codellama_lsp.engine.quantize import Int4Projection, Int8Projection
from codellama_lsp.engine.torch_runner import TorchRunner

CONTEXT = 4096
PROMPT, STEPS = 16, 32


def best_seconds(run: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        run()
        times.append(time.process_time() - t0)
    return min(times)


def kernel_bandwidth() -> None:
    linear = torch.nn.Linear(896, 4864, bias=False)
    fp = fuse_linears(linear)  # the engine's layout: input-major float32
    x = torch.randn(1, 896)
    for name, proj in (("float32", fp), ("int8", Int8Projection(fp.weight, None)), ("int4", Int4Projection(fp.weight, None))):
        nbytes = sum(b.numel() * b.element_size() for b in proj.buffers())
        seconds = best_seconds(lambda: [proj(x) for _ in range(20)]) / 20
        print(f"  {name:8s} {nbytes / seconds / 1e9:6.2f} GB/s of weights ({seconds * 1e3:.2f} ms per token)")


def decode_speed(path: Path) -> None:
    for label, compiled, static_eager in (("eager", False, False), ("static eager", False, True), ("compiled", True, False)):
        model, _ = load_model(path, device="cpu", dtype="float32")
        runner = TorchRunner(model, CONTEXT, compile=compiled)
        tokens = list(range(10, 10 + PROMPT + STEPS))

        def steps() -> None:
            for pos in range(PROMPT, PROMPT + STEPS):
                if static_eager:
                    runner.model.decode_one(torch.tensor([[tokens[pos]]]), torch.tensor([pos]))
                else:  # compiled: the runner's one-token path is the compiled static step
                    runner.forward([tokens[pos]], pos, last_only=True)

        with torch.inference_mode():
            runner.forward(tokens[:PROMPT], 0, last_only=True)
            t0 = time.perf_counter()
            runner.forward([tokens[PROMPT]], PROMPT, last_only=True)  # compiles, when compiled
            first = time.perf_counter() - t0
            seconds = best_seconds(steps)
        print(f"  {label:12s} {STEPS / seconds:7.1f} tok/s (first step {first:.1f} s)")


def main() -> None:
    torch.set_num_threads(1)
    print("one-token matmul, 4864x896:")
    kernel_bandwidth()
    models = [BUNDLED_MODEL]
    if "--bundled-only" not in sys.argv:
        from codellama_lsp.engine import default_model

        if default_model.installed():
            models.append(default_model.default_gguf())
    for path in models:
        print(f"decode, {path.name}, positions {PROMPT}..{PROMPT + STEPS} of a {CONTEXT}-token cache:")
        decode_speed(path)


if __name__ == "__main__":
    main()
