"""Watching the camera streams: stamps (order, jumps back, zero), silence, pairing, useless modality images,
and throttled, counted problem reports.

Bad input must never stop the node, and a node that stops publishing must say
why: problems are logged (at most once per period and kind, with a running
count) so that a misconfigured camera is visible without flooding the log.
"""
from __future__ import annotations

import time
from collections import Counter
from enum import Enum
from typing import Any, Callable, Optional, Sequence

import numpy as np

# A stamp this much older than its stream's newest is a time jump (bag loop, restarted bag, clock stepped back),
# not a late message: the streams start over. Smaller steps back are out-of-order messages and are skipped...
JUMP_BACK_TOLERANCE_S = 0.5
# ...unless this many in a row on one stream are all older: then that stream's time went back too (a short loop).
OUT_OF_ORDER_RUN = 5
MOSTLY_UNUSABLE = 0.5  # warn when more than this fraction of a modality frame is invalid or clipped


class ProblemLog:
    """Counts problems by kind and logs each kind at most once per ``period_s`` seconds.

    ``log`` is e.g. ``node.get_logger().warning``; ``clock`` returns seconds (monotonic).
    """

    def __init__(self, log: Callable[[str], object], period_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._period = period_s
        self._clock = clock
        self._last_logged: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self.last: dict[str, tuple[float, str]] = {}  # kind -> (clock time, message) of its latest report
        self._counts_before: Counter[str] = Counter()  # counts at the previous ``take_recent`` call

    def report(self, kind: str, message: str) -> bool:
        """Count one ``kind`` problem; log ``message`` unless this kind was logged within the period.

        Returns True if it was logged.
        """
        self.counts[kind] += 1
        now = self._clock()
        self.last[kind] = (now, message)
        last = self._last_logged.get(kind)
        if last is not None and now - last < self._period:
            return False
        self._last_logged[kind] = now
        self._log(f"{message} [{kind}: {self.counts[kind]} so far]")
        return True

    def resolve(self, *kinds: str) -> None:
        """Forget the latest message of ``kinds`` (their counts stay): problems that masks flowing again have
        ended, so that a healthy status does not carry them as its last problem."""
        for kind in kinds:
            self.last.pop(kind, None)

    def take_recent(self) -> dict[str, int]:
        """Kinds reported since the previous call, with how many reports (one call per report period)."""
        counts = self.counts.copy()
        recent = {kind: n - self._counts_before[kind] for kind, n in counts.items() if n > self._counts_before[kind]}
        self._counts_before = counts
        return recent


class Stamp(Enum):
    """What :meth:`StreamWatch.received` made of a message's stamp."""

    NEW = "new"  # newer than the stream's newest: use it
    OUT_OF_ORDER = "out_of_order"  # a little older than the newest: skip it
    JUMPED_BACK = "jumped_back"  # time went back: every stream started over, use it
    ZERO = "zero"  # header.stamp not set: skip it


class StreamWatch:
    """Per-stream stamps, receive times and pairing progress for streams named by their (resolved) topics.

    Times from ``clock`` (seconds, monotonic); stamps in seconds.
    """

    def __init__(self, topics: Sequence[str], clock: Callable[[], float] = time.monotonic):
        self.topics = list(topics)
        self._clock = clock
        self._started = clock()
        self._first_seen: Optional[float] = None  # when the first message of any stream arrived
        self._last_seen: list[Optional[float]] = [None] * len(topics)
        self._last_stamp: list[Optional[float]] = [None] * len(topics)
        self._behind: list[int] = [0] * len(topics)  # out-of-order messages in a row
        self._pairs_since: Optional[float] = None  # last pair, or when pairing (re)started with every stream live
        self._since_pair: list[int] = [0] * len(topics)  # messages accepted per stream since then
        self.pairs = 0

    def received(self, stream: int, stamp: float) -> tuple[Stamp, Optional[float]]:
        """Record a message; (verdict, the stream's newest stamp before it)."""
        now = self._clock()
        self._last_seen[stream] = now
        if self._first_seen is None:
            self._first_seen = now
        if stamp == 0:
            return Stamp.ZERO, self._last_stamp[stream]
        previous = self._last_stamp[stream]
        if previous is not None and stamp <= previous:
            self._behind[stream] += 1
            if previous - stamp <= JUMP_BACK_TOLERANCE_S and self._behind[stream] < OUT_OF_ORDER_RUN:
                return Stamp.OUT_OF_ORDER, previous  # out-of-order messages do not move the newest stamp
            self.restart()
            self._accept(stream, stamp)
            return Stamp.JUMPED_BACK, previous
        self._accept(stream, stamp)
        return Stamp.NEW, previous

    def _accept(self, stream: int, stamp: float) -> None:
        self._last_stamp[stream] = stamp
        self._behind[stream] = 0
        self._since_pair[stream] += 1
        if self._pairs_since is None and all(s is not None for s in self._last_stamp):
            self._pairs_since = self._clock()
            self._since_pair = [0] * len(self.topics)

    def restart(self) -> None:
        """Forget every stream's stamps (time went back): the next message of each stream is new."""
        self._last_stamp = [None] * len(self.topics)
        self._behind = [0] * len(self.topics)
        self._pairs_since = None

    def paired(self) -> None:
        """A pair was made."""
        self.pairs += 1
        self._pairs_since = self._clock()
        self._since_pair = [0] * len(self.topics)

    def silent(self, after_s: float) -> list[tuple[str, float]]:
        """Streams with nothing for ``after_s`` seconds while another stream is live: [(topic, seconds silent)]."""
        if self._first_seen is None:
            return []  # nothing live at all: see nothing_for()
        now = self._clock()
        # A stream never heard from counts as silent since the other stream went live, not since start-up:
        # cameras started after the node must not be reported the moment their first frame arrives.
        ages = [now - (seen if seen is not None else self._first_seen) for seen in self._last_seen]
        if not any(age < after_s for age in ages):
            return []  # everything stopped together (e.g. a paused bag), not one broken stream
        return [(topic, age) for topic, age in zip(self.topics, ages) if age >= after_s]

    def nothing_for(self, after_s: float) -> Optional[float]:
        """Seconds since start-up if no message at all has arrived for at least ``after_s`` seconds, else None."""
        waited = self._clock() - self._started
        return waited if self._first_seen is None and waited >= after_s else None

    def unpaired(self, after_s: float) -> Optional[float]:
        """Every stream delivered since the last pair (or since pairing started), yet no pair for ``after_s`` seconds:
        the newest stamp offset (stream 0 minus stream 1, seconds); else None.

        Streams count as arriving while their newest message is less than 3 ``after_s`` old (a loaded machine
        delivers in bursts); after that they stopped, which silent() reports.
        """
        now = self._clock()
        if self._pairs_since is None or now - self._pairs_since < after_s or not all(self._since_pair):
            return None
        if any(seen is None or now - seen >= 3 * after_s for seen in self._last_seen):
            return None
        return self._last_stamp[0] - self._last_stamp[1]


def modality_problem(raw: np.ndarray, scaling: Any) -> Optional[tuple[str, float]]:
    """(kind, fraction) when more than MOSTLY_UNUSABLE of a modality image carries no information for the model.

    raw: (H, W) or (H, W, C) modality image as received; scaling: sigma_core ModalityScaling.
    Depth: ``invalid_depth``, pixels that are 0/NaN/inf (no return). Thermal: ``unusable_thermal``, pixels that
    are NaN/inf or outside ``scaling.range`` (clipped to its ends, so the model sees a constant).
    """
    values = raw[..., 0] if raw.ndim == 3 else raw
    if scaling.modality == "depth":
        _, valid = scaling.to_unit(values)
        kind, bad = "invalid_depth", ~valid
    else:
        kind = "unusable_thermal"
        if scaling.range is not None:
            lo, hi = scaling.range
            with np.errstate(invalid="ignore"):
                bad = ~((values >= lo) & (values <= hi))  # NaN compares False: counted as bad
        elif np.issubdtype(values.dtype, np.floating):
            bad = ~np.isfinite(values)
        else:
            return None  # integers without a range span their dtype: nothing is clipped
    fraction = float(np.count_nonzero(bad)) / max(bad.size, 1)
    return (kind, fraction) if fraction > MOSTLY_UNUSABLE else None
