"""Approximate-time pairing of RGB and modality messages: message_filters where installed, our policy otherwise.

Both back ends have the same meaning of ``queue_size`` (messages kept per
stream) and ``slop`` (largest stamp difference of a pair, seconds); the
fallback is sigma_core's ApproximateTimePairer, which bag extraction uses too.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from sigma_core.data.pairing import ApproximateTimePairer

try:  # on every real ROS 2 install; not on PyPI
    import message_filters as _mf
except ImportError:
    _mf = None

PairCallback = Callable[[Any, Any], None]  # (rgb_msg, modal_msg)


def stamp_seconds(msg: Any) -> float:
    """A stamped message's ``header.stamp`` in seconds (float)."""
    stamp = msg.header.stamp
    return stamp.sec + stamp.nanosec * 1e-9


class PairSynchronizer:
    """Feed RGB and modality messages with ``add_rgb``/``add_modal``; ``on_pair(rgb, modal)`` runs per pair.

    ``backend`` is ``"message_filters"`` or ``"sigma_core"``. ``use_message_filters=False``
    forces our policy (for comparing both). Thread-safe: callbacks may come from any thread.
    """

    def __init__(self, queue_size: int, slop: float, on_pair: PairCallback, use_message_filters: bool = True):
        self._lock = threading.Lock()
        self._on_pair = on_pair
        if use_message_filters and _mf is not None:
            self.backend = "message_filters"
            self._inputs = (_mf.SimpleFilter(), _mf.SimpleFilter())
            self._sync = _mf.ApproximateTimeSynchronizer(list(self._inputs), queue_size, slop)
            self._sync.registerCallback(on_pair)
        else:
            self.backend = "sigma_core"
            self._pairer = ApproximateTimePairer(queue_size=queue_size, slop=slop)

    def add_rgb(self, msg: Any) -> None:
        self._add(0, msg)

    def add_modal(self, msg: Any) -> None:
        self._add(1, msg)

    def _add(self, stream: int, msg: Any) -> None:
        with self._lock:
            if self.backend == "message_filters":
                self._inputs[stream].signalMessage(msg)
                return
            pair = self._pairer.add(stream, stamp_seconds(msg), msg)
        if pair is not None:
            self._on_pair(pair.first, pair.second)
