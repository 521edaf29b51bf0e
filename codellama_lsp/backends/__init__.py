"""Where generation happens: the resident local engine (the default) or an inference server.

codellama-lsp keeps the editor-side work (documents, context windows, the token-exact
prompt, cancellation, post-processing, caches) and hands a ``GenerationRequest`` to a
``Backend``. The local ``Engine`` is one; ``RemoteBackend`` sends the same request to
vLLM, TGI, llama.cpp, Ollama or any OpenAI-compatible server, so a team can serve one
large model from a GPU box to many editors.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from codellama_lsp import BUNDLED_MODEL
from codellama_lsp.engine import threads as cpu_threads
from codellama_lsp.engine.tokenizer import Tokenizer
from codellama_lsp.generation import PROMPT_CACHE_MB, Backend, TextTokenizer
from codellama_lsp.backends.errors import BackendError
from codellama_lsp.backends.wire import PROTOCOLS
from codellama_lsp.settings import BACKEND_CHOICES, ENGINE_CHOICES

log = logging.getLogger("codellama_lsp")

# Setting value -> what serves completions. "local" is the in-process engine.
BACKENDS = BACKEND_CHOICES  # tests/test_backends.py checks these are "local" and the protocols of wire.py
# What computes for the local backend: our PyTorch model, or llama.cpp's kernels on a GGUF file.
#
# "auto" is llama.cpp for a .gguf file on the CPU. Decoding is memory-bound, and llama.cpp reads
# the file's 4.5-bit blocks where the torch engine reads dequantized 32-bit weights, so it decodes
# several times faster in a quarter of the memory, at about the same prefill speed
# (docs/measurements.md, "Engines on the CPU"). An editor's requests reuse all but a few prompt
# tokens and then decode tens, so decode speed is what a user waits for. llama.cpp's tiled K-quant
# kernel rounds differently from its per-row one, so it is off where that makes reuse and drafts
# exact (engine.llamacpp_kernels); its repacked-weight buffers are off on a CPU that reports AMX
# (engine.llamacpp.cpu_advertises_amx). A GPU, or a checkpoint that is not GGUF, goes to torch; so
# does an explicit dtype, compile or quantize, which only torch honours.
ENGINES = ENGINE_CHOICES


def choose_engine(engine: str, model: Path, device: str = "auto", dtype: str = "auto", compile: str = "auto",
                  quantize: str = "auto") -> str:
    """What ``engine`` means for ``model`` on ``device``: "torch" or "llamacpp"; a BackendError if it cannot run."""
    gguf = model.suffix.lower() == ".gguf"
    # Settings only the torch engine honours, where they are not "auto".
    torch_only = [f"{name} {value}" for name, value in (("dtype", dtype), ("compile", compile), ("quantize", quantize))
                  if value != "auto"]
    if engine == "torch":
        return "torch"
    if engine == "llamacpp":
        if not gguf:
            raise BackendError(f"the llamacpp engine runs .gguf files, and {model} is not one; "
                               "use engine torch or auto")
        if device not in ("auto", "cpu"):
            raise BackendError(f"the llamacpp engine runs on the CPU, not device {device}; use engine torch for a GPU")
        if torch_only:
            raise BackendError(f"the llamacpp engine computes in the file's own quantization; {', '.join(torch_only)} "
                               "is for engine torch (set it to auto)")
        return "llamacpp"
    if engine != "auto":
        raise BackendError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if not gguf or torch_only or device not in ("auto", "cpu"):
        return "torch"
    if device == "auto" and _gpu_for_torch():
        return "torch"
    if importlib.util.find_spec("llama_cpp") is None:
        log.info("engine auto: llama-cpp-python is not installed, so %s runs on the torch engine "
                 "(pip install llama-cpp-python for the faster llamacpp engine)", model)
        return "torch"
    return "llamacpp"


def _gpu_for_torch() -> bool:
    """Whether PyTorch can compute on a GPU here; torch is imported only where a GPU driver is present.

    Importing torch holds resident memory the llama.cpp engine never uses (docs/measurements.md,
    "Memory of the server"), so a machine without NVIDIA's or AMD's GPU driver is answered without it.
    """
    driver = (Path("/proc/driver/nvidia/version").exists() or Path("/dev/kfd").exists()
              or shutil.which("nvidia-smi") is not None)
    if not driver or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def open_backend(backend: str, model: Path, *, device: str = "auto", dtype: str = "auto", context_length: int | str = "auto",
                 url: str | None = None, served_model: str | None = None, tokenizer: Path | None = None,
                 api_key_env: str | None = None, engine: str = "auto", threads: int | None = None, compile: str = "auto",
                 quantize: str = "auto", reuse_suffix: bool = False, prompt_cache_mb: int = PROMPT_CACHE_MB) -> Backend:
    """Load the local engine from ``model``, or connect to the server at ``url``.

    The local engine is the one ``choose_engine`` picks; ``compile`` and ``quantize`` are the
    torch engine's (see ``Engine.load``). Either engine runs on ``threads`` CPU threads;
    None: the --threads flag's count, else one per physical core (``engine.threads``). ``reuse_suffix`` is the engine's option of that name.
    ``context_length`` is the window (a length or "auto"), planned with the ``prompt_cache_mb``
    budget in the device's memory before loading (engine.memory_plan); a remote backend takes
    a length as the server's window, which its budgets are cut to, and "auto" as the window the
    server says it has (``RemoteBackend.ask_window``), or no limit of ours where it says none.

    A remote backend never loads weights, but it needs the served model's tokenizer to
    build the prompt and size the context window: ``tokenizer`` (a ``tokenizer.model``, a
    directory holding one, or a .gguf file), else ``model`` when it is such a directory or a
    .gguf file here (the served model's own vocabulary and family), else the bundled
    model's, whose infilling pieces have the same text as Code Llama's.
    """
    if backend == "local":
        # llama-cpp-python, or torch, is imported only when its engine is used
        threads = threads or cpu_threads.chosen()
        if choose_engine(engine, model, device, dtype, compile, quantize) == "llamacpp":
            from codellama_lsp.engine.llamacpp import open_llamacpp

            return open_llamacpp(model, context_length, threads or cpu_threads.count(), reuse_suffix=reuse_suffix,
                                 prompt_cache_bytes=prompt_cache_mb << 20)
        from codellama_lsp.engine.engine import Engine

        if threads is not None:
            import torch

            torch.set_num_threads(threads)

        return Engine.load(model, device=device, dtype=None if dtype == "auto" else dtype,
                           context_length=context_length, compile=compile, quantize=quantize, reuse_suffix=reuse_suffix,
                           prompt_cache_bytes=prompt_cache_mb << 20)
    if backend not in PROTOCOLS:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not url:
        raise BackendError(f"the {backend} backend needs the codellama.url setting (the server's base URL)")
    own = (model.suffix == ".gguf" and model.is_file()) or (model / "tokenizer.model").is_file()
    source = tokenizer or (model if own else BUNDLED_MODEL)
    if source.suffix == ".gguf":  # the served model's own GGUF: its vocabulary, no weights
        from codellama_lsp.engine.gguf_tokenizer import load_gguf_tokenizer

        tok: TextTokenizer = load_gguf_tokenizer(source)
    else:
        tok = Tokenizer(source / "tokenizer.model" if source.is_dir() else source)
    from codellama_lsp.backends.remote import RemoteBackend  # httpx is imported only when a remote backend is used

    remote = RemoteBackend(PROTOCOLS[backend](tok), url, tok, served_model=served_model, api_key_env=api_key_env,
                           context_length=context_length if isinstance(context_length, int) else None)
    if remote.context_length is None and (said := remote.ask_window()) is not None:
        remote.context_length = said[0]
        log.info("the %s server's window: %d tokens (%s)", backend, *said)
    return remote


__all__ = ["BACKENDS", "ENGINES", "Backend", "BackendError", "choose_engine", "open_backend"]
