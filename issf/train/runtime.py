"""Process-wide CPU settings that make training fast; applied by the tasks when the network runs on the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def configure_cpu() -> None:
    """Flush denormals and keep freed tensor memory in the heap (idempotent).

    - The near-hard attention of unscaled 2048-d dot products yields denormal weights, which slow
      CPU matrix products down ~10x; flushing them to zero changes no result that matters.
    - glibc serves every block above 32 MB with its own mmap and unmaps it on free, so each new
      [snippets, 2048] activation or gradient page-faults its way in again, which costs 3-4x the
      copy or product that fills it. Without mmap, freed blocks stay in the heap and are reused,
      so the process keeps its peak memory (flat over epochs: 2.8 GB at THUMOS scale). The setting
      is process-wide; ``ISSF_HEAP_REUSE=0`` leaves glibc's defaults alone.
    """
    global _done
    if _done:
        return
    _done = True
    torch.set_flush_denormal(True)
    name = ctypes.util.find_library("c")
    if not name or os.environ.get("ISSF_HEAP_REUSE", "1") == "0":
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, -1)  # -1 reads as SIZE_MAX: never trim
    except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
        pass


def trains_on_cpu(accelerator: str) -> bool:
    """Whether Lightning's ``trainer.accelerator`` setting puts the network on the CPU."""
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                    and not (hasattr(torch, "xpu") and torch.xpu.is_available())
                                    and not torch.backends.mps.is_available())


def configure_for(accelerator: str) -> bool:
    """Apply :func:`configure_cpu` only when training or evaluating on the CPU (its settings are
    process-wide and buy nothing for a network on an accelerator); returns whether it did."""
    if not trains_on_cpu(accelerator):
        return False
    configure_cpu()
    return True
