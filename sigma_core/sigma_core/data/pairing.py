"""Pairing of two image streams by stamp: the policy shared by the node and bag extraction.

It reproduces message_filters' ApproximateTimeSynchronizer for two inputs, so
that frames extracted from a bag are exactly the pairs the live node would
segment: each stream keeps its last ``queue_size`` messages keyed by stamp;
when a message arrives, the message of the *other* stream whose stamp is
closest to it, and strictly closer than ``slop``, completes a pair, and both are
removed from their queues.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Optional, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Pair(Generic[T]):
    first: T
    second: T
    first_stamp: float  # seconds
    second_stamp: float

    @property
    def skew(self) -> float:
        """first_stamp - second_stamp, in seconds."""
        return self.first_stamp - self.second_stamp


class ApproximateTimePairer:
    """Feed messages of stream 0 (e.g. RGB) and stream 1 (e.g. thermal) in arrival order.

    ``add(stream, stamp, item)`` returns the Pair completed by this message, or None.
    """

    def __init__(self, queue_size: int = 10, slop: float = 0.05):
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not slop > 0:
            raise ValueError(f"slop must be > 0 seconds, got {slop}")
        self.queue_size = int(queue_size)
        self.slop = float(slop)
        self._queues: tuple[dict[float, Any], dict[float, Any]] = ({}, {})

    def add(self, stream: int, stamp: float, item: Any) -> Optional[Pair]:
        mine, other = self._queues[stream], self._queues[1 - stream]
        mine[stamp] = item
        while len(mine) > self.queue_size:
            del mine[min(mine)]
        best: Optional[float] = None
        for s in other:
            d = abs(s - stamp)
            if d < self.slop and (best is None or d < abs(best - stamp)):
                best = s
        if best is None:
            return None
        a, b = mine.pop(stamp), other.pop(best)
        if stream == 0:
            return Pair(a, b, stamp, best)
        return Pair(b, a, best, stamp)

    def pending(self) -> tuple[int, int]:
        """How many messages wait in each queue."""
        return len(self._queues[0]), len(self._queues[1])

    def clear(self) -> None:
        for q in self._queues:
            q.clear()
