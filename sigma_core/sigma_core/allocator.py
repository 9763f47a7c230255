"""CPU inference keeps its freed memory for the next frame instead of handing it back to the kernel (glibc malloc).

Why. At 480x640 many of the network's intermediate maps are larger than 32 MB, glibc's largest threshold for
serving an allocation from its heap: each is a fresh ``mmap`` that the kernel zero-fills page by page on first
touch, and ``munmap`` returns it when freed, so every forward pays those page faults again (the bilinear x2
upsample to 480x640 took 17.6 ms, 4x the pixels of the one before it and 17x its time). With mmap off and the
heap's top kept (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, ...)``), the second and later
forwards reuse the same pages. Threads started afterwards (the node's inference thread) share the main heap
(``M_ARENA_MAX`` 1): a thread's own arena is made of 64 MB heaps, and a map that did not fit one was still
mmapped every frame (nano in a thread: 15,000 page faults a forward instead of none). Measured on our 2-core
machine, one thread, same run: nano forward 0.81 -> 0.76 s, Sigma-T 5.61 -> 5.22 s; two threads 0.47 -> 0.43 s
and 3.12 -> 2.93 s (``benchmarks/model.py --malloc both``).

The cost: resident memory stays at the forward's peak between frames (it would reach it again on the next
frame anyway): nano 596 MB against a 583 MB peak with glibc's defaults; with image sizes that vary from frame
to frame, about as much as glibc's defaults (nano, 120 random sizes up to 560x720: 1152 MB against 1167 MB
peak). Threads that allocated before keep their own arenas, and glibc hands those arenas in turn to threads
started later (one arena is a limit on creating new ones): with 4 such threads, 1 new thread in 4 got the main
heap; with more than 8 arenas glibc has fixed its limit and ignores ``M_ARENA_MAX``. A thread on another arena
still mmaps each map above 64 MB every frame (nano at 480x640 after 20 allocating threads: 19,000 page faults
a forward, as with glibc's defaults): start such a process with ``MALLOC_ARENA_MAX=1``, or create the
Segmenter before starting threads.

Applied by :class:`sigma_core.inference.Segmenter` on the CPU (the node, sigma-predict, replay evaluation), once
per process, only where malloc is glibc's, and never over a user's own choice: with one of the parameters it
sets (or ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``) set by ``MALLOC_*`` or ``glibc.malloc.*`` in
``GLIBC_TUNABLES``, or with another allocator in the process (preloaded by ``LD_PRELOAD``, e.g. jemalloc or
tcmalloc, or linked in), it leaves malloc as it is. Other tunables and preloads (``glibc.rtld.*``, the
``LD_PRELOAD=libgomp.so.1`` of Jetson set-ups) leave malloc glibc's own, so they do not turn it off.
"""
from __future__ import annotations

import ctypes
import os
import platform
import threading

# mallopt parameters (malloc.h, mallopt(3))
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEEP_TOP = 2**31 - 1  # bytes of free heap top kept (M_TRIM_THRESHOLD takes an int)
# The malloc parameters that, set by the user, leave malloc as it is: glibc.malloc.<name> in GLIBC_TUNABLES, or
# the environment variable glibc reads for it (tunables(7)).
_USER_PARAMETERS = {"mmap_max": "MALLOC_MMAP_MAX_", "trim_threshold": "MALLOC_TRIM_THRESHOLD_",
                    "mmap_threshold": "MALLOC_MMAP_THRESHOLD_", "top_pad": "MALLOC_TOP_PAD_",
                    "arena_max": "MALLOC_ARENA_MAX"}

_lock = threading.Lock()
_state: str = ""  # what reuse_freed_memory did, once decided


def reuse_freed_memory() -> str:
    """Make glibc malloc keep freed memory for reuse (see the module docstring); idempotent and thread-safe.

    Returns what was done, for logs: ``"kept for reuse (glibc malloc)"``, or why malloc was left as it is
    (``"left as is: MALLOC_TRIM_THRESHOLD_ set"``, ``"left as is: not glibc"``, ...). Never raises.
    """
    global _state
    with _lock:
        if not _state:
            user = users_malloc_setting()
            if user:
                _state = f"left as is: {user}"
            else:
                problem = set_glibc_reuse()
                _state = f"left as is: {problem}" if problem else "kept for reuse (glibc malloc)"
        return _state


def users_malloc_setting() -> str:
    """The user's own setting of one of the parameters reuse_freed_memory sets, e.g. ``"MALLOC_ARENA_MAX set"``
    or ``"GLIBC_TUNABLES sets glibc.malloc.trim_threshold"``; "" when there is none."""
    for variable in _USER_PARAMETERS.values():
        if os.environ.get(variable):
            return f"{variable} set"
    for tunable in os.environ.get("GLIBC_TUNABLES", "").split(":"):  # name=value:name=value
        name = tunable.partition("=")[0].strip()
        if name.startswith("glibc.malloc.") and name[len("glibc.malloc."):] in _USER_PARAMETERS:
            return f"GLIBC_TUNABLES sets {name}"
    return ""


def set_glibc_reuse() -> str:
    """Turn glibc's keeping of freed memory on (mmap off, heap top kept, one arena) for the rest of the process,
    whatever the environment says. Returns "" when done, else why not.

    There is no way back: glibc ignores ``mallopt(M_ARENA_MAX, 0)`` and keeps the arena limit it has computed,
    so a process that turned this on cannot measure glibc's defaults (benchmarks compare in new processes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as err:
        return f"no mallopt ({err})"
    if not _malloc_is(libc):
        preload = os.environ.get("LD_PRELOAD", "").strip()
        return f"malloc is not glibc's (LD_PRELOAD={preload})" if preload else "malloc is not glibc's"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_TRIM_THRESHOLD, _KEEP_TOP), (_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1))
    if any(mallopt(param, value) != 1 for param, value in settings):
        return "mallopt refused"
    return ""


def _malloc_is(libc: ctypes.CDLL) -> bool:
    """Whether the process's malloc (the first one in symbol lookup order: a preloaded or linked-in allocator
    comes before libc) is libc's: mallopt tunes glibc's malloc only."""
    try:
        used = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    return used == ctypes.cast(libc.malloc, ctypes.c_void_p).value
