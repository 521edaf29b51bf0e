"""Where generation happens: the resident local engine (the default) or an inference server.

codellama-lsp keeps the editor-side work (documents, context windows, the token-exact
prompt, cancellation, post-processing, caches) and hands a ``GenerationRequest`` to a
``Backend``. The local ``Engine`` is one; ``RemoteBackend`` sends the same request to
vLLM, TGI, llama.cpp, Ollama or any OpenAI-compatible server, so a team can serve one
large model from a GPU box to many editors.
"""

from __future__ import annotations

from pathlib import Path
from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.generation import DEFAULT_CONTEXT_LENGTH, Backend, TextTokenizer
from codellama_lsp.backends.errors import BackendError
from codellama_lsp.backends.remote import RemoteBackend
from codellama_lsp.backends.wire import PROTOCOLS

# Setting value -> what serves completions. "local" is the in-process engine.
BACKENDS = ("local", *PROTOCOLS)


def open_backend(backend: str, model: Path, *, device: str = "auto", dtype: str = "auto", context_length: int = DEFAULT_CONTEXT_LENGTH,
                 url: str | None = None, served_model: str | None = None, tokenizer: Path | None = None,
                 api_key_env: str | None = None) -> Backend:
    """Load the local engine from ``model``, or connect to the server at ``url``.

    A remote backend never loads weights, but it needs the served model's tokenizer to
    build the prompt and size the context window: ``tokenizer`` (a ``tokenizer.model`` or a
    directory holding one), else ``model`` when it is such a directory, else the bundled
    model's, whose infilling pieces have the same text as Code Llama's.
    """
    if backend == "local":
        from codellama_lsp.engine.engine import Engine  # torch: imported only when the local engine is used

        engine = Engine.load(model, device=device, dtype=None if dtype == "auto" else dtype,
                             context_length=context_length)
        return engine
    if backend not in PROTOCOLS:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not url:
        raise BackendError(f"the {backend} backend needs the codellama.url setting (the server's base URL)")
    source = tokenizer or (model if (model / "tokenizer.model").is_file() else BUNDLED_MODEL)
    if source.suffix == ".gguf":  # the served model's own GGUF: its vocabulary, no weights
        from codellama_lsp.engine.gguf_tokenizer import load_gguf_tokenizer

        tok: TextTokenizer = load_gguf_tokenizer(source)
    else:
        tok = Tokenizer(source / "tokenizer.model" if source.is_dir() else source)
    return RemoteBackend(PROTOCOLS[backend](tok), url, tok, served_model=served_model, api_key_env=api_key_env)


__all__ = ["BACKENDS", "Backend", "BackendError", "RemoteBackend", "open_backend"]
