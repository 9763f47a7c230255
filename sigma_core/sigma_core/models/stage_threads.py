"""Two independent parts of a CPU forward run at the same time, each on half of torch's intra-op threads.

Why: on one batch row, torch's ops and the scans split a map of 32-256 channels over the threads at a loss
(nano's fusion blocks ran 1.6-1.8x faster on 2 threads than on 1, where the batch-2 encoder ran 1.9x: matmuls
and depthwise convolutions with few channels, scans of few channels and 4 states that share the memory bus).
Sigma's four fusion stages are independent of each other, and stage 0 costs about what stages 1-3 together do
(each stage has 4x fewer positions and 2x more channels than the one before), so one helper thread runs stage 0
while the caller runs the rest, each single-threaded on a 2-core machine. The result is the same computation:
the same ops on the same tensors, on other threads.

Runs apart only where that is safe and the same: inference on the CPU (no gradient), at least 2 intra-op
threads, the forward not recorded (tracing, torch.compile/export, a dispatch or function mode such as
FakeTensorMode). The helper thread takes the caller's inference mode and CPU autocast state, which torch keeps
per thread. torch's intra-op thread count is per thread too (OpenMP), but ``torch.set_num_threads`` also sets
the count that threads started later begin with: a thread started while the parts run begins with the caller's
share, not its whole count.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

import torch

from ..ops.native_memory import nothing_recording
from ..tracing import being_traced

T = TypeVar("T")
U = TypeVar("U")

_helper: Optional[ThreadPoolExecutor] = None
_helper_lock = threading.Lock()
_on_helper = threading.local()  # .active: this thread is the helper (a part of its own would wait on itself)


def _forget_helper_in_child() -> None:
    # A forked child has no helper thread, only the parent's executor object: a task submitted to it never runs.
    global _helper, _helper_lock
    _helper, _helper_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper_in_child)


def _helper_thread() -> ThreadPoolExecutor:
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sigma-stage")
        return _helper


def may_run_apart(*tensors: torch.Tensor) -> bool:
    """True where ``run_apart`` would use two threads for parts that read ``tensors``: all on the CPU, no
    gradient, >= 2 intra-op threads, nothing tracing or recording the forward, not on the helper thread itself."""
    return (
        not getattr(_on_helper, "active", False)
        and torch.get_num_threads() >= 2
        and not torch.is_grad_enabled()
        and all(t.device.type == "cpu" for t in tensors)
        and not being_traced()
        and nothing_recording()
    )


def _autocast_state() -> tuple[bool, torch.dtype]:
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


def run_apart(helper_part: Callable[[], T], own_part: Callable[[], U]) -> tuple[T, U]:
    """Run ``helper_part`` on a helper thread while this thread runs ``own_part``; their results, in that order.

    With n = torch.get_num_threads() intra-op threads, the helper part runs on n // 2 and this thread's part on
    the rest; this thread has its n back on return. The parts must not depend on each other. Call only where
    ``may_run_apart`` is true. An exception in either part is raised here once both have ended (this thread's
    first). Where no thread can start (interpreter shutdown), both parts run here, one after the other.
    """
    threads = torch.get_num_threads()
    inference = torch.is_inference_mode_enabled()
    autocast_on, autocast_dtype = _autocast_state()

    def on_helper() -> T:
        _on_helper.active = True
        torch.get_num_threads()  # torch's first call on a thread sets it to the process default: let that pass first
        torch.set_num_threads(threads // 2)
        with torch.inference_mode(inference), torch.no_grad(), \
                torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_on):
            return helper_part()

    try:
        pending = _helper_thread().submit(on_helper)
    except RuntimeError:  # no new threads (the interpreter is shutting down): one part after the other, here
        return helper_part(), own_part()
    torch.set_num_threads(threads - threads // 2)
    try:
        try:
            own = own_part()
        finally:
            pending.exception()  # wait for it either way: it must not run on after this returns
        return pending.result(), own
    finally:
        torch.set_num_threads(threads)
