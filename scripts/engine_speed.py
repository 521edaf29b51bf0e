"""Prefill and decode speed of the torch (fp32) and llama.cpp (the file's quantization) runners on one GGUF.

The numbers behind the ``engine`` setting's ``auto`` choice (codellama_lsp.backends). Both
runners get the same prompt ids (our tokenizer, Qwen2.5-Coder's FIM layout) and one thread;
run it pinned to one core so the two see the same machine:

    taskset -c 1 python scripts/engine_speed.py [model.gguf]

Prefill: the whole prompt in one pass on an empty cache. Decode: one token per pass
(greedy, no drafts), 32 of them after the prompt. Each is timed three times in CPU time
(``time.process_time``: on a shared machine wall time mostly measures the other users)
and wall time; the best of each is reported.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from codellama_lsp.completion.families import detect
from codellama_lsp.engine.default_model import default_gguf
from codellama_lsp.engine.engine import Engine
from codellama_lsp.engine.llamacpp import open_llamacpp
from codellama_lsp.engine.runner import Runner

PREFIX = (Path(__file__).resolve().parent.parent / "examples" / "demo.py").read_text(encoding="utf-8")[:700]
SUFFIX = "\n\nif __name__ == '__main__':\n    main()\n"
DECODE = 32
REPEATS = 3


def _now() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _best(best: list[float], t0: tuple[float, float]) -> None:
    for i, (start, end) in enumerate(zip(t0, _now())):
        best[i] = min(best[i], end - start)


def speeds(runner: Runner, prompt: list[int]) -> list[float]:
    """Prefill and decode tok/s, in CPU time and in wall time: best of ``REPEATS``."""
    prefill, decode = [float("inf")] * 2, [float("inf")] * 2
    for _ in range(REPEATS):
        runner.truncate(0)
        t0 = _now()
        logits = runner.forward(prompt, 0, last_only=True)[-1]
        _best(prefill, t0)
        pos = len(prompt)
        t0 = _now()
        for _ in range(DECODE):
            logits = runner.forward([int(logits.argmax())], pos, last_only=True)[-1]
            pos += 1
        _best(decode, t0)
    return [len(prompt) / t for t in prefill] + [DECODE / t for t in decode]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default_gguf()
    torch.set_num_threads(1)
    fast = open_llamacpp(path, context_length=1024, threads=1)
    prompt = detect(fast.tokenizer).prompt(fast.tokenizer, PREFIX, SUFFIX, "psm")
    with torch.inference_mode():
        results = {f"llama.cpp {fast.dtype}": speeds(fast.runner, prompt)}
        fast.runner.close()
        ours = Engine.load(path, device="cpu", dtype="float32", context_length=1024)
        results["torch float32"] = speeds(ours.runner, prompt)
    print(f"{path.name}: {len(prompt)}-token prompt, {DECODE} decoded tokens, 1 thread")
    print(f"  {'':<16} {'prefill tok/s (cpu, wall)':>26} {'decode tok/s (cpu, wall)':>26}")
    for name, (p_cpu, p_wall, d_cpu, d_wall) in results.items():
        print(f"  {name:<16} {p_cpu:15.1f} {p_wall:9.1f} {d_cpu:16.1f} {d_wall:9.1f}")


if __name__ == "__main__":
    main()
