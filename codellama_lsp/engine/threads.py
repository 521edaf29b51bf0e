"""How many CPU threads the local engine computes on: the --threads flag's count, else one per physical core.

One per physical core is what PyTorch and llama.cpp each choose by themselves; it is
counted here so that the llama.cpp engine can be sized without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path

_chosen: int | None = None


def use(n: int | None) -> None:
    """The --threads flag: ``n`` threads for every engine loaded from now on (None: the default)."""
    global _chosen
    _chosen = None if n is None else max(1, n)


def chosen() -> int | None:
    """The flag's count, if it was given."""
    return _chosen


def count() -> int:
    """The flag's count, else the physical cores this process may run on (hyperthread siblings count once)."""
    if _chosen is not None:
        return _chosen
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:  # no sysfs (macOS, Windows): count logical CPUs
            cores.add(str(cpu))
    return max(1, len(cores))
