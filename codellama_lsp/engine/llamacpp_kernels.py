"""Which K-quant matrix kernel llama.cpp uses in this process, chosen by what this CPU was measured to do.

llama.cpp's CPU backend multiplies K-quant weights by a batch of 8 or more tokens with its
"tiled" kernel (ggml/src/ggml-cpu/tiled/tiled.cpp) and by fewer with the per-row dot
product; the two round differently. With the tiled kernel off (``GGML_CPU_TILED_MM=0``), a
token's logits are the same bits whichever batch it is in, on the AVX2 machines of earlier
runs: KV reuse is exact and lookup drafts can be checked several per pass
(``LlamaCppRunner.batch_invariant`` measures it). On other CPUs (an AVX-512 EPYC) other
kernels round a batch differently all the same, and there the switch costs prefill speed for
nothing: model-computed keystrokes were slower with it (docs/measurements.md, "Batch
invariance and llama.cpp's tiled kernel").

llama.cpp reads the switch once per process, at its first matrix product, so the answer
has to be known before a model is loaded: it is the measurement of an earlier process on
this CPU, kept in a small JSON file in the cache folder by CPU, llama.cpp build and
quantization. The first process on a machine keeps the switch off and measures; later
ones turn the tiled kernel on where that measurement said batches round differently
anyway. A value already in the environment is the user's (or a test's) and is left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from codellama_lsp import files

log = logging.getLogger("codellama_lsp.llamacpp")

SWITCH = "GGML_CPU_TILED_MM"
MEMO_FILE = "llamacpp-batch-invariance.json"
MEMO_LIMIT = 1 << 20  # a memo holds a line per CPU and build; anything bigger is not one
# Set by ``choose`` when this process's value is ours, so only a measurement made under it is kept.
_chosen: str | None = None


def cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and a digest of its feature flags (which pick llama.cpp's kernels)."""
    try:
        lines = cpuinfo.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return "unknown cpu"
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown cpu")
    flags = next((ln.split(":", 1)[1] for ln in lines if ln.startswith("flags")), "")
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return f"{name} [{digest}]"


def memo_key(llama_version: str, quantization: str, cpu: str | None = None) -> str:
    return f"{cpu or cpu_identity()} | llama-cpp-python {llama_version} | {quantization}"


def _read(memo: Path) -> dict[str, bool]:
    """The memo's measurements; a missing, unreadable or corrupt memo is none (the next ``record`` replaces it).

    Nothing in the file can stop the engine from loading: it is only a hint for the switch.
    """
    try:
        data = json.loads(files.read_regular(memo, MEMO_LIMIT)[0])
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than Python parses
        log.info("ignoring the batch-invariance memo %s, which is not readable JSON (%s); it will be replaced",
                 memo, str(exc)[:200] or type(exc).__name__)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}


def choose(memo: Path, key: str) -> bool:
    """Set the switch for this process unless it is set already; whether the tiled kernel is on.

    On only where an earlier process measured that batches round differently with it off.
    """
    global _chosen
    if SWITCH not in os.environ:
        invariant = _read(memo).get(key)
        _chosen = os.environ[SWITCH] = "1" if invariant is False else "0"
        if invariant is False:
            log.info("llama.cpp's tiled matrix kernel is on: this CPU's kernels round a batch differently "
                     "from single tokens even without it (measured earlier, %s)", memo)
    return os.environ[SWITCH] != "0"


def record(memo: Path, key: str, invariant: bool) -> None:
    """Keep a measurement made with the tiled kernel off by ``choose``; others say nothing about that setting."""
    known = _read(memo)
    if _chosen != "0" or known.get(key) is invariant:
        return
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        files.sweep(memo.parent, memo.name)  # a killed process's temporary copy
        # Whole or not at all: another server may be reading it.
        files.atomic_write(memo, (json.dumps({**known, key: invariant}, indent=1) + "\n").encode())
    except OSError as exc:  # the next process measures again
        log.debug("cannot keep the batch-invariance measurement in %s: %s", memo, exc)
