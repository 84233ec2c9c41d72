"""Keep glibc from returning large tensor buffers to the OS after every use.

With glibc's defaults, every buffer over the (dynamic) mmap threshold is a fresh mmap, so each forward pass
of a model on CPU page-faults its activations in again: on the evaluation benchmark's DT-size policy that was
~30 % of the forward time. Raising the mmap and trim thresholds keeps freed buffers in the heap for reuse —
the effect PyTorch's CPU tuning guide gets from preloading jemalloc or tcmalloc, without a preload.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit hosts; larger requests are refused
_TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory_for_reuse() -> bool:
    """Returns whether the allocator was tuned (False off glibc, e.g. macOS or musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
