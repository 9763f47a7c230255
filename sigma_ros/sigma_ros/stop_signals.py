"""SIGINT/SIGTERM stop a sigma_ros process promptly and quietly in every phase: start-up, model loading, warm-up,
spinning, shutdown.

rclpy's own handlers only shut the ROS context down: Python code running in the main thread (loading a
checkpoint, a warm-up forward pass, waiting for subscribers) carries on, then fails on the dead context with
a traceback, and work still in flight (an inference thread publishing) sees "context is invalid". Instead,
:func:`install` makes the first SIGINT or SIGTERM raise :class:`StopSignal` (a KeyboardInterrupt) in the
main thread wherever it is, so ``main`` unwinds and shuts down in order; a second signal during that shutdown
exits at once with the conventional code 128 + signal number. Pair it with
``rclpy.init(signal_handler_options=NO)`` (see :func:`ros_init_options`) and spin in short steps (the main
thread only notices the signal between them).
Imports no ROS. What a process can promise starts with :func:`install`, the first statement of each entry
point: a signal in the few tens of ms before it, while the interpreter itself starts, takes Python's default
action (SIGINT: a KeyboardInterrupt traceback and exit -2 or 1; SIGTERM: death by the signal).

Why the handlers raise :class:`StopSignal`, a subclass, and never KeyboardInterrupt itself: CPython (3.10 to
3.13 at least; ``Python/pythonrun.c`` run_eval_code_obj) sets its private "unhandled KeyboardInterrupt" flag
whenever an exception of exactly type KeyboardInterrupt leaves code that ``exec``/``eval`` run from a string,
even when a caller catches it afterwards, and ``python -m``'s Py_RunMain then ends the process with SIGINT
under SIG_DFL (exit -2, or 130 where SIGINT is blocked) instead of the exit code ``main`` returned, with no
traceback. Library code runs such strings all the time (collections.namedtuple, dataclasses and
typing.NamedTuple build their methods that way, e.g. all through ``import torch``), so a stop signal that
happened to land there turned our quiet exit 0 into -2 (1 stop in ~10 during the first seconds of a node,
under load). The flag test compares the exact type, so a subclass never sets it; ``except KeyboardInterrupt``
still catches it everywhere (ours, rclpy's, the libraries').

Some native code cannot be interrupted at all: ``import torch`` runs C++ initialisers (``torch._C._c10d_init``
from ``torch/distributed/__init__.py``) that call back into Python, and a stop raised there becomes a C++
exception that ends in std::terminate (exit -6, "terminate called after throwing pybind11::error_already_set";
1 stop in ~40 during a node's first seconds under load). Wrap such steps in :func:`deferred`: a stop inside is
held and raised when the step ends.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import Any, Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LAUNCH_PID_VARIABLE = "SIGMA_LAUNCH_PID"  # set by our launch files for the processes they start
PR_SET_PDEATHSIG = 1  # linux/prctl.h
SPIN_STEP_S = 0.1  # spin_once timeout: how soon a signal is noticed while spinning

_stopping = False
_deferring = False
_pending: Optional[int] = None  # a stop signal held by deferred()


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread by the first SIGINT/SIGTERM after :func:`install`; the message is the signal's
    name. A KeyboardInterrupt to every ``except`` clause, but not to CPython's exit-by-SIGINT flag (see above)."""


def _on_signal(signum: int, frame: Any) -> None:
    global _stopping, _pending
    if _stopping:  # a second signal: the user does not want to wait for the orderly shutdown
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(128 + signum)
    _stopping = True
    if _deferring:
        _pending = signum
        return
    raise StopSignal(signal.Signals(signum).name)


def install() -> None:
    """From now on SIGINT and SIGTERM raise :class:`StopSignal` (a KeyboardInterrupt) in the main thread (call it from
    the main thread); and a process our launch files started stops when `ros2 launch` dies (:func:`exit_with_launch`).
    """
    global _stopping, _pending
    if signal.getsignal(signal.SIGINT) is not _on_signal:  # installed again later (entry point, then node main):
        _stopping, _pending = False, None                  # a stop that already arrived still counts
        sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    exit_with_launch()


def _unraisable_hook(previous: Any) -> Any:
    """A StopSignal raised where Python cannot propagate it (a weakref callback such as importlib's module-lock
    cleanup, a ``__del__``) is dropped with an "Exception ignored" traceback: say nothing, the stop stays recorded
    (:func:`stopping`) for the entry point's loop to honour."""
    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, StopSignal):
            previous(unraisable)
    return hook


def launch_env() -> dict[str, str]:
    """For a launch file's processes (``additional_env``): the launch process's pid, for :func:`exit_with_launch`."""
    return {LAUNCH_PID_VARIABLE: str(os.getpid())}


def exit_with_launch() -> None:
    """In a process started by our launch files (its parent is the pid in $SIGMA_LAUNCH_PID): SIGTERM when that
    parent dies (Linux ``PR_SET_PDEATHSIG``). `ros2 launch` itself killed by SIGTERM (a supervisor, ``timeout``,
    ``kill``) stops without stopping its processes: the node would run on without a parent, holding the topics and
    the GPU. Nothing elsewhere, or with a launch prefix (gdb, valgrind) between the two."""
    pid = os.environ.get(LAUNCH_PID_VARIABLE, "")
    if not pid.isdigit() or os.getppid() != int(pid) or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != int(pid):  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block a first stop signal is held, then raised as :class:`StopSignal` when the block ends (for
    native code a KeyboardInterrupt must not cross); a second signal still exits at once (128 + signal number)."""
    global _deferring, _pending
    outer, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = outer
    if not outer and _pending is not None:
        signum, _pending = _pending, None
        raise StopSignal(signal.Signals(signum).name)


def stopping() -> bool:
    """True once a stop signal has arrived."""
    return _stopping


def ros_init_options() -> dict:
    """Keyword arguments for ``rclpy.init`` that leave SIGINT/SIGTERM to :func:`install`'s handlers."""
    from rclpy.signals import SignalHandlerOptions

    return {"signal_handler_options": SignalHandlerOptions.NO}
