"""``codellama-lsp``: the language server (stdio or TCP), ``complete`` for the terminal, and ``verify-model``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from codellama_lsp import __version__
from codellama_lsp.settings import SCHEMA, Setting, Settings, apply

if TYPE_CHECKING:
    from codellama_lsp.lsp.server import CodeLlamaServer

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _flag_type(s: Setting) -> Callable[[str], Any]:
    """argparse's converter for ``s``'s flag: the setting's own check, so a flag and a client's value agree."""
    def parse(text: str) -> Any:
        value = s.kind(text) if s.kind in (int, float) else text  # a ValueError is argparse's "invalid int value"
        problem = s.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return s.convert(value)
    parse.__name__ = s.kind.__name__
    return parse


def _common(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """Options accepted before and after ``complete``; the subcommand's must not reset the top level's.
    A setting's flag has no default (``SUPPRESS``): it is in ``Settings.given`` only when given."""
    default = (lambda value: argparse.SUPPRESS) if sub else (lambda value: value)
    for s in SCHEMA:
        if s.spec.flag:
            parser.add_argument(s.flag, dest=s.name, type=_flag_type(s), choices=list(s.spec.choices) or None,
                                default=argparse.SUPPRESS,
                                help=f"{s.spec.description} (default: {s.default_words()})".replace("`", ""))
    parser.add_argument("--threads", type=int, default=default(None),
                        help="CPU threads for the model, either engine (default: one per physical core; 1 is fastest "
                             "for small models on a busy machine)")
    parser.add_argument("--log-file", type=Path, default=default(None),
                        help="log here (default: the server logs to its client as window/logMessage, "
                             "the terminal commands to stderr)")
    parser.add_argument("--log-level", default=default("INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default: INFO")


def flag_settings(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> Settings:
    """The settings the command line gives, over ``base`` (camelCase, as a client would send them)."""
    given = {s.key: getattr(args, s.name) for s in SCHEMA if hasattr(args, s.name)}
    settings, errors = apply(Settings(), {**(base or {}), **given})
    assert not errors, errors  # every flag was checked by _flag_type
    return settings


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
    from codellama_lsp.engine import threads

    threads.use(n)


class _TerminalProgress:
    """Loading as the terminal shows it: nothing while it loads, the reason on stderr when it fails."""

    async def begin(self, message: str) -> None:
        return None

    def end(self, handle: object | None, state: str) -> None:
        pass

    def failed(self, message: str) -> None:
        print(message, file=sys.stderr)


def complete(args: argparse.Namespace) -> int:
    """One completion from the terminal: the completion service's path, the editor's, printed to stdout."""
    from codellama_lsp.service.completion_service import CompletionService

    try:
        text = args.file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        print(f"codellama-lsp: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    # The terminal waits for the whole suggestion, not the next keystroke: a minute's time budget.
    service = CompletionService(flag_settings(args, {"timeBudgetMs": 60_000}), _TerminalProgress(),
                                lambda note: print(note, file=sys.stderr))
    _threads(args.threads)
    uri = args.file.as_uri() if args.file.is_absolute() else args.file.resolve().as_uri()

    async def suggestion() -> str | None:
        await service.load()
        if service.slot.ready is None:
            return None
        service.open(uri, text, None, "", "utf-32")  # columns count characters
        lines = len(service.docs.document(uri).lines)
        return await service.suggest(uri, min(max(args.line, 1), lines) - 1, max(args.column, 1) - 1)

    shown = asyncio.run(suggestion())
    if shown is None:
        return 2
    if not shown:
        print("codellama-lsp: no suggestion here", file=sys.stderr)
    print(shown)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    _logging(args.log_file, args.log_level)
    from codellama_lsp.engine.host_memory import tune_allocator

    tune_allocator()  # before any thread starts: they share its one arena
    from codellama_lsp.files import install_sigterm_cleanup

    install_sigterm_cleanup()  # a model half-assembled when SIGTERM comes is removed, not left in the cache
    if args.command == "verify-model":
        sys.exit(verify_model())
    if args.command == "complete":
        code = complete(args)
        sys.stdout.flush()  # os._exit (no waiting on the engine's threads) flushes nothing itself
        os._exit(code)
    if args.command == "export-gguf":
        sys.exit(export(args))
    from codellama_lsp.lsp.framing import start_stdio, start_tcp
    from codellama_lsp.lsp.server import build_server

    _threads(args.threads)
    server = build_server(flag_settings(args))
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
