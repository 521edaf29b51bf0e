"""Decode speed by the thread that computes: llama.cpp's OpenMP teams (docs/measurements.md, "llama.cpp on one thread").

llama.cpp's CPU backend computes on an OpenMP team per calling thread. This loads the
default model's GGUF as a script does (``open_llamacpp`` on the main thread), computes a
600-token prompt, and times greedy decodes of 64 tokens (drafts off) three ways:

* ``worker``: on the engine's worker thread (``Engine.submit``), as the server computes;
* ``main``: on the main thread (``Engine.generate``), while the worker's team is alive;
* ``worker after main``: on the worker again, once the main thread has computed and stays alive.

    python benchmarks/decode_thread.py [--threads 2] [--json PATH]

The order matters: a thread's team outlives its computation, so the first row is measured
before the main thread has one (the model's load checks its kernels on a thread of its own).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from codellama_lsp.engine import default_model
from codellama_lsp.engine.llamacpp import open_llamacpp
from codellama_lsp.engine.threads import count
from codellama_lsp.generation import GenerationRequest, GenerationResult

SOURCE = Path(__file__).resolve().parents[1] / "codellama_lsp" / "engine" / "engine.py"  # any real code
PROMPT_TOKENS, NEW_TOKENS, REPEATS = 600, 64, 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=count(), help="llama.cpp threads (default: one per core)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ns = ap.parse_args()
    engine = open_llamacpp(default_model.default_gguf(), 4096, ns.threads, draft_tokens=0)
    ids = engine.tokenizer.encode(SOURCE.read_text(encoding="utf-8"))[:PROMPT_TOKENS + REPEATS]
    engine.submit(GenerationRequest(ids[:PROMPT_TOKENS], max_new_tokens=1, infilling=False)).result()

    def tok_s(result: GenerationResult) -> float:
        return result.generated_tokens / result.decode_ms * 1000

    def request(k: int) -> GenerationRequest:  # one more prompt token each: the prompt is reused, not decoded again
        return GenerationRequest(ids[:PROMPT_TOKENS + 1 + k % 2], max_new_tokens=NEW_TOKENS, infilling=False)

    rows = {
        "worker": [tok_s(engine.submit(request(k)).result()) for k in range(REPEATS)],
        "main": [tok_s(engine.generate(request(k))) for k in range(REPEATS)],
        "worker after main": [tok_s(engine.submit(request(k)).result()) for k in range(REPEATS)],
    }
    results = {name: round(statistics.median(v), 1) for name, v in rows.items()}
    print(f"| thread ({ns.threads} llama.cpp threads, {NEW_TOKENS} tokens, median of {REPEATS}) | decode tok/s |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value} |")
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps({"threads": ns.threads, "tok_s": results}, indent=1) + "\n", encoding="utf-8")
    engine.close()


if __name__ == "__main__":
    main()
