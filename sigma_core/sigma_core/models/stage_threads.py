"""Two parts of a CPU forward run at the same time, each on half of torch's intra-op threads.

Why: on one batch row, torch's ops and the scans split a map of 32-256 channels over the threads at a loss
(nano's fusion blocks ran 1.6-1.8x faster on 2 threads than on 1, where the batch-2 encoder ran 1.9x: matmuls
and depthwise convolutions with few channels, scans of few channels and 4 states that share the memory bus).
In Sigma, the two modalities' encoder passes are independent, the four fusion stages too, and the decoder needs
fused map i only at its stage 2 - i, so they run as two parts each (``Sigma._forward_apart``), each part
single-threaded on a 2-core machine: the same ops on the same tensors, on other threads (an op's result can differ
in its last bits, as it does between thread counts). A part hands a result that the other needs mid-way over
with ``hand_over``.

One part runs on a helper thread of the calling thread's own (kept while it lives: no two callers wait on each
other's parts), the other on the calling thread, each with its share of the threads (``torch.set_num_threads``,
per thread); the caller has its count back on return. The helper takes the caller's inference mode and CPU
autocast state, which torch keeps per thread too; it was started by the caller, with the caller's floating-point
state then (``torch.set_flush_denormal``, per thread, is not read back: set it before the first forward).
``torch.set_num_threads`` also sets the count that threads begin with on their first torch call: that default is
put back to the caller's count at once, by a thread kept for it (a thread whose first torch call falls in those
microseconds begins with a share), and is the caller's count on return (where another thread had set another
count since, that one is replaced).

Measured on our 2-core machine, nano at 480x640 on 2 threads (same run, min of 9): the part on the calling thread
took 3.5 ms less than on a second helper while the caller waits (168.3 against 171.9 ms a forward).

Runs apart only where that is safe and the same: inference on the CPU (no gradient) on plain tensors, at least 2
intra-op threads, nothing tracing, recording, transforming or profiling the forward (torch.compile/export,
jit.trace, a dispatch or function mode such as FakeTensorMode, torch.func's vmap or jvp, torch.profiler: torch
keeps these per thread, so the helper's part would run outside them), not on a helper thread itself, and (for the
caller to check with ``hooks_or_training_on``) no forward hook on the modules that would run apart (it would see
them on two threads, in a changing order) and none of them in training mode (random draws would interleave
between the threads).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

import torch
from torch.nn.modules import module as nn_module  # its global hook tables (torch 2.x; absent: none)

from ..ops.native_memory import readable_in_place
from ..tracing import being_traced

T = TypeVar("T")
U = TypeVar("U")

# torch's private profiler flag and functorch transform level (torch 2.x; a torch without them is taken as not
# profiling, and as having no transforms)
_PROFILING = getattr(getattr(torch._C, "_autograd", None), "_profiler_enabled", lambda: False)
_FUNCTORCH_LEVEL = getattr(getattr(torch._C, "_functorch", None), "maybe_current_level", lambda: None)


class _ThreadState(threading.local):
    def __init__(self):
        self.helper: Optional[ThreadPoolExecutor] = None
        self.is_helper = False


_state = _ThreadState()  # per thread: its helper; whether it is a helper itself
_default_keeper: Optional[ThreadPoolExecutor] = None
_keeper_lock = threading.Lock()


def _forget_threads_in_child() -> None:
    # A forked child has none of the parent's threads, only its executor objects: a task handed to one never runs.
    global _state, _default_keeper, _keeper_lock
    _state, _default_keeper, _keeper_lock = _ThreadState(), None, threading.Lock()


os.register_at_fork(after_in_child=_forget_threads_in_child)


def _helper() -> ThreadPoolExecutor:
    # The executor's thread ends when the executor is collected, with the calling thread's state.
    if _state.helper is None:
        _state.helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sigma-stage")
    return _state.helper


def _keep_default(threads: int, kept: list) -> None:
    """Put torch's default thread count (what threads begin with) back to ``threads`` without touching this thread's
    count: torch.set_num_threads sets both, so a thread that runs nothing else calls it. Its future goes in ``kept``
    (run_apart waits for it: it must not land after the caller's own later setting)."""
    global _default_keeper
    with _keeper_lock:
        if _default_keeper is None:
            _default_keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sigma-thread-default")
        try:
            kept.append(_default_keeper.submit(torch.set_num_threads, threads))
        except RuntimeError:  # interpreter shutdown: run_apart's caller puts it back when the parts end
            pass


def may_run_apart(*tensors: torch.Tensor) -> bool:
    """True where ``run_apart`` would use two threads for parts that read ``tensors``: plain CPU tensors (no subclass,
    functorch wrapper or forward-mode tangent: ``readable_in_place``), no gradient, >= 2 intra-op threads, nothing
    tracing, recording, transforming (torch.func's vmap, jvp, ...) or profiling the forward, not on a helper.
    (torch keeps transforms, modes and the profiler per thread: the helper's part would run outside them.)"""
    return (
        not _state.is_helper
        and torch.get_num_threads() >= 2
        and not torch.is_grad_enabled()
        and readable_in_place(*tensors)
        and _FUNCTORCH_LEVEL() is None
        and not being_traced()
        and not _PROFILING()
    )


def hooks_or_training_on(*modules: torch.nn.Module) -> bool:
    """True where a forward hook or pre-hook would see ``modules`` or their submodules run (one of their own, or a
    hook on every module: ``torch.nn.modules.module.register_module_forward_hook``), or where one of them is in
    training mode (its random draws, such as DropPath's, would interleave between the threads)."""
    if getattr(nn_module, "_global_forward_hooks", None) or getattr(nn_module, "_global_forward_pre_hooks", None):
        return True
    # One walk over the module tree, on every forward: Module.modules() took 160 us a pass for nano, this 60 us.
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module.training or module._forward_hooks or module._forward_pre_hooks:
            return True
        pending.extend(sub for sub in module._modules.values() if sub is not None)
    return False


def _autocast_state() -> tuple[bool, torch.dtype]:
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


def _wait_for(future: Future) -> None:
    # Ctrl-C while waiting: still wait (a part takes milliseconds), so that nothing runs on after the call returns.
    interrupted = None
    while True:
        try:
            future.exception()
            break
        except KeyboardInterrupt as err:
            interrupted = err
    if interrupted is not None:
        raise interrupted


def hand_over(step: Callable[[], T], to: Future) -> T:
    """Run ``step`` (a part's first step) and give its result, or its exception, to ``to`` as well: the other part
    waits there (``to.result()``) for what it needs before this part ends, and never waits in vain."""
    try:
        result = step()
    except BaseException as err:
        to.set_exception(err)
        raise
    to.set_result(result)
    return result


def _fail_if_pending(handed: Optional[Future], err: BaseException) -> None:
    # Only the helper's thread completes ``handed`` (hand_over, or this): no race between done() and set_exception.
    if handed is not None and not handed.done():
        handed.set_exception(err)


def run_apart(helper_part: Callable[[], T], own_part: Callable[[], U],
              handed: Optional[Future] = None) -> tuple[T, U]:
    """Run ``helper_part`` on a helper thread while this thread runs ``own_part``; their results, in that order.

    With n = torch.get_num_threads() intra-op threads, the helper part runs on n // 2 and this thread's part on
    the rest; this thread has its n back on return, and torch's default for new threads is n too. The parts
    must not depend on each other, except through ``handed``: a Future that the helper part completes mid-way
    (``hand_over``) and the own part waits on (``handed.result()``); where the helper ends without completing it
    (it failed before, or never got to its part), it gets the helper's exception, or a RuntimeError, so that the
    own part never waits in vain. Call only where ``may_run_apart`` is true. Returns once both parts have ended;
    where one raised, its exception is raised (the helper part's where both did). Where no thread can start
    (interpreter shutdown), the parts run here, one after the other.
    """
    threads = torch.get_num_threads()
    helper_share, own_share = threads // 2, threads - threads // 2
    inference = torch.is_inference_mode_enabled()
    autocast_on, autocast_dtype = _autocast_state()
    kept: list[Future] = []

    def on_helper() -> T:
        try:
            _state.is_helper = True
            if torch.get_num_threads() != helper_share:  # (the first call on a thread also sets it to the default)
                torch.set_num_threads(helper_share)
                _keep_default(threads, kept)
            with torch.inference_mode(inference), torch.no_grad(), \
                    torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_on):
                return helper_part()
        except BaseException as err:
            _fail_if_pending(handed, err)
            raise
        finally:
            _fail_if_pending(handed, RuntimeError("the helper part ended without handing over its result"))

    try:
        pending = _helper().submit(on_helper)
    except RuntimeError:  # no new threads (the interpreter is shutting down): one part after the other, here
        return helper_part(), own_part()
    try:
        torch.set_num_threads(own_share)
        _keep_default(threads, kept)
        own = own_part()
    finally:
        try:
            _wait_for(pending)
            for future in kept:
                _wait_for(future)
        finally:
            torch.set_num_threads(threads)
        if pending.exception() is not None:
            raise pending.exception()
    return pending.result(), own
