"""``codellama-lsp``: the language server (stdio or TCP), ``complete`` for the terminal, and ``verify-model``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from codellama_lsp import __version__
from codellama_lsp.generation import COMPILE_CHOICES, QUANTIZE_CHOICES
from codellama_lsp.settings import Settings, resolve_format

if TYPE_CHECKING:
    from codellama_lsp.lsp.server import CodeLlamaServer

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _common(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """Options accepted before and after ``complete``; the subcommand's must not reset the top level's."""
    default = (lambda value: argparse.SUPPRESS) if sub else (lambda value: value)
    parser.add_argument("--model", type=Path, default=default(None),
                        help="a checkpoint directory or .gguf file (default: the real default model, Qwen2.5-Coder-0.5B, "
                             "when installed, else the small demo model)")
    parser.add_argument("--device", default=default("auto"), help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dtype", default=default("auto"), choices=["auto", "float32", "bfloat16", "float16"],
                        help="weights' dtype (default: auto = bfloat16 on a GPU, float32 on the CPU)")
    parser.add_argument("--engine", default=default("auto"), choices=["auto", "torch", "llamacpp"],
                        help="what computes: torch (our PyTorch model), llamacpp (llama.cpp on a .gguf file, "
                             "CPU), or auto = llamacpp for a .gguf on the CPU, else torch (default: auto)")
    parser.add_argument("--compile", default=default("auto"), choices=list(COMPILE_CHOICES),
                        help="torch engine: compile the decode step (a CUDA graph on a GPU); auto = on for CUDA, "
                             "off on the CPU, where it is not faster (default: auto)")
    parser.add_argument("--quantize", default=default("auto"), choices=list(QUANTIZE_CHOICES),
                        help="torch engine: the linear layers' weights in int8 (per channel) or int4 (per group); "
                             "auto = int8 on CUDA, none on the CPU, where the int kernels are slower (default: auto)")
    parser.add_argument("--threads", type=int, default=default(None),
                        help="CPU threads for the model, either engine (default: PyTorch's choice; 1 is fastest "
                             "for small models on a busy machine)")
    parser.add_argument("--log-file", type=Path, default=default(None),
                        help="log here (default: the server logs to its client as window/logMessage, "
                             "the terminal commands to stderr)")
    parser.add_argument("--log-level", default=default("INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: INFO")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codellama-lsp", description="Code Llama completions over the Language Server Protocol.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    mode.add_argument("--tcp", action="store_true", help="listen for one LSP client over TCP")
    p.add_argument("--host", default="127.0.0.1", help="TCP address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=2087, help="TCP port (default: 2087)")
    _common(p)
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("complete", help="print the completion at a place in a file and exit")
    c.add_argument("file", type=Path)
    c.add_argument("--line", type=int, required=True, help="1-based line")
    c.add_argument("--column", type=int, required=True, help="1-based column, in characters (past the end: end of line)")
    c.add_argument("--format", choices=["auto", "psm", "spm"], default="auto",
                   help="prompt format (default: auto, the model's preferred one, else psm)")
    c.add_argument("--max-new-tokens", type=int, default=Settings.max_new_tokens)
    _common(c, sub=True)
    e = sub.add_parser("export-gguf", help="write a checkpoint as GGUF for llama.cpp and Ollama, and exit")
    e.add_argument("model_dir", type=Path, help="checkpoint directory (Hugging Face or Meta layout)")
    e.add_argument("out", type=Path, help="the .gguf file to write")
    e.add_argument("--outtype", choices=["f32", "f16"], default="f32", help="weights' type (default: f32)")
    sub.add_parser("verify-model", help="check the whole sha256 of the default model in the cache (a damaged file "
                                        "is removed, and assembled again at the next start), and exit")
    return p


def verify_model() -> int:
    """``verify-model``: 0 when the cached default model is the published file, 1 when it is damaged or missing."""
    from codellama_lsp.engine import default_model

    good, message = default_model.verify()
    print(f"codellama-lsp: {message}", file=sys.stdout if good else sys.stderr)
    return 0 if good else 1


def export(args: argparse.Namespace) -> int:
    from codellama_lsp.engine.config import CheckpointError
    from codellama_lsp.engine.gguf_export import export_gguf

    try:
        out = export_gguf(args.model_dir, args.out, args.outtype)
    except (CheckpointError, OSError) as exc:
        print(f"codellama-lsp: cannot export {args.model_dir}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _logging(log_file: Path | None, level: str) -> None:
    handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler(sys.stderr)
    from codellama_lsp.lsp.framing import CappedFormatter

    handler.setFormatter(CappedFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # pygls logs every message in full at INFO (a 10 MB didOpen would be a 10 MB log line).
    logging.getLogger("pygls").setLevel(logging.WARNING)


def _log_to_client(server: "CodeLlamaServer", level: str) -> None:
    """Log through the LSP (window/logMessage), not stderr: editors file a server's stderr as errors,
    so INFO lines on stderr read as failures in Neovim's :LspLog."""
    from codellama_lsp.lsp.log import LspLogHandler

    logging.basicConfig(level=level, handlers=[LspLogHandler(server)], force=True)
    logging.captureWarnings(True)  # Python warnings too, at Warning, instead of raw stderr


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(max(1, n))


def complete(args: argparse.Namespace) -> int:
    """One completion from the terminal: the same path as the server's, printed to stdout."""
    from codellama_lsp.completion.planning import generation_request, plan, shown
    from codellama_lsp.completion.families import UnknownFamily, detect
    from codellama_lsp.completion.context import TokenCounter
    from codellama_lsp.documents import Document
    from codellama_lsp.backends.errors import BackendError
    from codellama_lsp.engine.config import CheckpointError
    from codellama_lsp.lsp.loading import default_model_path, open_for

    try:
        text = args.file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        print(f"codellama-lsp: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    model = args.model or default_model_path()
    _threads(args.threads)
    settings = Settings(format=args.format, max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype,
                        engine=args.engine, compile=args.compile, quantize=args.quantize, time_budget_ms=60_000.0)
    try:
        backend = open_for(model, settings)
        template = detect(backend.tokenizer)
    except (CheckpointError, BackendError, UnknownFamily, OSError) as exc:
        print(f"codellama-lsp: cannot load the model at {model}: {exc}", file=sys.stderr)
        return 2
    doc = Document.from_text(args.file.as_uri() if args.file.is_absolute() else args.file.resolve().as_uri(), text,
                             encoding="utf-32")
    line = min(max(args.line, 1), len(doc.lines)) - 1
    cursor = doc.cursor(line, max(args.column, 1) - 1)
    settings = resolve_format(settings, backend.preferred_format)
    p = plan(doc, cursor, settings, template, backend.tokenizer, TokenCounter(backend.tokenizer.encode),
             heal=settings.token_healing and backend.heals)
    result = asyncio.run(backend.agenerate(generation_request(p, settings)))
    text = shown(result, p)
    if not text:
        print(f"codellama-lsp: no suggestion here (the model's text was {result.text!r})", file=sys.stderr)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    _logging(args.log_file, args.log_level)
    from codellama_lsp.files import install_sigterm_cleanup

    install_sigterm_cleanup()  # a model half-assembled when SIGTERM comes is removed, not left in the cache
    if args.command == "verify-model":
        sys.exit(verify_model())
    if args.command == "complete":
        sys.stdout.flush()
        os._exit(complete(args))
    if args.command == "export-gguf":
        sys.exit(export(args))
    from codellama_lsp.lsp.framing import start_stdio, start_tcp
    from codellama_lsp.lsp.server import build_server

    _threads(args.threads)
    settings = Settings(model=str(args.model) if args.model else None, device=args.device, dtype=args.dtype,
                        engine=args.engine, compile=args.compile, quantize=args.quantize)
    server = build_server(settings)
    if args.log_file is None:
        _log_to_client(server, args.log_level)
    if args.tcp:
        start_tcp(server, args.host, args.port)
    else:
        # JSON-RPC gets a private copy of stdout; fd 1 then points at stderr, so a stray print
        # or a C library writing to stdout can never corrupt the protocol stream.
        protocol_out = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        start_stdio(server, sys.stdin.buffer, protocol_out)  # framing's hardened reader, not pygls' own
    # stdin closed or the connection ended: leave now, whatever the engine's thread is doing.
    logging.shutdown()
    os._exit(0)
