"""Peer benchmark: the same keystroke trace through the LSP, with our local engine and with llama.cpp's server.

Both sides run the real ``codellama-lsp --stdio`` process driven as an editor would
(didOpen, then one didChange and one inlineCompletion per keystroke), with the same
settings, the same prompt layout (PSM, the one layout every infilling family has) and the
same number of threads:

* local: our best local engine for the model, the server's own choice (``engine: auto``:
  llama.cpp's kernels in process for a .gguf on the CPU, with our KV reuse, lookup drafts,
  stop rules and cancellation; our PyTorch model for a checkpoint directory);
* llamacpp: our LSP with ``backend: openai`` in front of llama-cpp-python's server on
  127.0.0.1 serving the same GGUF (a checkpoint directory is exported with ``export-gguf``).
  That server reuses the KV of the longest prefix its previous prompt shares (what
  llama.cpp's ``cache_prompt`` does); it has no ``--cache-reuse``, which would also shift KV
  after the edit. It runs in its own default configuration, except that on CPUs where
  llama.cpp's AMX buffers fault it runs without them, as our engine does
  (``codellama_lsp.devtools.llamacpp_server``).

In PSM a keystroke changes the prefix's end, so both sides recompute the suffix and the
middle marker each time; the prompt tokens computed per keystroke show it.

Two passes over the trace:

* sequential: each keystroke waits for its suggestion; gives the first request's latency
  (a file just opened, after a three-keystroke warm-up in another file with the same text,
  whose cache it may reuse), p50/p95 latency over the keystrokes after it, and the prompt
  tokens computed per keystroke (the rest came from a KV cache; a prefetch's count with the
  keystroke after which it ran); and those keystrokes split by the LSP's own count
  (``codellama.status``): the ones it answered without waiting for the model (typed
  through the shown suggestion, or prefetched while it was shown: ``prefetch``) and their
  p50, and the p50 of the ones that waited. When more than half did not wait, the overall
  p50 is an LSP round trip, the same code on both sides, not the engine;
* typed: keystrokes every ``--interval-ms`` whatever the answers; gives the answered
  ratio (keystrokes whose request was not superseded by the next one, nor failed).

``--accept-pause-ms N`` replaces the sequential pass's typing with a user who accepts every
suggestion (Tab) after reading it for N ms, and starts a new line where there is none:
``--keystrokes`` requests, each at the end of what the last one inserted. It measures the
prefetch (``--prefetch on|off``, the LSP's ``prefetch`` setting): the suggestion at the
shown one's end, computed while the user reads.

llama.cpp's decode tok/s is read from its server's own timing lines over the sequential pass.

    python benchmarks/peer.py [--model PATH] [--threads 1] [--keystrokes 80] [--interval-ms 120]
                              [--suffix-tokens N] [--prefetch on|off] [--accept-pause-ms N] [--json PATH]
                              [--profile-local STACKS.txt]   # py-spy samples of the local LSP's sequential pass

The default model is the server's (the real Qwen2.5-Coder-0.5B GGUF when installed). Run it
with nothing else on the machine; with ``--threads 1``, pin it (``taskset -c 0``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from codellama_lsp.devtools.llamacpp_server import LlamaCppServer
from codellama_lsp.devtools.lsp_client import Client, start, stop
from codellama_lsp.engine.gguf_export import export_gguf
from codellama_lsp.loading import default_model_path
from codellama_lsp.service.metrics import percentile
from codellama_lsp.settings import CPU_BUDGETS

SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
START_LINE = 300  # 0-based; about 2,500 prefix tokens of textwrap.py before it
# The time budget is lifted so latency is what each side computes, not where the budget cut it.
LSP_SETTINGS = {"maxNewTokens": 64, "timeBudgetMs": 20000, "format": "psm"}
# Both sides get the local engine's CPU budgets, set explicitly: left to the server, a remote
# backend gets a server's (a 256-token suffix, 1024 context tokens), so its prompts would be
# longer and the two sides would not compute the same tokens.
SAME_BUDGETS = {"suffixTokens": CPU_BUDGETS["suffix_tokens"], "contextTokens": CPU_BUDGETS["context_tokens"]}
REUSED = re.compile(r" (\d+)/(\d+) tokens reused")
PREFIX_HIT = re.compile(r"prefix-match hit, remaining (\d+) prompt tokens to eval")
# llama.cpp's per-request timing line: "eval time = 123.45 ms / 10 runs (...)"
EVAL_TIME = re.compile(r"^\s*(?:llama_perf_context_print:)?\s*eval time =\s*([\d.]+) ms /\s*(\d+) runs", re.MULTILINE)


@dataclass(frozen=True)
class Trace:
    text: str  # the document before typing: the source with the typed span cut out
    line: int
    column: int
    typed: str

    def positions(self) -> list[tuple[int, int, str]]:
        """(line, character, char) of each keystroke: where it is typed."""
        out, line, col = [], self.line, self.column
        for ch in self.typed:
            out.append((line, col, ch))
            line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
        return out


def make_trace(keystrokes: int) -> Trace:
    """Type ``keystrokes`` characters of the source from the first non-blank of START_LINE (the editor indented)."""
    lines = SOURCE.read_text(encoding="utf-8").splitlines(keepends=True)
    indent = len(lines[START_LINE]) - len(lines[START_LINE].lstrip(" "))
    cut = len("".join(lines[:START_LINE])) + indent
    text = "".join(lines)
    return Trace(text[:cut] + text[cut + keystrokes:], START_LINE, indent, text[cut: cut + keystrokes])


class LogTail:
    """The text a log file gained since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size if path.exists() else 0

    def new(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace")


@dataclass
class Side:
    name: str
    client: Client
    computed: Callable[[str], int]  # prompt tokens computed for one request, from the LSP log's new lines


# How the LSP answered a keystroke without waiting for the model (codellama.status's request counts).
WITHOUT_WAITING = ("typed_through", "prefetched")


async def sequential(side: Side, trace: Trace, uri: str) -> tuple[list[float], list[int], list[str]]:
    """Latency (ms), prompt tokens computed and the LSP's outcome of each keystroke's request, each
    awaited before the next. Tokens a prefetch computed in the background count for the keystroke
    after which they were logged."""
    client = side.client
    client.open(uri, trace.text)
    edits = [(ch, (line, col), (line + 1, 0) if ch == "\n" else (line, col + 1)) for line, col, ch in trace.positions()]
    return await _requests(side, uri, iter(edits))


async def accepting(side: Side, trace: Trace, uri: str, rounds: int, pause_s: float) -> tuple[list[float], list[int], list[str]]:
    """As ``sequential``, for a user who accepts every suggestion (Tab) after reading it for
    ``pause_s``, and starts a new line where there is none: ``rounds`` requests, each at the
    end of the text the last one inserted."""
    client = side.client
    client.open(uri, trace.text)
    shown = {"text": ""}

    def edits():
        line, col = trace.line, trace.column
        for i in range(rounds):
            text = shown["text"] or ("\n" if i else "")  # the first request is at the trace's start
            pieces = text.split("\n")
            end = (line + len(pieces) - 1, (col if len(pieces) == 1 else 0) + len(pieces[-1]))
            yield text, (line, col), end
            line, col = end

    async def read(text: str) -> None:
        shown["text"] = text
        if text:
            await asyncio.sleep(pause_s)

    return await _requests(side, uri, edits(), read)


async def _requests(side: Side, uri: str, edits, after=None) -> tuple[list[float], list[int], list[str]]:
    """Each (text, inserted at, cursor after) edit, then the request at its cursor, awaited and timed."""
    client = side.client
    lsp_log = LogTail(client.log_file)  # type: ignore[arg-type]
    latencies, computed, outcomes = [], [], []
    counts = (await client.status())["requests"]
    for version, (text, at, cursor) in enumerate(edits, 2):
        client.change(uri, version, text, at, at)
        t0 = time.perf_counter()
        shown = await client.inline(uri, *cursor)
        latencies.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.05)  # let the log lines land
        computed.append(side.computed(lsp_log.new()))
        now = (await client.status())["requests"]
        outcomes.append(next((k for k in (*WITHOUT_WAITING, "typed_ahead", "answered", "empty", "superseded")
                              if now.get(k, 0) > counts.get(k, 0)), "other"))
        counts = now
        if after is not None:
            await after(shown)
    return latencies, computed, outcomes


async def typed(side: Side, trace: Trace, uri: str, interval_ms: float) -> float:
    client = side.client
    client.open(uri, trace.text)
    before = (await client.status())["requests"]
    pending = []
    for version, (line, col, ch) in enumerate(trace.positions(), 2):
        client.change(uri, version, ch, (line, col), (line, col))
        cursor = (line + 1, 0) if ch == "\n" else (line, col + 1)
        pending.append(asyncio.ensure_future(client.inline(uri, *cursor)))
        await asyncio.sleep(interval_ms / 1000)
    await asyncio.gather(*pending)
    after = (await client.status())["requests"]
    done = sum(after.get(k, 0) - before.get(k, 0) for k in ("answered", "empty", "typed_ahead", *WITHOUT_WAITING))
    return done / len(pending)


def lsp_computed(lines: str) -> int:
    """Prompt tokens the backend computed, as the LSP logs it ("R/N tokens reused"); 0 for typed-through."""
    m = REUSED.search(lines)
    return int(m[2]) - int(m[1]) if m else 0


def llama_cpp_python_computed(server_log: LogTail) -> Callable[[str], int]:
    """llama-cpp-python logs prefix reuse itself; a request without that line evaluated its whole prompt."""
    def computed(lsp_lines: str) -> int:
        server = server_log.new()
        if "full prompt already cached" in server:
            return 0
        hit = PREFIX_HIT.search(server)
        if hit:
            return int(hit[1])
        m = REUSED.search(lsp_lines)
        return int(m[2]) if m else 0
    return computed


@contextmanager
def sampled(pid: int, out: Path | None):
    """py-spy samples of process ``pid`` (all threads, idle ones left out) while the block runs, as collapsed stacks."""
    if out is None:
        yield
        return
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach before the first keystroke
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


WRAPPERS = ("threading.py", "concurrent/futures", "_contextlib.py", "torch/nn/modules/module.py")


def hot_frames(stacks: Path, top: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Frames by inclusive and by self share of the samples (generic wrappers left out): where the time goes."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text(encoding="utf-8", errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        n, chain = int(count), frames.split(";")
        total += n
        leaf[chain[-1]] += n
        for frame in set(chain):
            if not any(w in frame for w in WRAPPERS):
                inclusive[frame] += n
    return ([(f, n / total) for f, n in inclusive.most_common(top)],
            [(f, n / total) for f, n in leaf.most_common(top)])


async def run_side(name: str, client: Client, computed: Callable[[str], int], trace: Trace,
                   interval_ms: float, profile: Path | None = None, accept_pause_s: float = 0.0) -> dict[str, Any]:
    status = await client.wait_loaded(120)
    if status["state"] != "ready":
        raise RuntimeError(f"{name}: the LSP did not get ready: {status['error']}\n{client.log()[-2000:]}")
    side = Side(name, client, computed)
    await sequential(side, Trace(trace.text, trace.line, trace.column, trace.typed[:3]), f"file:///warmup-{name}.py")
    prefetches = (await client.status())["prefetches"]
    with sampled(client.process.pid, profile):
        latencies, recomputed, outcomes = await (
            accepting(side, trace, f"file:///seq-{name}.py", len(trace.typed), accept_pause_s) if accept_pause_s
            else sequential(side, trace, f"file:///seq-{name}.py"))
    prefetches = (await client.status())["prefetches"] - prefetches  # begun computing in that pass
    answered = await typed(side, trace, f"file:///typed-{name}.py", interval_ms)
    # The first request of a just-opened file computes its whole prompt; the keystrokes after it are the typing.
    # Split: keystrokes the LSP answered without waiting for the model (typed through, or prefetched
    # while the user typed), and the others.
    typing = list(zip(latencies[1:], outcomes[1:]))
    without, model = [ms for ms, o in typing if o in WITHOUT_WAITING], [ms for ms, o in typing if o not in WITHOUT_WAITING]
    return {
        "first_ms": latencies[0],
        "first_computed": recomputed[0],
        "p50_ms": percentile(latencies[1:], 0.5),
        "p95_ms": percentile(latencies[1:], 0.95),
        "without_model": len(without),
        "prefetched": sum(o == "prefetched" for _, o in typing),
        "prefetches": prefetches,
        "without_model_p50_ms": percentile(without, 0.5),
        "model_p50_ms": percentile(model, 0.5),
        "answered_ratio": answered,
        "recomputed_per_keystroke": sum(recomputed[1:]) / len(recomputed[1:]),
        "latencies_ms": [round(x, 1) for x in latencies],
        "computed": recomputed,
        "outcomes": outcomes,
    }


def decode_speed(server_log: str) -> float | None:
    """llama.cpp's decode tok/s over the timing lines in ``server_log`` (None without any)."""
    runs = [(float(ms), int(n)) for ms, n in EVAL_TIME.findall(server_log)]
    ms, n = sum(r[0] for r in runs), sum(r[1] for r in runs)
    return n / ms * 1000 if ms > 0 else None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    trace = make_trace(args.keystrokes)
    settings = {**LSP_SETTINGS, **SAME_BUDGETS, "prefetch": args.prefetch == "on",
                **({"suffixTokens": args.suffix_tokens} if args.suffix_tokens is not None else {})}
    results: dict[str, Any] = {"model": str(args.model), "keystrokes": args.keystrokes, "interval_ms": args.interval_ms,
                               "accept_pause_ms": args.accept_pause_ms,
                               "threads": args.threads, "settings": settings,
                               "source": f"{SOURCE.name} from line {START_LINE + 1}"}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.logs or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        if "local" in args.sides:
            client = await start(args.model, scratch / "local.log", options=settings, threads=args.threads)
            try:
                results["local"] = await run_side("local", client, lsp_computed, trace, args.interval_ms,
                                                  args.profile_local, args.accept_pause_ms / 1000)
                results["local"]["engine"] = (await client.status()).get("engine")
            finally:
                await stop(client)
        if "llamacpp" not in args.sides:
            return finish(results)
        gguf = args.model if args.model.suffix == ".gguf" else export_gguf(args.model, scratch / "model.gguf")
        server = LlamaCppServer(gguf, scratch / "llama-cpp-python.log", threads=args.threads)
        try:
            client = await start(args.model, scratch / "remote.log", threads=args.threads,
                                 options={**settings, "backend": "openai", "url": server.url + "/v1",
                                          "tokenizer": str(gguf)})  # the served model's own vocabulary
            try:
                server_log = LogTail(server.log)
                computed = llama_cpp_python_computed(server_log)
                results["llamacpp"] = await run_side("llamacpp", client, computed, trace, args.interval_ms,
                                                     accept_pause_s=args.accept_pause_ms / 1000)
                results["llamacpp"]["decode_tok_s"] = decode_speed(server.read_log())
            finally:
                await stop(client)
        finally:
            server.stop()
    return finish(results)


def finish(results: dict[str, Any]) -> dict[str, Any]:
    """The flat keys the JSON promises, for each side that ran."""
    for side in ("local", "llamacpp"):
        for key in ("p50_ms", "p95_ms"):
            if side in results:
                results[f"{side}_{key}"] = results[side][key]
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(r: dict[str, Any]) -> str:
    rows = ["| backend | first ms (tokens) | p50 ms | p95 ms | answered | prompt tokens computed / keystroke | "
            "without waiting for the model: n (prefetched), p50 ms | waiting: p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for side, label in (("local", f"local engine ({r.get('local', {}).get('engine')})"),
                        ("llamacpp", "llama-cpp-python server")):
        if side not in r:
            continue
        s = r[side]
        rows.append(f"| {label} | {s['first_ms']:.0f} ({s['first_computed']}) | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
                    f"{s['answered_ratio']:.0%} | {s['recomputed_per_keystroke']:.1f} | "
                    f"{s['without_model']} ({s['prefetched']}), {_ms(s['without_model_p50_ms'])} | "
                    f"{_ms(s['model_p50_ms'])} |")
    if "local" not in r or "llamacpp" not in r:
        return "\n".join(rows)
    speed = r["llamacpp"].get("decode_tok_s")
    ratios = f"local/llama.cpp: p50 {r['local_p50_ms'] / r['llamacpp_p50_ms']:.2f}x, p95 {r['local_p95_ms'] / r['llamacpp_p95_ms']:.2f}x"
    return "\n".join(rows) + (f"\n\nllama.cpp decode: {speed:.1f} tok/s" if speed else "") + "\n" + ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="a .gguf file or checkpoint directory (default: the server's default model)")
    ap.add_argument("--threads", type=int, default=1, help="threads for each side (default: 1)")
    ap.add_argument("--suffix-tokens", type=int, help="the suffixTokens setting for both sides (default: the CPU budget's)")
    ap.add_argument("--prefetch", choices=("on", "off"), default="on", help="the prefetch setting for both sides")
    ap.add_argument("--accept-pause-ms", type=float, default=0.0,
                    help="instead of typing the trace, accept every suggestion (as with Tab) after this pause, "
                         "--keystrokes times; 0: type the trace")
    ap.add_argument("--sides", default="local,llamacpp", help="which sides run (default: local,llamacpp)")
    ap.add_argument("--keystrokes", type=int, default=80)
    ap.add_argument("--interval-ms", type=float, default=120.0, help="typing interval of the typed pass")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--logs", type=Path, help="keep both sides' LSP and server logs in this folder")
    ap.add_argument("--profile-local", type=Path, help="sample the local LSP with py-spy during the sequential pass")
    args = ap.parse_args()
    args.model = args.model or default_model_path()
    results = asyncio.run(main_async(args))
    print(f"{args.keystrokes} keystrokes of {results['source']}, model {args.model}\n")
    print(table(results))
    if args.profile_local:
        for title, frames in zip(("inclusive", "self"), hot_frames(args.profile_local)):
            print(f"\nlocal keystroke path, {title} share of py-spy samples ({args.profile_local}):")
            for frame, share in frames:
                print(f"{share:6.1%}  {frame}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # benchmarks/results/ is not in git
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
