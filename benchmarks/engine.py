"""Engine benchmark: prefill and decode speed, and a keystroke replay with and without KV reuse.

The replay types 200 characters of a real source file, one at a time, at a cursor with
about 1,200 prefix tokens and 300 suffix tokens, and makes a greedy infilling request
(32 new tokens at most) after each keystroke: in PSM and in SPM, each with the KV cache
reused between requests and without (a fresh cache per request). The engine runs as
served, with lookup drafts for greedy decoding; the ``*_nodraft`` rows repeat the replay
with drafts off, to show what KV reuse does alone. Decode tok/s is one token per forward
pass, as the peer does it: transformers' ``generate()`` on the same weights, which also
runs the same PSM trace.

    python benchmarks/engine.py [--model DIR] [--json PATH]
    python benchmarks/engine.py --random-shape 256x8x4x2 --json out.json   # random weights, bundled tokenizer
"""

from __future__ import annotations

import argparse
import json
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.engine import Engine
from codellama_lsp.generation import GenerationRequest
from codellama_lsp.engine.config import ModelArgs
from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.engine.checkpoint import save_checkpoint
from codellama_lsp.engine.model import Transformer
from codellama_lsp.completion.templates import Format, infilling_tokens

SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
REPEATS = 3  # speed figures are the median of this many runs, for ours and the peer alike (the machine is noisy)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cursor_for(tok: Tokenizer, text: str, prefix_tokens: int) -> int:
    """The first line start at which the prefix holds at least ``prefix_tokens`` tokens."""
    pos = 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        if len(tok.encode(text[:pos])) >= prefix_tokens:
            return pos
    raise ValueError("source file too short for the requested prefix")


def suffix_window(tok: Tokenizer, text: str, tokens: int) -> str:
    """The leading lines of ``text`` that fit in ``tokens`` tokens."""
    out, used = [], 0
    for line in text.splitlines(keepends=True):
        used += len(tok.encode_infilling(line))
        if used > tokens:
            break
        out.append(line)
    return "".join(out)


def keystroke_trace(tok: Tokenizer, fmt: Format, typed: int = 200) -> list[list[int]]:
    text = SOURCE.read_text(encoding="utf-8")
    cursor = cursor_for(tok, text, 1200)
    # Leading indentation of the typed span stays in the prefix, so typing starts on real code.
    target = text[cursor : cursor + typed]
    suffix = suffix_window(tok, text[cursor + typed :], 300)
    return [infilling_tokens(tok, text[:cursor] + target[:i], suffix, fmt) for i in range(1, typed + 1)]


def replay(engine: Engine, prompts: list[list[int]], reuse: bool, draft_tokens: int) -> list[float]:
    served = engine.reuse, engine.draft_tokens
    engine.reuse, engine.draft_tokens = reuse, draft_tokens
    engine.reset_cache()
    times = []
    for prompt in prompts:
        t0 = time.perf_counter()
        engine.generate(GenerationRequest(prompt, max_new_tokens=32))
        times.append((time.perf_counter() - t0) * 1000)
    engine.reuse, engine.draft_tokens = served
    return times


def engine_speed(engine: Engine, prompt: list[int], new_tokens: int = 128) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) with a fresh cache, one token per forward pass (no drafts, like
    the peer's greedy generate()), stop tokens off so decode runs its full length."""
    stops = set(engine._stop_ids)
    engine._stop_ids.clear()
    engine.reset_cache()
    served_drafts, engine.draft_tokens = engine.draft_tokens, 0
    prefill, decode = [], []
    try:
        for _ in range(REPEATS):
            engine.reset_cache()
            r = engine.generate(GenerationRequest(prompt, max_new_tokens=new_tokens, infilling=False))
            prefill.append(r.computed_tokens / r.prefill_ms * 1000)
            decode.append((r.generated_tokens - 1) / r.decode_ms * 1000)
    finally:
        engine._stop_ids.update(stops)
        engine.draft_tokens = served_drafts
    return statistics.median(prefill), statistics.median(decode)


def transformers_peer(model_dir: Path, prompt: list[int], trace: list[list[int]], stop_ids: list[int],
                      new_tokens: int = 128) -> tuple[float, list[float]]:
    """transformers' generate() on the same weights: decode tok/s and the PSM replay latencies."""
    from transformers import LlamaForCausalLM  # the reference peer only; never imported by the package

    ref = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        ref.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)  # the same warm-up as ours
        speeds = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            ref.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0)
            t1 = time.perf_counter()
            ref.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
            t2 = time.perf_counter()
            speeds.append((new_tokens - 1) / ((t2 - t1) - (t1 - t0)))
        decode_tok_s = statistics.median(speeds)
        times = []
        for p in trace:
            t0 = time.perf_counter()
            ref.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False, eos_token_id=stop_ids, pad_token_id=0)
            times.append((time.perf_counter() - t0) * 1000)
    return decode_tok_s, times


def random_model(shape: str, tokenizer: Path, out: Path) -> Path:
    """Random weights of shape DIMxLAYERSxHEADSxKV_HEADS with the given tokenizer, saved as a checkpoint."""
    dim, layers, heads, kv = (int(x) for x in shape.split("x"))
    vocab = Tokenizer(tokenizer).vocab_size
    args = ModelArgs(hidden_size=dim, intermediate_size=(8 * dim // 3 + 63) // 64 * 64, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=4096,
                     tie_word_embeddings=True)
    torch.manual_seed(0)
    return save_checkpoint(Transformer(args), out, tokenizer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    ap.add_argument("--random-shape", help="benchmark random weights of DIMxLAYERSxHEADSxKV_HEADS instead")
    ap.add_argument("--keystrokes", type=int, default=200)
    ap.add_argument("--no-peer", action="store_true", help="skip the transformers peer")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model_dir = args.model
    if args.random_shape:
        model_dir = random_model(args.random_shape, args.model / "tokenizer.model", Path(tempfile.mkdtemp()))
    engine = Engine.load(model_dir, device="cpu", dtype="float32", context_length=4096)
    tok = engine.tokenizer

    traces = {fmt: keystroke_trace(tok, fmt, args.keystrokes) for fmt in ("psm", "spm")}
    long_prompt = traces["psm"][-1]
    engine_speed(engine, long_prompt, new_tokens=8)  # warm-up: first calls pay one-off allocations
    prefill_tok_s, decode_tok_s = engine_speed(engine, long_prompt)
    results: dict[str, float | int | str] = {
        "model": str(args.random_shape or model_dir),
        "parameters": engine.model.args.num_parameters(),
        "threads": torch.get_num_threads(),
        "context_tokens": len(long_prompt),
        "keystrokes": args.keystrokes,
        "prefill_tok_s": prefill_tok_s,
        "decode_tok_s": decode_tok_s,
    }
    # The engine as served (lookup drafts on), then without drafts to show what KV reuse alone does.
    served = engine.draft_tokens
    for fmt, trace in traces.items():
        for reuse, drafts, tag in ((True, served, "reuse"), (False, served, "noreuse"),
                                   (True, 0, "reuse_nodraft"), (False, 0, "noreuse_nodraft")):
            times = replay(engine, trace, reuse, drafts)
            results[f"replay_{fmt}_p50_ms_{tag}"] = statistics.median(times)
            results[f"replay_{fmt}_p95_ms_{tag}"] = percentile(times, 0.95)
    if not args.no_peer:
        peer_decode, peer_times = transformers_peer(model_dir, long_prompt, traces["psm"], sorted(engine._stop_ids))
        results["peer_transformers_decode_tok_s"] = peer_decode
        results["peer_transformers_replay_p50_ms"] = statistics.median(peer_times)
        results["peer_transformers_replay_p95_ms"] = percentile(peer_times, 0.95)

    print(f"engine benchmark: {results['model']} ({results['parameters'] / 1e6:.1f} M params, "
          f"{results['threads']} threads, {results['context_tokens']}-token prompt, {args.keystrokes} keystrokes)")
    print(f"{'metric':<34}{'value':>10}")
    for key, value in results.items():
        if isinstance(value, float):
            print(f"{key:<34}{value:>10.1f}")
    for fmt in ("psm", "spm"):
        ratio = results[f"replay_{fmt}_p50_ms_reuse"] / results[f"replay_{fmt}_p50_ms_noreuse"]
        results[f"replay_{fmt}_reuse_ratio"] = ratio
        print(f"{fmt.upper()} p50 with reuse / without: {ratio:.2f}x")
    if "peer_transformers_decode_tok_s" in results:
        speedup = results["decode_tok_s"] / results["peer_transformers_decode_tok_s"]
        results["decode_speedup_vs_transformers"] = speedup
        print(f"decode tok/s vs transformers generate(): {speedup:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # benchmarks/results/ is not in git
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
