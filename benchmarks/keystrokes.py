"""Typing benchmark: a span of a real source file typed at 8 keystrokes/s through the stdio server.

Each keystroke sends ``didChange`` and ``textDocument/inlineCompletion`` and, as editors
do, cancels the previous request if it is still pending. Reported per prompt format:
p50/p95 latency of the answered requests, the share answered, the engine's KV reuse
ratio, typed-through hits and typed-ahead hits (keystrokes answered by the generation
already running) from ``codellama.status``. The engine alone then runs
the same trace in-process (the same plans, one request per keystroke, none cancelled),
to show what the server adds.

    python benchmarks/keystrokes.py                      # the bundled model, or a random one
    python benchmarks/keystrokes.py --model DIR --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.completion.planning import generation_request, plan
from codellama_lsp.completion.families import detect
from codellama_lsp.completion.context import TokenCounter, Window
from codellama_lsp.documents import Document
from codellama_lsp.service.metrics import percentile
from codellama_lsp.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILE = REPO / "codellama_lsp" / "documents.py"


def random_model(out: Path, tokenizer: Path, shape: str) -> Path:
    """A random-weight checkpoint of ``shape`` ("hidden=256,layers=4,heads=4,kv_heads=2,ffn=688")."""
    import sentencepiece as spm
    import torch

    from codellama_lsp.engine.config import ModelArgs

    from codellama_lsp.engine.checkpoint import save_checkpoint
    from codellama_lsp.engine.model import Transformer

    dims = dict(hidden=256, layers=4, heads=4, kv_heads=2, ffn=688)
    dims.update({k: int(v) for k, v in (kv.split("=") for kv in shape.split(",") if kv)})
    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer)).GetPieceSize()
    args = ModelArgs(hidden_size=dims["hidden"], intermediate_size=dims["ffn"], num_hidden_layers=dims["layers"],
                     num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"], vocab_size=vocab,
                     max_position_embeddings=4096)
    torch.manual_seed(0)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return save_checkpoint(model, out, tokenizer)


def resolve_model(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    if args.model:
        return args.model, str(args.model)
    if (BUNDLED_MODEL / "config.json").is_file():
        return BUNDLED_MODEL, f"bundled ({BUNDLED_MODEL})"
    tokenizer = BUNDLED_MODEL / "tokenizer.model"
    if not tokenizer.is_file():
        sys.exit("no bundled model or tokenizer; pass --model DIR")
    return random_model(scratch / "random", tokenizer, args.random_shape), f"random ({args.random_shape})"


def trace(text: str, line: int | None, chars: int) -> tuple[str, int, str]:
    """(document before typing, offset where typing starts, the typed span)."""
    lines = text.splitlines(keepends=True)
    if line is None:  # the first indented, substantial line from the middle of the file on
        line = next(i for i in range(len(lines) // 2, len(lines)) if lines[i].startswith(" ") and len(lines[i].strip()) >= 20)
    else:
        line -= 1
    start = sum(map(len, lines[:line])) + len(lines[line]) - len(lines[line].lstrip())
    span = text[start: start + chars]
    return text[:start] + text[start + len(span):], start, span


def position_of(text: str, offset: int) -> types.Position:
    """LSP position (UTF-16) of a string offset."""
    head = text[:offset]
    line = head.count("\n")
    column = head[head.rfind("\n") + 1:]
    return types.Position(line=line, character=len(column.encode("utf-16-le")) // 2)


async def run_server(model: Path, fmt: str, base: str, start: int, span: str, rate: float, threads: int,
                     log_file: Path) -> dict:
    client = LanguageClient("keystrokes", "0")
    await client.start_io(sys.executable, "-m", "codellama_lsp", "--stdio", "--model", str(model), "--threads",
                          str(threads), "--log-file", str(log_file), "--log-level", "WARNING")
    await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities(),
                                                         initialization_options={"format": fmt}))
    client.initialized(types.InitializedParams())
    status = {}
    while status.get("state") not in ("ready", "failed"):
        await asyncio.sleep(0.1)
        status = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codellama.status"))
    if status["state"] != "ready":
        raise SystemExit(f"the server could not load {model}: {status['error']}")
    uri = "file:///bench/trace.py"
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=base)))
    text = base
    latencies: list[float] = []
    answered = 0
    pending: tuple[str, asyncio.Future] | None = None
    done: list[asyncio.Future] = []
    t0 = time.perf_counter()
    for i, ch in enumerate(span):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        if pending is not None and not pending[1].done():
            client.cancel_request(types.CancelParams(id=pending[0]))
        at = position_of(text, start + i)
        text = text[: start + i] + ch + text[start + i:]
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=ch)]))
        msg_id = f"k{i}"
        sent = time.perf_counter()
        future = asyncio.wrap_future(client.protocol.send_request(
            types.TEXT_DOCUMENT_INLINE_COMPLETION,
            types.InlineCompletionParams(text_document=types.TextDocumentIdentifier(uri=uri),
                                         position=position_of(text, start + i + 1),
                                         context=types.InlineCompletionContext(
                                             trigger_kind=types.InlineCompletionTriggerKind.Automatic)),
            msg_id=msg_id))

        def finished(f: asyncio.Future, sent: float = sent) -> None:
            nonlocal answered
            if not f.cancelled() and f.exception() is None:
                answered += 1
                latencies.append((time.perf_counter() - sent) * 1000)

        future.add_done_callback(finished)
        pending = (msg_id, future)
        done.append(future)
    await asyncio.gather(*done, return_exceptions=True)
    status = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="codellama.status"))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return {
        "keystrokes": len(span),
        "answered_ratio": answered / len(span),
        "lsp_p50_ms": percentile(latencies, 0.5),
        "lsp_p95_ms": percentile(latencies, 0.95),
        "reuse_ratio": status["kv_reuse_ratio"],
        "typed_through_hits": status["typed_through_hits"],
        "typed_ahead_hits": status["requests"].get("typed_ahead", 0),
        "superseded": status["requests"].get("superseded", 0) + status["requests"].get("cancelled", 0),
    }


def run_engine(model: Path, fmt: str, base: str, start: int, span: str, threads: int) -> dict:
    """The same keystrokes straight into the engine: what the model costs without the server."""
    import torch

    from codellama_lsp.engine.engine import Engine

    torch.set_num_threads(threads)
    engine = Engine.load(model)
    settings = Settings(format=fmt)
    count = TokenCounter(engine.tokenizer.encode)
    doc = Document.from_text("file:///bench/trace.py", base)
    previous: Window | None = None
    latencies, prompt, reused = [], 0, 0
    text = base
    for i, ch in enumerate(span):
        at = position_of(text, start + i)
        text = text[: start + i] + ch + text[start + i:]
        doc.apply_change(ch, (at.line, at.character), (at.line, at.character))
        here = position_of(text, start + i + 1)
        t = time.perf_counter()
        p = plan(doc, doc.cursor(here.line, here.character), settings, detect(engine.tokenizer), engine.tokenizer, count, previous)
        previous = p.window
        result = engine.generate(generation_request(p, settings))
        latencies.append((time.perf_counter() - t) * 1000)
        prompt += result.prompt_tokens
        reused += result.reused_tokens
    engine.close()
    return {"engine_p50_ms": percentile(latencies, 0.5), "engine_p95_ms": percentile(latencies, 0.95),
            "engine_mean_ms": statistics.fmean(latencies), "engine_reuse_ratio": reused / prompt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint directory (default: the bundled model, else a random one)")
    p.add_argument("--random-shape", default="hidden=256,layers=4,heads=4,kv_heads=2,ffn=688",
                   help="shape of the random model used when there is no bundled model")
    p.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the source file to type from")
    p.add_argument("--line", type=int, help="1-based line where typing starts (default: one from the middle)")
    p.add_argument("--chars", type=int, default=64, help="how many characters to type (default: 64)")
    p.add_argument("--rate", type=float, default=8.0, help="keystrokes per second (default: 8)")
    p.add_argument("--formats", default="psm,spm")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the model, server and engine alike")
    p.add_argument("--json", type=Path, help="write {format: results} here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model, label = resolve_model(args, Path(scratch))
        base, start, span = trace(args.file.read_text(encoding="utf-8"), args.line, args.chars)
        print(f"model: {label}\nfile: {args.file}, typing {len(span)} chars at {args.rate:g}/s: {span!r}\n")
        results: dict[str, dict] = {}
        for fmt in args.formats.split(","):
            lsp = asyncio.run(run_server(model, fmt, base, start, span, args.rate, args.threads,
                                         Path(scratch) / f"{fmt}.log"))
            results[fmt] = {**lsp, **run_engine(model, fmt, base, start, span, args.threads)}

    keys = ["lsp_p50_ms", "lsp_p95_ms", "engine_p50_ms", "engine_p95_ms", "answered_ratio", "reuse_ratio",
            "typed_through_hits", "typed_ahead_hits", "superseded"]
    print("| format | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for fmt, r in results.items():
        cells = [f"{r[k]:.2f}" if k.endswith("ratio") else f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        print(f"| {fmt} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # benchmarks/results/ is not in git
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
