"""Watching the camera streams: stamp order, silence, and throttled, counted problem reports.

Bad input must never stop the node; it is logged (at most once per period and
kind, with a running count) so that a misconfigured camera is visible without
flooding the log.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Optional, Sequence


class ProblemLog:
    """Counts problems by kind and logs each kind at most once per ``period_s`` seconds.

    ``log`` is e.g. ``node.get_logger().warning``; ``clock`` returns seconds (monotonic).
    """

    def __init__(self, log: Callable[[str], object], period_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._period = period_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self.counts: Counter[str] = Counter()

    def report(self, kind: str, message: str) -> bool:
        """Count one ``kind`` problem; log ``message`` unless this kind was logged within the period.

        Returns True if it was logged.
        """
        self.counts[kind] += 1
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._period:
            return False
        self._last[kind] = now
        self._log(f"{message} [{kind}: {self.counts[kind]} so far]")
        return True


class StreamWatch:
    """Per-stream stamp order and receive times for streams named by their (resolved) topics."""

    def __init__(self, topics: Sequence[str], clock: Callable[[], float] = time.monotonic):
        self.topics = list(topics)
        self._clock = clock
        self._first_seen: Optional[float] = None  # when the first message of any stream arrived
        self._last_stamp: list[Optional[float]] = [None] * len(topics)
        self._last_seen: list[Optional[float]] = [None] * len(topics)

    def received(self, stream: int, stamp: float) -> Optional[float]:
        """Record a message; returns the previous stamp if ``stamp`` is not newer than it (out of order), else None.

        Out-of-order messages do not move the stream's last stamp.
        """
        self._last_seen[stream] = self._clock()
        if self._first_seen is None:
            self._first_seen = self._last_seen[stream]
        previous = self._last_stamp[stream]
        if previous is not None and stamp <= previous:
            return previous
        self._last_stamp[stream] = stamp
        return None

    def silent(self, after_s: float) -> list[tuple[str, float]]:
        """Streams with nothing for ``after_s`` seconds while another stream is live: [(topic, seconds silent)]."""
        if self._first_seen is None:
            return []  # nothing live at all: no camera running yet, not one broken stream
        now = self._clock()
        # A stream never heard from counts as silent since the other stream went live, not since start-up:
        # cameras started after the node must not be reported the moment their first frame arrives.
        ages = [now - (seen if seen is not None else self._first_seen) for seen in self._last_seen]
        if not any(age < after_s for age in ages):
            return []  # everything stopped together (e.g. a paused bag), not one broken stream
        return [(topic, age) for topic, age in zip(self.topics, ages) if age >= after_s]
