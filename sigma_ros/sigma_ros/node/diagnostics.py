"""The node's health on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray), as robot monitors and rqt read it.

One status per node, once per period, named ``<node name>: <fully qualified name>``
(diagnostic_updater's ``<node>: <task>`` form, so the namespace is part of it).
:class:`HealthMonitor` counts what happens between two reports (ROS-free and
thread-safe: the subscriptions and the inference thread both feed it);
:func:`decide_health` is the one place that turns a window of counts and the
problem log into OK / WARN / ERROR:

- ERROR: images arrive but no mask came out for ``stall_timeout_s`` seconds
  (nothing pairs, or every frame fails), or the last configure failed;
- WARN: some problem kind (bad encoding, out-of-order stamp, silent stream,
  ...) was reported during the last period;
- OK otherwise (also while a lifecycle node is unconfigured or inactive).

:class:`NodeDiagnostics` publishes it: through ``diagnostic_updater`` where it is
installed (real ROS 2 installs), else as a DiagnosticArray of its own on the same
topic, with the same name, levels and key-values.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .input_health import ProblemLog

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


@dataclass
class HealthWindow:
    """What happened during one report period (``seconds`` long).

    received: messages per input stream; accepted: of those, the ones handed to the pairing (not refused for
    their encoding, size or stamp); inference_ms / latency_ms: one value per published mask;
    stalled_s: seconds since images first arrived without a mask following (None when none waits).
    """

    seconds: float
    received: list[int]
    accepted: list[int] = field(default_factory=list)
    pairs: int = 0
    outputs: int = 0
    inference_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    stalled_s: Optional[float] = None


@dataclass(frozen=True)
class HealthReport:
    """level: OK / WARN / ERROR; message: one line; values: (key, value) pairs in display order."""

    level: int
    message: str
    values: list[tuple[str, str]]


class HealthMonitor:
    """Counts input messages, pairs and outputs between two reports; ``clock`` returns seconds (monotonic)."""

    def __init__(self, streams: int, clock: Callable[[], float] = time.monotonic):
        self._streams = streams
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start afresh (e.g. on activation): an empty window, nothing waiting."""
        with self._lock:
            self._window = HealthWindow(0.0, [0] * self._streams, [0] * self._streams)
            self._start = self._clock()
            self._waiting_since: Optional[float] = None

    def received(self, stream: int) -> None:
        with self._lock:
            self._window.received[stream] += 1
            if self._waiting_since is None:
                self._waiting_since = self._clock()

    def accepted(self, stream: int) -> None:
        with self._lock:
            self._window.accepted[stream] += 1

    def paired(self) -> None:
        with self._lock:
            self._window.pairs += 1

    def output(self, inference_ms: float, latency_ms: float) -> None:
        with self._lock:
            self._window.outputs += 1
            self._window.inference_ms.append(inference_ms)
            self._window.latency_ms.append(latency_ms)
            self._waiting_since = None

    def take(self) -> HealthWindow:
        """The window since the last ``take`` (or reset), and start the next one."""
        with self._lock:
            now = self._clock()
            window = self._window
            window.seconds = max(now - self._start, 1e-9)
            window.stalled_s = None if self._waiting_since is None else now - self._waiting_since
            self._window = HealthWindow(0.0, [0] * self._streams, [0] * self._streams)
            self._start = now
            return window


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.1f}"


def _percentiles(values: Sequence[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    p50, p95 = np.percentile(np.asarray(values, np.float64), [50, 95])
    return f"{p50:.1f}", f"{p95:.1f}"


LATENCY_BEHIND_MS = -500.0  # the node's clock this far behind the stamps: a paused /clock, a clock set back
LATENCY_ABSURD_MS = 3600e3  # stamps an hour older than the node's clock: not a slow model but another clock


def _why_no_pairs(window: HealthWindow, topics: Sequence[str]) -> str:
    """Why nothing pairs, from what each stream did in the period: silent, all refused, or apart in time."""
    silent = [t for t, n in zip(topics, window.received) if n == 0]
    if silent and len(silent) < len(topics):
        others = ", ".join(t for t in topics if t not in silent)
        return (f"no messages on {silent[0]} for {window.seconds:.1f} s while {others} publishes: check that camera, "
                "its topic remapping and input.qos")
    accepted = window.accepted or [1] * len(topics)
    refused = [t for t, n, a in zip(topics, window.received, accepted) if n and not a]
    if refused:
        return (f"every message on {refused[0]} was refused (its encoding, size or stamps: see the last problems "
                "below)")
    return "no RGB/modality pairs: are both streams stamped within sync.slop of each other?"


def _latency_warning(latency_ms: Sequence[float]) -> Optional[str]:
    """A latency that says the clocks disagree, not that the node is slow; None when it looks like a delay."""
    finite = [v for v in latency_ms if np.isfinite(v)]
    if not finite:
        return None
    p50 = float(np.percentile(finite, 50))
    if p50 < LATENCY_BEHIND_MS:
        return (f"latency {p50:.0f} ms: the node's clock is behind the image stamps (a paused /clock, or a clock "
                "set back); latencies are meaningless until it catches up")
    if p50 > LATENCY_ABSURD_MS:
        return (f"latency {p50 / 3.6e6:.1f} h: the image stamps are far older than the node's clock: a bag "
                "replayed without --clock (ros2 bag play --clock, and use_sim_time:=true for the node), or cameras "
                "stamping from another clock")
    return None


def decide_health(
    window: HealthWindow,
    problems: ProblemLog,
    topics: Sequence[str],
    *,
    state: str = "active",
    configure_error: Optional[str] = None,
    stall_timeout_s: float,
    frames_processed: int,
    frames_dropped: int,
    info: Sequence[tuple[str, str]] = (),
) -> HealthReport:
    """The status of one period: level, one-line message and key-values (see the module docstring).

    topics: the input topics, in the order of ``window.received``; state: the lifecycle state
    (unconfigured / inactive / active); configure_error: why the last configure failed, if it did;
    info: fixed key-values (device, precision, scan backend, checkpoint, ...) listed after the rates.
    Starts the problem log's next period (``ProblemLog.take_recent``).
    """
    recent = problems.take_recent()
    inputs = sum(window.received)
    if configure_error is not None:
        level, message = ERROR, f"configure failed: {configure_error}"
    elif state != "active":
        level, message = OK, f"{state}: not processing (lifecycle)"
    elif inputs and window.stalled_s is not None and window.stalled_s >= stall_timeout_s:
        if window.pairs == 0:
            why = _why_no_pairs(window, topics)
        else:
            why = "pairs are formed but none was segmented: see the last problems below"
        level, message = ERROR, f"images arrive but no mask for {window.stalled_s:.1f} s; {why}"
    elif recent:
        level = WARN
        message = "problems in the last period: " + ", ".join(f"{k} ({n})" for k, n in sorted(recent.items()))
    elif inputs:
        level, message = OK, f"segmenting at {window.outputs / window.seconds:.1f} Hz"
    else:
        level, message = OK, "waiting for images"
    clocks = _latency_warning(window.latency_ms) if state == "active" else None
    if clocks is not None and level != ERROR:
        message = clocks if level == OK else f"{message}; {clocks}"
        level = WARN

    values = [(f"{topic} rate (Hz)", _rate(n, window.seconds)) for topic, n in zip(topics, window.received)]
    inf50, inf95 = _percentiles(window.inference_ms)
    lat50, lat95 = _percentiles(window.latency_ms)
    values += [
        ("pair rate (Hz)", _rate(window.pairs, window.seconds)),
        ("output rate (Hz)", _rate(window.outputs, window.seconds)),
        ("frames processed", str(frames_processed)),
        ("frames dropped", str(frames_dropped)),
        ("inference p50 (ms)", inf50),
        ("inference p95 (ms)", inf95),
        ("latency p50 (ms)", lat50),
        ("latency p95 (ms)", lat95),
        *info,
    ]
    values += [(f"last {kind}", f"{message} ({problems.counts[kind]} so far)")
               for kind, (_, message) in sorted(problems.last.items())]
    return HealthReport(level, message, values)


class NodeDiagnostics:
    """Publishes ``report()`` on ``/diagnostics`` every ``period_s`` seconds for ``node``.

    Uses diagnostic_updater's Updater where installed, else a DiagnosticArray publisher and timer of
    its own; both name the status ``<node name>: <fully qualified node name>``. Create it once per node
    (the Updater declares a parameter); ``report`` reflects whatever state the node is in.
    """

    def __init__(self, node, report: Callable[[], HealthReport], period_s: float = 1.0,
                 hardware_id: str = "none"):
        self._node = node
        self._report = report
        self.task_name = node.get_fully_qualified_name()
        self.name = f"{node.get_name()}: {self.task_name}"
        self._hardware_id = hardware_id
        self._updater = None
        self._publisher = self._timer = None
        try:
            from diagnostic_updater import Updater
        except ImportError:
            Updater = None
        # The node's clock stands still with use_sim_time (set at start or at run time) until /clock comes, or
        # while a bag is paused: health is most wanted then, so reports follow the steady clock, diagnostic_updater's
        # too (its own timer uses the node's clock: it is replaced).
        from rclpy.clock import Clock, ClockType

        steady = Clock(clock_type=ClockType.STEADY_TIME)
        if Updater is not None:
            try:
                self._updater = Updater(node, period=period_s)
            except TypeError:  # an older Updater without the period argument: publish ourselves
                self._updater = None
        if self._updater is not None:
            self.backend = "diagnostic_updater"
            if getattr(self._updater, "timer", None) is not None:
                node.destroy_timer(self._updater.timer)
                period = getattr(self._updater, "period", period_s)  # its parameter's value
                self._updater.timer = node.create_timer(period, self._updater.update, clock=steady)
            self._updater.setHardwareID(hardware_id)
            self._updater.add(self.task_name, self._fill)
            return
        from diagnostic_msgs.msg import DiagnosticArray

        self.backend = "diagnostic_msgs"
        self._publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer = node.create_timer(period_s, self._publish, clock=steady)

    def _fill(self, stat):
        """diagnostic_updater task: fill its DiagnosticStatusWrapper."""
        report = self._report()
        stat.summary(bytes([report.level]), report.message)
        for key, value in report.values:
            stat.add(key, value)
        return stat

    def _publish(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        report = self._report()
        status = DiagnosticStatus(level=bytes([report.level]), name=self.name, message=report.message,
                                  hardware_id=self._hardware_id,
                                  values=[KeyValue(key=k, value=v) for k, v in report.values])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self._publisher.publish(array)
