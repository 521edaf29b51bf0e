"""How many positions the KV cache holds, and whether they fit, decided before anything is allocated.

The ``contextLength`` setting asks for a window; this module turns it into a length the model
can use and checks it against the device's memory from the checkpoint's hyperparameters alone,
so that a window that cannot fit is refused with the numbers instead of failing mid-load (or
swapping the machine to a halt). The KV cache is

    2 (keys and values) x layers x KV heads x head size x positions x bytes per element,

preallocated by both engines for the whole window. The prompt cache (engine.prompt_cache) keeps
copies of such sequences in host memory; on the CPU it shares the memory the plan checks, so
its budget is part of the plan there, and ``describe`` says how many full-length sequences it holds.

Pure functions except ``available_memory``, which asks the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from codellama_lsp.engine.config import CheckpointError, ModelArgs
from codellama_lsp.generation import ACCELERATOR_CONTEXT_LENGTH, CPU_CONTEXT_LENGTH

# Code Llama (Rozière et al. 2023, "Code Llama: Open Foundation Models for Code", section 2.4)
# raised RoPE's base period from 10,000 to 1,000,000 while fine-tuning on 16,384-token sequences,
# and reports stable behaviour on inputs up to 100,000 tokens: with that base, the slowest
# rotations have not yet wrapped at 100k positions. A checkpoint with such a base may use that
# many positions even when it declares fewer.
LONG_ROPE_THETA = 1e6
LONG_ROPE_POSITIONS = 100_000


class ContextTooLong(CheckpointError):
    """The requested window exceeds what the model supports or what the device's memory holds."""


def max_context_length(args: ModelArgs) -> int:
    """The most positions ``args``'s model may be run at.

    The rule: the checkpoint's declared length (HF ``max_position_embeddings``, GGUF
    ``<arch>.context_length``; a linear RoPE scaling is already part of it), or 100,000 when
    its RoPE base is at least 1e6 and it declares fewer (Code Llama's long-context result,
    see ``LONG_ROPE_THETA``). So Code Llama's 16,384 and Qwen2.5-Coder's 32,768 both reach 100k.
    """
    declared = args.max_position_embeddings
    if args.rope_theta >= LONG_ROPE_THETA:
        return max(declared, LONG_ROPE_POSITIONS)
    return declared


def auto_context_length(args: ModelArgs, device_type: str) -> int:
    """``contextLength`` auto: 4,096 on the CPU, where prefill is the latency and a long window
    cannot be filled while the user types; 16,384 (Code Llama's training length) on a GPU. Never
    more than the model supports."""
    wanted = CPU_CONTEXT_LENGTH if device_type == "cpu" else ACCELERATOR_CONTEXT_LENGTH
    return min(wanted, max_context_length(args))


@dataclass(frozen=True)
class MemoryPlan:
    """A window and the memory it takes, as planned before loading (``codellama.status`` shows it)."""

    context_length: int
    kv_bytes: int  # the live sequence's preallocated keys and values
    weights_bytes: int  # the weights as loaded (before any quantization shrinks them)
    prompt_cache_bytes: int  # the kept sequences' budget, counted where it shares the device's memory
    available_bytes: int | None  # free on the device when planned; None: unknown, not checked
    device: str

    @property
    def bytes_per_position(self) -> int:
        return self.kv_bytes // max(1, self.context_length)

    def describe(self, prompt_cache_budget: int | None = None) -> dict[str, Any]:
        """The plan, and how many full-length sequences the prompt cache's budget (now) holds."""
        budget = self.prompt_cache_bytes if prompt_cache_budget is None else prompt_cache_budget
        return {"context_length": self.context_length, "kv_bytes": self.kv_bytes,
                "bytes_per_position": self.bytes_per_position, "weights_bytes": self.weights_bytes,
                "available_bytes": self.available_bytes, "device": self.device,
                "prompt_cache_budget_bytes": budget,
                "prompt_cache_full_sequences": budget // self.kv_bytes if self.kv_bytes else 0}


def plan_memory(args: ModelArgs, requested: int | str, device_type: str, *, kv_itemsize: int, weights_bytes: int,
                available_bytes: int | None, prompt_cache_bytes: int = 0) -> MemoryPlan:
    """The window for ``requested`` (a length or "auto") and its memory, or ``ContextTooLong``.

    An explicit length beyond ``max_context_length`` or beyond the memory is refused, naming
    the numbers; "auto" halves its length until it fits (not below 4,096), since the user asked
    for no particular window. ``prompt_cache_bytes`` counts against the memory only on the CPU,
    where the kept sequences live beside the weights.
    """
    most = max_context_length(args)
    auto = requested == "auto"
    length = auto_context_length(args, device_type) if auto else int(requested)
    if length > most:
        raise ContextTooLong(f"contextLength {length} exceeds this model's {most} positions (it declares "
                             f"{args.max_position_embeddings}, RoPE base {args.rope_theta:g}; a base of at least "
                             f"{LONG_ROPE_THETA:g} allows {LONG_ROPE_POSITIONS})")
    cache = prompt_cache_bytes if device_type == "cpu" else 0

    def plan(n: int) -> MemoryPlan:
        return MemoryPlan(n, args.kv_cache_bytes(n, kv_itemsize), weights_bytes, cache, available_bytes, device_type)

    chosen = plan(length)
    if auto:
        while not _fits(chosen) and chosen.context_length // 2 >= min(CPU_CONTEXT_LENGTH, length):
            chosen = plan(chosen.context_length // 2)
    if not _fits(chosen):
        need = chosen.kv_bytes + weights_bytes + cache
        where = "host memory" if device_type == "cpu" else f"free memory on {device_type}"
        cache_part = f" + prompt cache budget {_mib(cache)}" if cache else ""
        raise ContextTooLong(f"contextLength {chosen.context_length} needs {_mib(chosen.kv_bytes)} of KV cache "
                             f"({chosen.bytes_per_position} bytes per position) + weights {_mib(weights_bytes)}"
                             f"{cache_part} = {_mib(need)}, but {where} is {_mib(available_bytes or 0)}; "
                             f"set a smaller contextLength (or promptCacheMb)")
    return chosen


def _fits(p: MemoryPlan) -> bool:
    return p.available_bytes is None or p.kv_bytes + p.weights_bytes + p.prompt_cache_bytes <= p.available_bytes


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def available_memory(device_type: str, index: int | None = None) -> int | None:
    """Bytes free for a new model on the device: CUDA's free memory, or the host's available RAM.

    Host RAM is ``MemAvailable`` (free plus reclaimable page cache), which is what a new
    allocation can take without swapping; None where neither can be read (then nothing is refused).
    """
    if device_type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(index)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
