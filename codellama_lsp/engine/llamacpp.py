"""llama.cpp's CPU kernels as a ``Runner``: the GGUF file's quantized weights, computed in place.

Our torch engine dequantizes a GGUF to float32 and multiplies full-size matrices; llama.cpp
multiplies the quantized blocks directly, which on a CPU moves several times fewer bytes
per token (docs/measurements.md, "Engines on the CPU"). Everything about a
request (prefix reuse, chunked prefill, drafts, stops, cancellation) stays in ``Engine``;
this runner only evaluates tokens at positions and trims the KV memory, through
llama-cpp-python's low-level bindings (the C API one to one):

* one ``llama_context`` whose sequence 0 holds the cached prefix in its KV memory; a
  second sequence exists only during ``splice`` (see there);
* ``forward`` fills one reusable ``llama_batch`` per ``n_batch`` tokens (``n_outputs`` when
  every token's logits are wanted: drafts), asking for logits where the engine needs them,
  and copies them out (llama.cpp overwrites its buffer on the next decode);
* ``truncate(n)`` is ``llama_memory_seq_rm(mem, 0, n, -1)``: positions ``n..`` go, so the
  next batch's positions continue the sequence exactly where the engine thinks it ends;
* ``splice`` moves a cached block to a later (or earlier) position and computes new tokens
  in front of it (the engine's suffix reuse).

The model and context are loaded with the low-level calls rather than ``llama_cpp.Llama``,
which would also allocate its own batch, score buffer and tokenizer we never use. The
file's metadata is read by our ``GGUFReader`` (the quantization's name, the vocabulary's
special and infilling ids); only llama.cpp reads the weights. A byte-level BPE vocabulary
(Qwen2.5-Coder's) is split by llama.cpp on the copy it loads with the model, so the server
holds one copy, not two (the runner is the tokenizer's ``Splitter``; tests hold it to our
``tokenizers`` splitter); a sentencepiece one (Code Llama's) is split by ours, token-exact
with Meta's reference.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import numpy as np

from codellama_lsp.engine import llamacpp_kernels as kernels
from codellama_lsp.engine.config import CheckpointError, ModelArgs
from codellama_lsp.engine.host_memory import return_freed_memory
from codellama_lsp.engine.memory_plan import MemoryPlan, available_memory, plan_memory
from codellama_lsp.generation import PROMPT_CACHE_MB

T = TypeVar("T")

if TYPE_CHECKING:
    from codellama_lsp.engine.engine import Engine

log = logging.getLogger("codellama_lsp.llamacpp")

# ggml_log_level in the ggml.h this llama-cpp-python ships: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4,
# CONT 5 (continues the previous message: the loader's progress dots). (llama_cpp/_logger.py's
# comment still has an older numbering.) Warnings go to DEBUG too: a normal load of a
# common file warns about its vocabulary ("control-looking token ... was not control-type").
_GGML_LOG_ERROR, _GGML_LOG_CONT = 4, 5
# Bytes of one key or value element: the cache is float32 (``LlamaCppRunner._open_context`` says why).
KV_ITEMSIZE = 4


class LlamaCppError(RuntimeError):
    """llama.cpp refused a model, a context or a batch; the message says which and why."""


class _Log:
    """llama.cpp's log, quiet: its lines go to our logger at DEBUG, its errors at ERROR.

    It prints a few hundred lines per load to stderr by default, which would bury the
    server's own log. Error lines are also kept between ``start_capture`` and
    ``stop_capture``, so a failed load can say what llama.cpp said (its load functions only
    return NULL).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captured: list[str] | None = None
        self._callback: Any = None

    def install(self, llama_cpp: Any) -> None:
        """Route llama.cpp's log here (process-wide; done once, the callback must stay referenced)."""
        if self._callback is None:
            self._callback = llama_cpp.llama_log_callback(self._on_message)
            llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_message(self, level: int, text: bytes | None, _user: Any) -> None:
        if level == _GGML_LOG_CONT:
            return
        line = (text or b"").decode("utf-8", errors="replace").strip()
        if not line:
            return
        error = level == _GGML_LOG_ERROR
        log.log(logging.ERROR if error else logging.DEBUG, "%s", line)
        if error:
            with self._lock:
                if self._captured is not None:
                    self._captured.append(line)

    def start_capture(self) -> None:
        with self._lock:
            self._captured = []

    def stop_capture(self) -> str:
        """The error lines since ``start_capture``, joined."""
        with self._lock:
            lines, self._captured = self._captured or [], None
        return "; ".join(lines)


_LOG = _Log()
_BACKEND_READY = False
# llama.cpp's tiled K-quant kernel rounds differently from its per-row one: off by default,
# so that every batch size gives the same bits; ``open_llamacpp`` turns it on where this CPU
# was measured to round a batch differently anyway (codellama_lsp.engine.llamacpp_kernels).
INVARIANCE_TOKENS = 16  # tokens of the batch-invariance check (LlamaCppRunner.batch_invariant)


def _bindings() -> Any:
    """llama-cpp-python's ``llama_cpp`` module, with its log routed to ours and the backend initialised."""
    global _BACKEND_READY
    os.environ.setdefault(kernels.SWITCH, "0")
    try:
        import llama_cpp
    except ImportError as exc:
        raise CheckpointError("the llamacpp engine needs llama-cpp-python (pip install llama-cpp-python): "
                              f"{exc}") from None
    _LOG.install(llama_cpp)
    if not _BACKEND_READY:
        llama_cpp.llama_backend_init()
        _BACKEND_READY = True
    return llama_cpp


def _installed_version() -> str:
    """llama-cpp-python's version, read without importing it (the import is ``_bindings``'s)."""
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_advertises_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU reports Intel AMX (``amx_int8``), whose llama.cpp kernels may be unusable.

    llama.cpp puts Q4_K/Q6_K/Q8_0 weights in its AMX buffer when the CPU reports AMX; on
    this project's machines (Sapphire Rapids VM guests) the first decode then dies of
    SIGILL at ``tilezero`` (the kernel's log: "trap invalid opcode ... in libggml-cpu"),
    taking the server with it, although the CPU flags and arch_prctl say AMX is there. The
    other extra buffer (weights repacked for AVX2/AVX-512 kernels) shares its switch,
    ``use_extra_bufts``, so on such a CPU both are off.
    """
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_int8" in line.split() for line in text.splitlines())


def quantization_name(file_type: int | None) -> str:
    """``general.file_type`` as llama.cpp names it ("Q4_K_M", "F16"), for codellama.status."""
    import gguf

    if file_type is None:
        return "unknown"
    try:
        return gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file type {file_type}"


def on_passing_thread(fn: Callable[[], T]) -> T:
    """``fn()`` computed on a new thread that ends with it.

    llama.cpp's CPU backend computes on an OpenMP team, one per thread that calls
    ``llama_decode``, and the team lives as long as that thread. With more of libgomp's
    threads alive than CPUs, its barriers stop spinning and sleep, and a graph has hundreds
    of them: the engine's worker decoded a third slower while the thread that loaded the
    model, having computed a check, was still alive (docs/measurements.md, "llama.cpp on one
    thread"). So anything computed outside the engine's worker ends with its thread.
    """
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            box.append((False, exc))

    thread = threading.Thread(target=run, name="codellama-llamacpp-check")
    thread.start()
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


class LlamaCppRunner:
    """One GGUF model and one KV-cached sequence in llama.cpp, evaluated token by token on the CPU."""

    kind = "llamacpp"

    def __init__(self, gguf_path: str | Path, context_length: int, threads: int, *, n_batch: int = 512,
                 n_outputs: int = 32, file_type: int | None = None, extra_buffers: bool | None = None) -> None:
        """Load ``gguf_path`` (weights memory-mapped) with a ``context_length``-position context on ``threads`` threads.

        ``file_type`` is the file's ``general.file_type`` when the caller has read its
        metadata already (it has, for the tokenizer); else it is asked of llama.cpp.
        ``n_batch`` tokens go in one decode; ``n_outputs`` rows of logits come out of one
        (the engine needs 1 + its draft tokens). ``extra_buffers`` lets llama.cpp repack
        weights for its AMX/AVX kernels; None: unless the CPU reports AMX (see
        ``cpu_advertises_amx``).
        """
        self._lib = lib = _bindings()
        path = Path(gguf_path)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist or is not a file")
        self.device = "cpu"
        self.preferred_format: str | None = None  # a GGUF declares no infilling layout: PSM
        self._model = self._ctx = self._vocab = None
        self._batch: Any = None
        # The model (and its vocabulary) is freed only while no text is being split with it: the
        # engine closes on a thread of its own, and the server splits text on its event loop.
        self._splitting = threading.Lock()

        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0  # the CPU is what this engine is for; a GPU goes to the torch engine
        params.use_extra_bufts = not cpu_advertises_amx() if extra_buffers is None else extra_buffers
        _LOG.start_capture()
        try:
            self._model = lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
        finally:
            said = _LOG.stop_capture()
        if not self._model:
            raise CheckpointError(f"llama.cpp cannot load {path}: {said or 'no reason given'}")
        try:
            self._open_context(path, context_length, threads, n_batch, n_outputs)
            if file_type is None:
                meta = self._meta("general.file_type")
                file_type = int(meta) if meta and meta.isdigit() else None
            self.dtype = quantization_name(file_type)
        except BaseException:
            self.close()
            raise

    def _open_context(self, path: Path, context_length: int, threads: int, n_batch: int, n_outputs: int) -> None:
        lib = self._lib
        # As given, also past the file's trained length: the caller planned it (engine.memory_plan).
        n_ctx = max(1, context_length)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = self.n_batch = max(1, min(n_batch, n_ctx))
        # Sequence 1 is splice's scratch; in one unified KV buffer a cell can belong to both
        # sequences, so copying between them moves no data and the context is not split.
        cparams.n_seq_max, cparams.kv_unified = 2, True
        # Rows of logits one decode may return: llama.cpp reserves room for n_batch of them by
        # default (512 x 152k floats: 300 MB here); the engine asks for 1 + its draft tokens.
        # forward splits a longer all-logits call (llama.cpp aborts the process past this).
        cparams.n_outputs_max = self.n_outputs = min(self.n_batch, n_outputs)
        cparams.n_threads = cparams.n_threads_batch = max(1, threads)
        # Attention without flash attention and with a float32 KV cache: the one setup measured here
        # that is both fast on an editor's requests and batch-invariant. llama.cpp's "auto" turns
        # flash attention on, whose CPU kernel made a keystroke's prefill slower, and an f16 cache
        # makes a token's logits depend on its batch, so KV reuse and drafts could change greedy
        # text; with f32 keys and values they do not (docs/measurements.md, "llama.cpp's attention").
        # The cost: twice the KV memory (100 MB at 4096 positions for Qwen2.5-Coder-0.5B, 4.3 GB
        # for CodeLlama-7B).
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.type_k = cparams.type_v = lib.GGML_TYPE_F32  # KV_ITEMSIZE bytes an element
        cparams.no_perf = True
        _LOG.start_capture()
        try:
            self._ctx = lib.llama_init_from_model(self._model, cparams)
        finally:
            said = _LOG.stop_capture()
        if not self._ctx:
            raise CheckpointError(f"llama.cpp cannot make a {n_ctx}-token context for {path}: "
                                  f"{said or 'no reason given'}")
        self.context_length = min(n_ctx, lib.llama_n_ctx(self._ctx))
        self._memory = lib.llama_get_memory(self._ctx)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    def forward(self, tokens: list[int], start: int, last_only: bool) -> np.ndarray:
        """Logits (float32 [rows, vocab], ours to keep) after each of ``tokens`` at positions ``start..``, or after the last one."""
        if not tokens:
            raise ValueError("forward needs at least one token")
        if self._ctx is None:
            raise LlamaCppError("the llama.cpp runner is closed")
        rows: list[np.ndarray] = []
        step = self.n_batch if last_only else self.n_outputs
        for at in range(0, len(tokens), step):
            part = tokens[at:at + step]
            if not last_only:
                rows.append(self._decode(part, start + at, True))
            elif at + len(part) == len(tokens):
                rows.append(self._decode(part, start + at, False))
            else:  # earlier parts of a last_only call need no logits at all
                self._decode(part, start + at, None)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def _decode(self, tokens: list[int], start: int, want_all: bool | None, seq: int = 0) -> np.ndarray:
        """One llama_decode of ``tokens`` in sequence ``seq``; logits of every token (True), the last (False), or none (None)."""
        lib, b, n = self._lib, self._batch, len(tokens)
        for i, tok in enumerate(tokens):
            b.token[i] = tok
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = bool(want_all)
        if want_all is False:
            b.logits[n - 1] = True
        b.n_tokens = n
        status = lib.llama_decode(self._ctx, b)
        if status != 0:
            raise LlamaCppError(self._decode_error(status, n, start))
        if want_all is None:
            return np.empty((0, self.n_vocab), np.float32)
        if want_all:
            ptr, count = lib.llama_get_logits(self._ctx), n
        else:
            ptr, count = lib.llama_get_logits_ith(self._ctx, -1), 1
        if not ptr:
            raise LlamaCppError(f"llama.cpp returned no logits for {n} tokens at position {start}")
        # A copy: the buffer belongs to llama.cpp and the next decode overwrites it.
        return np.ctypeslib.as_array(ptr, shape=(count, self.n_vocab)).copy()

    def _decode_error(self, status: int, n: int, start: int) -> str:
        """What llama_decode's status means (llama.h), for an error a user or developer can act on."""
        where = f"llama_decode of {n} tokens at positions {start}..{start + n - 1} failed with status {status}"
        if status == 1:
            return f"{where}: no room in the {self.context_length}-token KV memory"
        if status == 2:
            return f"{where}: aborted"
        if status == -1:
            return (f"{where}: invalid batch (positions must continue the cached sequence; "
                    f"token ids below {self.n_vocab})")
        return f"{where}: fatal error in llama.cpp"

    @functools.cached_property
    def batch_invariant(self) -> bool:
        """Whether this CPU's kernels give a token the same logits computed alone and in a batch.

        Measured once, in the scratch sequence 1 (the cached sequence 0 is left alone): the last
        logits after ``INVARIANCE_TOKENS`` tokens computed in one decode, in two of uneven sizes,
        and one decode per token. llama.cpp picks its matrix kernels by CPU and batch size
        (weights repacked for AVX2/AVX-512 take multiples of 4 rows, the rest go row by row),
        and on some CPUs they round differently: on an AVX-512 EPYC nearly every position
        differed, by enough to change a greedy token, while the AVX2 machines of earlier runs gave
        the same bits (docs/measurements.md, "Batch invariance and llama.cpp's tiled kernel").
        Where a batch rounds differently, checking drafts in one pass is not decoding them
        one by one, so the engine then checks none (``open_llamacpp``).

        It computes on a thread of its own that ends with it (``on_passing_thread``).
        """
        if self._ctx is None:
            raise LlamaCppError("the llama.cpp runner is closed")
        return on_passing_thread(self._same_in_any_batch)

    def _same_in_any_batch(self) -> bool:
        tokens = [(7919 * i) % self.n_vocab for i in range(1, INVARIANCE_TOKENS + 1)]
        split = INVARIANCE_TOKENS // 3
        lasts = []
        for batches in ([tokens], [tokens[:split], tokens[split:]], [[t] for t in tokens]):
            try:
                at = 0
                for b in batches:
                    row = self._decode(b, at, False, seq=1)
                    at += len(b)
                lasts.append(row)
            finally:
                self._lib.llama_memory_seq_rm(self._memory, 1, -1, -1)
        return all(np.array_equal(lasts[0], x) for x in lasts[1:])

    def truncate(self, n: int) -> None:
        """Drop positions ``n..`` of sequence 0 from the KV memory: a new prefix's stale tail, or rejected drafts."""
        if self._ctx is None:
            return
        if not self._lib.llama_memory_seq_rm(self._memory, 0, max(0, n), -1):
            raise LlamaCppError(f"llama.cpp could not drop KV positions from {n} on")

    def save(self) -> tuple[np.ndarray, int]:
        """Sequence 0's cells (``llama_state_seq_get_data``): the host-memory copy the prompt cache keeps."""
        if self._ctx is None:
            raise LlamaCppError("the llama.cpp runner is closed")
        lib = self._lib
        state = np.empty(lib.llama_state_seq_get_size(self._ctx, 0), dtype=np.uint8)
        written = lib.llama_state_seq_get_data(self._ctx, state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                               state.nbytes, 0)
        if written != state.nbytes:
            raise LlamaCppError(f"llama.cpp copied {written} of the KV sequence's {state.nbytes} bytes")
        return state, state.nbytes

    def restore(self, state: np.ndarray) -> None:
        """Sequence 0 becomes the copy ``save`` made (``llama_state_seq_set_data``), in whatever cells are free."""
        if self._ctx is None:
            raise LlamaCppError("the llama.cpp runner is closed")
        lib = self._lib
        lib.llama_memory_seq_rm(self._memory, 0, -1, -1)
        read = lib.llama_state_seq_set_data(self._ctx, state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                            state.nbytes, 0)
        if read == 0:
            raise LlamaCppError(f"llama.cpp could not restore a {state.nbytes}-byte KV sequence")

    def splice(self, keep: int, start: int, end: int, delta: int, tokens: list[int]) -> None:
        """Keep positions ``..keep`` and the block ``start..end-1`` moved ``delta`` on; ``tokens`` go in between.

        llama.cpp shifts the block's cells and re-rotates their keys itself (``seq_add``). It
        accepts a batch only at the position after a sequence's last cell, which the moved
        block now holds, so the new tokens are computed in sequence 1, a copy of the kept
        prefix, and their cells then join sequence 0. They see the prefix only, as causal
        attention has it; sequence 1 is emptied again.
        """
        if self._ctx is None:
            raise LlamaCppError("the llama.cpp runner is closed")
        lib, mem = self._lib, self._memory
        lib.llama_memory_seq_rm(mem, 0, end, -1)
        if start > keep:
            lib.llama_memory_seq_rm(mem, 0, keep, start)
        if delta:
            lib.llama_memory_seq_add(mem, 0, start, end, delta)
        if not tokens:
            return
        lib.llama_memory_seq_cp(mem, 0, 1, 0, keep)
        try:
            for at in range(0, len(tokens), self.n_batch):
                self._decode(tokens[at:at + self.n_batch], keep + at, None, seq=1)
            lib.llama_memory_seq_cp(mem, 1, 0, keep, keep + len(tokens))
        finally:
            lib.llama_memory_seq_rm(mem, 1, -1, -1)

    def close(self) -> None:
        """Free the batch, the context (its KV memory) and the model; safe to call twice."""
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
        self._ctx = None
        with self._splitting:
            if self._model:
                lib.llama_model_free(self._model)
            self._model = self._vocab = None

    # --- the ``gguf_tokenizer.Splitter`` of a BPE vocabulary, on llama.cpp's copy of it ---------------

    def encode(self, text: str) -> list[int]:
        with self._splitting:
            return tokenize(self._lib, self._live_vocab(), text)

    def decode(self, ids: list[int]) -> str:
        with self._splitting:
            return detokenize(self._lib, self._live_vocab(), ids)

    def token_text(self, token_id: int) -> str:
        with self._splitting:
            text = self._lib.llama_vocab_get_text(self._live_vocab(), token_id)
        return (text or b"").decode("utf-8", errors="replace")

    def _live_vocab(self) -> Any:
        if self._vocab is None:
            raise LlamaCppError("the llama.cpp runner is closed")
        return self._vocab

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn the bindings down
            pass


def tokenize(lib: Any, vocab: Any, text: str) -> list[int]:
    """``llama_tokenize`` without BOS and with control-token text kept as text (``parse_special``
    off; user-defined tokens still match), as ``gguf_tokenizer.HfSplitter`` splits it."""
    data = text.encode("utf-8")
    room = len(data) + 1  # a byte-level BPE token covers at least one byte
    ids = (ctypes.c_int32 * room)()
    n = lib.llama_tokenize(vocab, data, len(data), ids, room, False, False)
    if n < 0:
        raise LlamaCppError(f"llama.cpp split {len(data)} bytes into more than {room} tokens")
    return ids[:n]


def detokenize(lib: Any, vocab: Any, ids: list[int]) -> str:
    """The ids' pieces (``llama_token_to_piece``) end to end, undecodable bytes replaced by U+FFFD.

    Not ``llama_detokenize``: for some vocabularies (gpt-2, starcoder) it also takes spaces out
    before punctuation (``a ? b`` -> ``a? b``), which would change the user's code. ``ids`` hold
    no special ids (the tokenizer drops them); an unused id (a GGUF's padding entry,
    ``[PAD151665]``) has no text.
    """
    out, buf = bytearray(), ctypes.create_string_buffer(64)
    for i in ids:
        n = lib.llama_token_to_piece(vocab, i, buf, len(buf), 0, True)
        if n < 0:  # a longer piece: -n bytes
            buf = ctypes.create_string_buffer(-n)
            n = lib.llama_token_to_piece(vocab, i, buf, len(buf), 0, True)
        out += buf.raw[:n]
    return out.decode("utf-8", errors="replace")


def plan_llamacpp(args: ModelArgs, path: Path, context_length: int | str, prompt_cache_bytes: int) -> MemoryPlan:
    """The window's memory in host RAM: the float32 KV cache (``_open_context`` says why float32)
    beside the file's weights, which llama.cpp maps and reads in whole."""
    return plan_memory(args, context_length, "cpu", kv_itemsize=KV_ITEMSIZE,
                       weights_bytes=path.stat().st_size, available_bytes=available_memory("cpu"),
                       prompt_cache_bytes=prompt_cache_bytes)


def open_llamacpp(path: str | Path, context_length: int | str, threads: int, **options: Any) -> "Engine":
    """An ``Engine`` on llama.cpp for the GGUF at ``path``; ``options`` are ``Engine``'s (reuse, draft_tokens, ...).

    Unless ``draft_tokens`` is given, drafts are on only where the runner is batch-invariant.
    The tiled matrix kernel is on where an earlier process measured that it is not, with the
    kernel off (``llamacpp_kernels``); the first process on a CPU measures and keeps the answer.

    The file's metadata is read once, by our ``GGUFReader``: the tokenizer and the
    quantization's name come from it, and llama.cpp reads the weights. The reader is opened
    first so a missing or malformed file gets our CheckpointError, naming the problem.
    """
    from codellama_lsp.engine.default_model import cache_dir
    from codellama_lsp.engine.engine import DRAFT_TOKENS, PREFILL_CHUNK, Engine
    from codellama_lsp.engine.gguf_file import open_gguf, window_args
    from codellama_lsp.engine.gguf_tokenizer import GgufBpeTokenizer, load_gguf_tokenizer, read_bpe_vocabulary

    file = Path(path)
    reader = open_gguf(file)
    memory = plan_llamacpp(window_args(reader, file), file, context_length,
                           options.get("prompt_cache_bytes", PROMPT_CACHE_MB << 20))
    field = reader.get_field("general.file_type")
    file_type = int(field.contents()) if field is not None else None
    memo = cache_dir() / kernels.MEMO_FILE
    key = kernels.memo_key(_installed_version(), quantization_name(file_type))
    tiled = kernels.choose(memo, key)  # before llama-cpp-python is loaded: it sets the switch's default
    # A BPE vocabulary is split by llama.cpp, on the copy it loads with the model: only its ids
    # and special tokens are read here. A sentencepiece one (Code Llama's) stays ours, token-exact
    # with Meta's reference, and small.
    vocabulary = read_bpe_vocabulary(reader)
    sentencepiece = load_gguf_tokenizer(reader) if vocabulary is None else None
    del reader, field
    # llama.cpp is loaded only once the reader's heap is handed back: its allocations would pin
    # the freed pages otherwise.
    return_freed_memory()
    _bindings()
    # llama.cpp sizes its compute buffers for n_batch tokens; the engine sends at most a prefill
    # chunk, so a larger batch would only hold memory (17 MB more at 512; docs/measurements.md,
    # "Memory of the server").
    # Rows of logits: one decode returns at most 1 + the draft tokens (19 MB of buffer at 32 rows).
    runner = LlamaCppRunner(path, memory.context_length, threads, file_type=file_type,
                            n_batch=options.get("prefill_chunk", PREFILL_CHUNK),
                            n_outputs=1 + options.get("draft_tokens", DRAFT_TOKENS))
    tokenizer = sentencepiece if vocabulary is None else GgufBpeTokenizer(vocabulary, runner)
    if not tiled:
        kernels.record(memo, key, runner.batch_invariant)
    return_freed_memory()  # llama.cpp's loader's temporaries: 6 MB
    if "draft_tokens" not in options and not runner.batch_invariant:
        log.info("llama.cpp's kernels on this CPU round a token differently alone and in a batch, "
                 "so lookup drafts are off: checking them in one pass could change the greedy text")
        options["draft_tokens"] = 0
    return Engine(runner, tokenizer, memory=memory, **options)
