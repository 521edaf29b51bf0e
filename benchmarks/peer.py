"""Peer benchmark: the same keystroke trace through the LSP, with the local engine and with llama.cpp.

Both sides run the real ``codellama-lsp --stdio`` process driven as an editor would
(didOpen, then one didChange and one inlineCompletion per keystroke). The peer is
llama-cpp-python's OpenAI-compatible server on 127.0.0.1 serving the same weights
(exported with ``export-gguf``, f32), which always reuses the KV of the longest prefix
its previous prompt shares (what llama.cpp's ``cache_prompt`` does; it has no
``--cache-reuse``, which would also shift KV after the edit). Each side gets one thread.

Two passes over the trace:

* sequential: each keystroke waits for its suggestion; gives p50/p95 latency and the
  prompt tokens computed per keystroke (the rest came from a KV cache);
* typed: keystrokes every ``--interval-ms`` whatever the answers; gives the answered
  ratio (keystrokes whose request was not superseded by the next one, nor failed).

    python benchmarks/peer.py [--model DIR] [--keystrokes 80] [--interval-ms 120] [--json PATH]
                              [--profile-local STACKS.txt]   # py-spy samples of the local LSP's sequential pass
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

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.devtools.llamacpp_server import LlamaCppServer
from codellama_lsp.devtools.lsp_client import Client, start, stop
from codellama_lsp.engine.gguf_export import export_gguf
from codellama_lsp.lsp.metrics import percentile

SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
START_LINE = 300  # 0-based; about 2,500 prefix tokens of textwrap.py before it
LSP_SETTINGS = {"maxNewTokens": 64, "timeBudgetMs": 2000}
REUSED = re.compile(r" (\d+)/(\d+) tokens reused")
PREFIX_HIT = re.compile(r"prefix-match hit, remaining (\d+) prompt tokens to eval")


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


async def sequential(side: Side, trace: Trace, uri: str) -> tuple[list[float], list[int]]:
    client = side.client
    client.open(uri, trace.text)
    lsp_log = LogTail(client.log_file)  # type: ignore[arg-type]
    latencies, computed = [], []
    for version, (line, col, ch) in enumerate(trace.positions(), 2):
        client.change(uri, version, ch, (line, col), (line, col))
        cursor = (line + 1, 0) if ch == "\n" else (line, col + 1)
        t0 = time.perf_counter()
        await client.inline(uri, *cursor)
        latencies.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.05)  # let the log lines land
        computed.append(side.computed(lsp_log.new()))
    return latencies, computed


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
    done = sum(after.get(k, 0) - before.get(k, 0) for k in ("answered", "empty", "typed_through"))
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
                   interval_ms: float, profile: Path | None = None) -> dict[str, Any]:
    status = await client.wait_loaded(120)
    if status["state"] != "ready":
        raise RuntimeError(f"{name}: the LSP did not get ready: {status['error']}\n{client.log()[-2000:]}")
    side = Side(name, client, computed)
    await sequential(side, Trace(trace.text, trace.line, trace.column, trace.typed[:3]), f"file:///warmup-{name}.py")
    with sampled(client.process.pid, profile):
        latencies, recomputed = await sequential(side, trace, f"file:///seq-{name}.py")
    answered = await typed(side, trace, f"file:///typed-{name}.py", interval_ms)
    return {
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
        "answered_ratio": answered,
        "recomputed_per_keystroke": sum(recomputed) / len(recomputed),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    trace = make_trace(args.keystrokes)
    results: dict[str, Any] = {"model": str(args.model), "keystrokes": args.keystrokes, "interval_ms": args.interval_ms,
                               "source": f"{SOURCE.name} from line {START_LINE + 1}"}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        client = await start(args.model, scratch / "local.log", options=LSP_SETTINGS)
        try:
            results["local"] = await run_side("local", client, lsp_computed, trace, args.interval_ms, args.profile_local)
        finally:
            await stop(client)
        server = LlamaCppServer(export_gguf(args.model, scratch / "model.gguf"), scratch / "llama-cpp-python.log")
        try:
            client = await start(args.model, scratch / "remote.log",
                                 options={**LSP_SETTINGS, "backend": "openai", "url": server.url + "/v1"})
            try:
                computed = llama_cpp_python_computed(LogTail(server.log))
                results["llamacpp"] = await run_side("llamacpp", client, computed, trace, args.interval_ms)
            finally:
                await stop(client)
        finally:
            server.stop()
    for side in ("local", "llamacpp"):
        for key in ("p50_ms", "p95_ms"):
            results[f"{side}_{key}"] = results[side][key]
    return results


def table(r: dict[str, Any]) -> str:
    rows = ["| backend | p50 ms | p95 ms | answered | prompt tokens computed / keystroke |", "|---|---:|---:|---:|---:|"]
    for side, label in (("local", "local engine (PyTorch)"), ("llamacpp", "llama-cpp-python server")):
        s = r[side]
        rows.append(f"| {label} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['answered_ratio']:.0%} | "
                    f"{s['recomputed_per_keystroke']:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="checkpoint directory (default: the bundled model)")
    ap.add_argument("--keystrokes", type=int, default=80)
    ap.add_argument("--interval-ms", type=float, default=120.0, help="typing interval of the typed pass")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--profile-local", type=Path, help="sample the local LSP with py-spy during the sequential pass")
    args = ap.parse_args()
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
