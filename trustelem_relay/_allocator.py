"""Keep the C allocator from giving large buffers back to the kernel.

The relay's buffers are large and short-lived: a 256 KiB read from a
socket, a batch of websocket frames joined for one write, 64 KiB sealed
chunks. glibc's ``malloc`` serves a block over its mmap threshold (128 KiB
at first, raised as such blocks are freed) with a fresh mapping, and hands
the free space at the heap's top back to the kernel once it passes twice
that threshold. For the agent forwarding a large answer, both happen on
nearly every read: each 4 KiB page of every such buffer is then a page
fault, and its zeroing, on the next use. Measured on a 2-core host while
the agent relayed 1 MiB answers: about 290 page faults per MiB, and the
agent's CPU fell from 4.0 to 3.1 or 3.3 ms per MiB once they were gone.

:func:`keep_large_buffers` fixes both thresholds for the process: blocks
under :data:`MMAP_THRESHOLD` come from the heap, and up to
:data:`TRIM_THRESHOLD` of free heap is kept for the next buffers. The
command-line processes (``run``, ``hub serve``) call it at start; the library
does not, as it changes the whole process (a program embedding it gets the
same from glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
variables). An operator's setting in the environment is left alone.
Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_large_buffers"]

logger = logging.getLogger("trustelem_relay")

#: Blocks smaller than this come from the heap, not a mapping of their own:
#: above the largest buffer the relay allocates on its own (a request body
#: collected whole, at most 1 MiB).
MMAP_THRESHOLD = 2 * 1024 * 1024

#: Free heap kept for later buffers before any is given back to the kernel.
TRIM_THRESHOLD = 8 * 1024 * 1024

# mallopt's parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Settings of glibc's allocator an operator may have made in the environment.
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _operator_chose(environ: Mapping[str, str]) -> bool:
    if any(name in environ for name in _OPERATOR_SETTINGS):
        return True
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def keep_large_buffers(environ: Mapping[str, str] | None = None) -> bool:
    """Set the allocator's thresholds for this process; True if they were.

    False when the C library has no ``mallopt``, refuses the settings, or
    the environment (``os.environ`` unless *environ* is given) already
    sets glibc's malloc thresholds or tunables.
    """
    if _operator_chose(os.environ if environ is None else environ):
        logger.debug("malloc thresholds left as the environment sets them")
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; musl's returns 0 and does nothing.
    trimmed: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    mapped: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return trimmed and mapped
