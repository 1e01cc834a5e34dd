"""Pins glibc malloc's thresholds (and arena count) so per-request arrays reuse freed memory.

Why: a request's arrays of a few MB (a 10 s CLAP window's STFT frames and spectrum are 4 MB
each) lie above glibc's default mmap threshold (128 KiB). glibc raises that threshold by
itself, but only after a larger mmapped block happens to be freed, so a process lands in
one of two states by accident of its history: every such array a fresh mmap (about a
thousand page faults to touch it, an munmap when freed), or reuse of the heap. Measured on
the tiny CLAP pack, 2 cores, wrk at 32 connections: CLAP loaded alone, 3,300 minor page
faults per request, a fifth of the CPU in the kernel, 62 req/s; with Emotion2Vec+ loaded
too (its warm-up frees a large block), 4 faults per request, 92 req/s. Pinning the
thresholds where glibc's own adjustment ends (mmap 32 MiB, trim twice that) makes the fast
state the only one: 101 req/s with CLAP alone.

The cost is memory a quiet process keeps: up to the trim threshold of free heap per
arena instead of returning it at once. So the arenas are capped too: glibc makes up to 8
per core, one more whenever threads contend, each keeping its own free heap, and a
10-minute soak of all three endpoints with only the thresholds pinned grew by 95 MB. Python
threads allocate under the GIL, so two arenas cost little contention.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("audioserve.allocator")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 2**20
"""glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where its dynamic threshold stops."""
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
"""What glibc sets alongside a raised mmap threshold."""
ARENA_MAX = 2


def pin_malloc_thresholds() -> bool:
    """Set the thresholds through `mallopt`; False where the C library has none (musl,
    macOS), which keeps its own allocator's behaviour."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.info("no mallopt in this C library: allocator left as it is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(option, value) for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_ARENA_MAX, ARENA_MAX)))
    if not ok:
        log.warning("mallopt refused the thresholds: allocator left as it is")
    return ok
