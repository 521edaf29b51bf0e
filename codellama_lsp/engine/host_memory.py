"""glibc's allocator, set for a server that lives long and holds large blocks that come and go.

The server's resident memory is the model, the prompt cache's budget, and an overhead that the
allocator can inflate: freed memory it keeps, per thread, in holes it cannot hand back
(docs/measurements.md, "Memory of the server"). Three calls keep it to what is in use. All are
glibc's (malloc.h); elsewhere there is nothing to call, and they do nothing.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Callable

# mallopt's parameters (malloc.h), and the size from which a block gets a mapping of its own.
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
_OWN_MAPPING_BYTES = 1 << 20


def _glibc(name: str) -> Callable[..., int]:
    """glibc's function ``name``, or one that does nothing where there is none."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return lambda *_: 0


def tune_allocator() -> None:
    """One arena for all threads, and a mapping of its own for every block of 1 MiB or more.

    * Each thread that allocates gets an arena of its own, whose freed memory stays with it: the
      loading thread's, once it has ended, and the engine's worker's, where logits come and go.
      The threads that allocate are Python's, which the GIL runs one at a time anyway, so one
      arena costs no waiting; it was 13 MB less resident with the prompt cache full. Called before
      the server starts a thread; called later, threads started after it share the arenas there are.
    * The prompt cache's copies are tens of MB each. glibc raises its mmap threshold to the largest
      mapped block freed so far, so after the first eviction such copies come from the heap, where
      the holes they leave stay resident: in a simulation of that churn with 500 MB kept, about
      100 MB more. A fixed threshold stops the raising, and each copy goes back to the OS when evicted.
    """
    _glibc("mallopt")(_M_ARENA_MAX, 1)
    _glibc("mallopt")(_M_MMAP_THRESHOLD, _OWN_MAPPING_BYTES)


def return_freed_memory() -> None:
    """Hand the freed memory in the heap's holes back to the OS (``malloc_trim``), after a load's temporaries.

    ``gguf.GGUFReader`` builds an array for every part of every vocabulary entry, and llama.cpp's
    loader reads the file's metadata into memory it frees once the model is built; freed, both stay
    resident for the server's whole life unless trimmed.
    """
    gc.collect()
    _glibc("malloc_trim")(0)
