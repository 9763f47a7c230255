"""A single-slot mailbox between the subscriptions and the inference thread.

The newest synchronized pair waits here while the model is busy; a newer pair
replaces it (counted as dropped), so memory stays bounded and latency never
grows with a backlog, whatever the input rate.
"""
from __future__ import annotations

import threading
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class LatestMailbox(Generic[T]):
    """Thread-safe slot holding at most one item; ``put`` never blocks."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[T] = None
        self._closed = False
        self.dropped = 0  # items replaced before the consumer took them

    def put(self, item: T) -> bool:
        """Store ``item``; returns True if it replaced a waiting one (then ``dropped`` grew by one)."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """Wait up to ``timeout`` seconds for an item and remove it; None on timeout or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        """Wake the consumer for good: ``take`` returns None from now on."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
