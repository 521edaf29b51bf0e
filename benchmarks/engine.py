"""Engine benchmark: how close each engine's decode comes to the memory-bandwidth limit, and what KV reuse saves.

A decode step of a model this size reads every weight once (the embedding table aside:
one row per token) plus the KV cache up to its position, so its speed is bounded by
memory bandwidth. For each engine configuration on one model this prints:

* bytes read per decode step: weights as stored by that engine (float32 for ours, the
  GGUF's quantized blocks for llama.cpp) plus the KV cache at the decode position;
* this machine's bandwidth, measured in the same run: the best of a 256 MiB tensor copy, a
  sum over it (read only) and a float32 matrix-vector product of CodeLlama-7B's FFN shape
  (4096x11008);
* prefill and decode tok/s (decode one token per forward pass, no drafts, median of 3);
* the fraction of the limit decode reaches: bytes per step x tok/s / bandwidth; the JSON's
  ``decode_bandwidth_fraction`` is the highest (``best_configuration``), and
  ``fastest_configuration`` names the one with the most tok/s;
* a keystroke replay: ``--keystrokes`` characters typed into a real source file, a greedy
  infilling request (32 new tokens at most, drafts on, as served) after each, with the KV
  cache reused between requests and without; p50/p95 latency and tokens computed;
* the draft tokens checked per pass as served, and for llama.cpp whether its tiled matrix
  kernel is on (``codellama_lsp.engine.llamacpp_kernels``: by what this CPU was measured to do).

    python benchmarks/engine.py [--model PATH] [--engines torch,llamacpp] [--threads 1] [--json PATH]

The default model is the server's (the real Qwen2.5-Coder-0.5B GGUF when installed).
Run it with nothing else on the machine; pin it (``taskset -c 0``) when threads is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from codellama_lsp.completion.families import Template, detect
from codellama_lsp.engine.engine import Engine
from codellama_lsp.generation import GenerationRequest
from codellama_lsp.loading import default_model_path
from codellama_lsp.service.metrics import percentile

SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
REPEATS = 3  # speed figures are the median of this many runs (the machine is noisy)


def memory_bandwidth(device: torch.device | str = "cpu", model_dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """GB/s of a large copy (read + write), a large sum (read only) and a float32 GEMV (the weights
    read once), best of 5 each; the limit is the best of the three.

    ``device`` is the memory measured: the CPU's, or a GPU's (whose kernels are timed to completion).
    ``model_gemv_gb_s`` is the same GEMV in the model's dtype: the ceiling of the kernel decode
    runs, which for bfloat16 on a CPU can sit well below the memory's own.
    The source holds random values: pages never written read Linux's shared zero page, which
    stays in cache (measured here, one thread: a sum over an untouched ``torch.empty`` ran at
    108 GB/s and a copy from it at 21.8, against 18.0 and 19.9 over written memory).
    """
    a = torch.randn(64 * 2**20, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    w, x = torch.randn(11008, 4096, device=device), torch.randn(1, 4096, device=device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)

    def best(fn: Any) -> float:
        times = []
        for _ in range(5):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times)

    copy = 2 * a.numel() * 4 / best(lambda: b.copy_(a)) / 1e9
    read = a.numel() * 4 / best(lambda: a.sum()) / 1e9
    gemv = w.numel() * 4 / best(lambda: torch.nn.functional.linear(x, w)) / 1e9
    wm, xm = w.to(model_dtype), x.to(model_dtype)
    model_gemv = wm.numel() * wm.element_size() / best(lambda: torch.nn.functional.linear(xm, wm)) / 1e9
    return {"copy_gb_s": copy, "read_gb_s": read, "gemv_gb_s": gemv, "memory_bandwidth_gb_s": max(copy, read, gemv),
            "model_gemv_gb_s": model_gemv}


def keystroke_trace(template: Template, tok: Any, typed: int, prefix_chars: int = 2400,
                    suffix_chars: int = 600) -> list[list[int]]:
    """Prompts for ``typed`` keystrokes at a line start about ``prefix_chars`` into argparse.py."""
    text = SOURCE.read_text(encoding="utf-8")
    cursor = text.index("\n", prefix_chars) + 1
    target = text[cursor: cursor + typed]
    suffix = text[cursor + typed: cursor + typed + suffix_chars]
    fmt = template.family.formats[0] if template.family.formats else "psm"
    return [template.prompt(tok, text[:cursor] + target[:i], suffix, fmt) for i in range(1, typed + 1)]


def decoded_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one decode step multiplies by, as stored (float, or int8/int4 with their scales).

    Those are the tensors of the projections (fused ``Projection``s and the quantized kinds),
    of the linears (LM head included) and of the norms, each storage counted once: q/k/v's
    parameters are views of their fused projection. The embedding table is read a row per
    token, so it counts only where the LM head shares it.
    """
    storages: dict[int, int] = {}
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("Projection") or kind in ("Linear", "RMSNorm"):
            for t in [*module.buffers(recurse=False), *module.parameters(recurse=False)]:
                if t is not None:
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def bytes_per_step(engine: Engine, model: Path, position: int) -> int:
    """Bytes a decode step at ``position`` reads: every weight but the embedding table, as the engine stores
    them, plus the keys and values attention reads (in the torch engine's dtype; float32 in our llama.cpp
    engine, whose KV_ITEMSIZE says why)."""
    if engine.model is not None:
        args, kv_item = engine.model.args, engine.dtype.itemsize
        weights = decoded_weight_bytes(engine.model)
    else:
        from codellama_lsp.engine.gguf_reader import read_gguf

        from codellama_lsp.engine.llamacpp import KV_ITEMSIZE

        ckpt, kv_item = read_gguf(model), KV_ITEMSIZE  # one read: the file's tensors as stored, and its shape
        args = ckpt.args
        weights = sum(int(t.n_bytes) for t in ckpt.reader.tensors if t.name != "token_embd.weight")
    return weights + args.kv_cache_bytes(position, kv_item)


def speed(engine: Engine, prompt: list[int], new_tokens: int, repeats: int = REPEATS) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s), fresh cache, one token per pass, stop tokens off so decode runs its length.

    ``new_tokens`` tokens take ``new_tokens - 1`` decode passes: the first comes from the prefill's logits.
    """
    stops, engine._stop_ids = engine._stop_ids, frozenset()
    drafts, engine.draft_tokens = engine.draft_tokens, 0
    prefill, decode = [], []
    try:
        for _ in range(repeats):
            engine.reset_cache()
            r = engine.generate(GenerationRequest(prompt, max_new_tokens=new_tokens, infilling=False))
            prefill.append(r.computed_tokens / r.prefill_ms * 1000)
            decode.append((r.generated_tokens - 1) / r.decode_ms * 1000)
    finally:
        engine._stop_ids, engine.draft_tokens = stops, drafts
    return statistics.median(prefill), statistics.median(decode)


def replay(engine: Engine, trace: list[list[int]], stop_ids: frozenset[int], reuse: bool) -> dict[str, float]:
    served, engine.reuse = engine.reuse, reuse
    engine.reset_cache()
    times, computed = [], []
    try:
        for prompt in trace:
            t0 = time.perf_counter()
            r = engine.generate(GenerationRequest(prompt, max_new_tokens=32, stop_ids=stop_ids))
            times.append((time.perf_counter() - t0) * 1000)
            computed.append(r.computed_tokens)
    finally:
        engine.reuse = served
    return {"p50_ms": statistics.median(times), "p95_ms": percentile(times, 0.95),
            "computed_tokens_per_keystroke": statistics.mean(computed)}


def load(kind: str, model: Path, threads: int, device: str) -> Engine:
    """The engine a configuration names: ``llamacpp``, or ``torch[:dtype[:quantize[:compile]]]``
    (default float32, none, off), e.g. ``torch:bfloat16:int8:on`` on a GPU."""
    if kind.startswith("torch"):
        given = kind.split(":")[1:]
        dtype, quantize, compile = [*given, *("float32", "none", "off")[len(given):]]
        return Engine.load(model, device=device, dtype=dtype, context_length=4096, quantize=quantize, compile=compile)
    from codellama_lsp.engine.llamacpp import open_llamacpp

    return open_llamacpp(model, 4096, threads)  # as the server opens it: drafts only where batch-invariant


def measure(kind: str, model: Path, threads: int, keystrokes: int, bandwidth: float, device: str) -> dict[str, Any]:
    engine = load(kind, model, threads, device)
    template = detect(engine.tokenizer)
    trace = keystroke_trace(template, engine.tokenizer, keystrokes)
    long_prompt = trace[-1]
    speed(engine, long_prompt[:64], new_tokens=4)  # warm-up: first calls pay one-off allocations
    prefill, decode = speed(engine, long_prompt, new_tokens=64)
    step_bytes = bytes_per_step(engine, model, len(long_prompt) + 32)
    out: dict[str, Any] = {
        "prompt_tokens": len(long_prompt),
        "prefill_tok_s": prefill,
        "decode_tok_s": decode,
        "bytes_per_step": step_bytes,
        "decode_bandwidth_fraction": step_bytes * decode / (bandwidth * 1e9),
        "draft_tokens": engine.draft_tokens,
    }
    if kind == "llamacpp":  # the kernel open_llamacpp chose (codellama_lsp.engine.llamacpp_kernels)
        out["tiled_kernel"] = os.environ.get("GGML_CPU_TILED_MM") != "0"
    for reuse in (True, False):
        for key, value in replay(engine, trace, template.stop_ids, reuse).items():
            out[f"replay_{key}_{'reuse' if reuse else 'noreuse'}"] = value
    engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="default: the server's default model")
    ap.add_argument("--engines", default="torch,llamacpp",
                    help="comma-separated: llamacpp (GGUF only), torch[:dtype[:quantize[:compile]]] (default torch is "
                         "float32, no quantization, eager), e.g. torch:bfloat16:int8:on")
    ap.add_argument("--device", default="cpu", help="the torch configurations' device (default: cpu)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keystrokes", type=int, default=12)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or default_model_path()
    if args.model is None and model.suffix == ".gguf":
        from codellama_lsp.engine.default_model import default_gguf

        model = default_gguf()  # assembled from its packages on first use
    bandwidth = memory_bandwidth(args.device)
    results: dict[str, Any] = {"model": str(model), "threads": args.threads, **bandwidth, "configurations": {}}
    for kind in args.engines.split(","):
        if kind == "llamacpp" and model.suffix != ".gguf":
            continue
        results["configurations"][kind] = measure(kind, model, args.threads, args.keystrokes,
                                                  bandwidth["memory_bandwidth_gb_s"], args.device)
    configs = results["configurations"]
    # The best configuration at the limit (the highest fraction), and the fastest (the most tok/s):
    # a quantized kernel reads fewer bytes and may be the fastest while compute-bound.
    best = max(configs, key=lambda k: configs[k]["decode_bandwidth_fraction"])
    fastest = max(configs, key=lambda k: configs[k]["decode_tok_s"])
    results.update(best_configuration=best, decode_bandwidth_fraction=configs[best]["decode_bandwidth_fraction"],
                   fastest_configuration=fastest)

    print(f"engine benchmark: {model.name}, {args.threads} thread(s); bandwidth: copy {bandwidth['copy_gb_s']:.1f}, "
          f"read {bandwidth['read_gb_s']:.1f}, GEMV {bandwidth['gemv_gb_s']:.1f} GB/s; the limit "
          f"{bandwidth['memory_bandwidth_gb_s']:.1f} GB/s")
    keys = ["prompt_tokens", "prefill_tok_s", "decode_tok_s", "bytes_per_step", "decode_bandwidth_fraction",
            "replay_p50_ms_reuse", "replay_p50_ms_noreuse", "replay_p95_ms_reuse", "replay_p95_ms_noreuse",
            "replay_computed_tokens_per_keystroke_reuse", "replay_computed_tokens_per_keystroke_noreuse",
            "draft_tokens", "tiled_kernel"]
    names = list(results["configurations"])
    print(f"| metric | {' | '.join(names)} |\n|---|{'---:|' * len(names)}")
    for key in keys:
        cells = [results["configurations"][n].get(key) for n in names]
        print(f"| {key} | " + " | ".join(_cell(c) for c in cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # benchmarks/results/ is not in git
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _cell(value: Any) -> str:
    if value is None:  # a key only some configurations have (tiled_kernel: llama.cpp's)
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


if __name__ == "__main__":
    main()
