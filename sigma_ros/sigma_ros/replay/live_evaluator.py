"""replay_evaluator: watches the node's outputs during a live replay and measures latency, drops and accuracy.

It subscribes to what the node subscribes to (``rgb/image``, ``modal/image``)
and to the node's outputs (``segmentation/mask``, ``segmentation/stats``,
``segmentation/class_map``), plus optionally the bag's label topic, and measures:

- end-to-end latency: mask received minus the same RGB frame received, both in
  this process (so it works with any stamps: bag time, sim time or live);
- drops: pairs that the node's pairing policy makes from the streams seen here
  (``ApproximateTimePairer``, as the node) that never got a mask;
- accuracy against the label topic (``sigma_core.engine.metrics``), per frame and overall;
- the node's own inference time and sync skew (from ``segmentation/stats``).

It can run in its own process (``replay_evaluator --out report_dir``; it ends when
the streams go quiet or after ``--duration``) or inside another program (the demo).
"""
from __future__ import annotations

from .. import ros_env  # noqa: F401  (before rclpy: the pip ROS wheels' library path)

# isort: split
import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image

from sigma_core.data.bags import stamp_ns
from sigma_core.data.errors import DataError
from sigma_core.data.labels import label_from_message
from sigma_core.data.pairing import ApproximateTimePairer
from sigma_core.engine.metrics import compute_metrics
from sigma_msgs.msg import ClassMap, SegmentationStats

from .. import stop_signals
from ..node.image_conversion import image_msg_to_array, image_msg_to_rgb8
from ..node.mask_rendering import colorize, lookup_palette, overlay
from ..node.pair_synchronizer import stamp_seconds
from ..node.qos import INPUT_QOS_NAMES, input_qos, latched_qos
from .label_matching import LabelMatcher, check_label_ids, forget_older, frame_confusion
from .report import (
    FrameSample,
    ReplaySummary,
    SampleKeeper,
    StripLabels,
    check_report_folder,
    format_summary,
    write_report,
)

NODE_NAME = "replay_evaluator"


@dataclass
class EvaluatorOptions:
    """Topics (relative names follow the node's namespace and remapping) and what to keep.

    slop (s) and queue_size must equal the node's sync parameters for the drop count to be right.
    """

    rgb_topic: str = "rgb/image"
    modal_topic: str = "modal/image"
    label_topic: Optional[str] = None
    segmentation_ns: str = "segmentation"
    slop: float = 0.05
    queue_size: int = 10
    overlay_alpha: float = 0.5
    overlay_dir: Optional[Path] = None  # write every mask's overlay here as <stamp_ns>.png
    samples: int = 6  # frames in the report's strip
    history_s: float = 5.0  # how long RGB/modality/label messages are kept for matching
    keep_masks: bool = False
    input_qos: str = "reliable"  # of the camera/label subscriptions: "sensor_data" to hear best-effort cameras


class ReplayEvaluator(Node):
    """Measures a live replay; read the results with :meth:`summary` (thread-safe)."""

    def __init__(self, opts: EvaluatorOptions, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.opts = opts
        self._lock = threading.Lock()
        self.class_map_event = threading.Event()
        self.class_names: list[str] = []
        self._palette: list[tuple[int, int, int]] = []
        self._table: Optional[np.ndarray] = None
        self._cm: Optional[np.ndarray] = None  # (K, K) int64 confusion of every scored frame
        self._pairer = ApproximateTimePairer(queue_size=opts.queue_size, slop=opts.slop)
        self.expected: dict[int, int] = {}  # RGB stamp -> modality stamp of each pair the node should segment
        self.rgb_received: dict[int, float] = {}  # RGB stamp -> receive time (perf_counter s)
        self._rgb_msgs: dict[int, Image] = {}
        self._modal_msgs: dict[int, Image] = {}
        self._history_ns = int(opts.history_s * 1e9)
        self._labels = LabelMatcher(self._score, self._history_ns)
        self.mask_stamps: list[int] = []
        self.latency_ms: dict[int, float] = {}
        self.mask_received: dict[int, float] = {}
        self.confusion: dict[int, np.ndarray] = {}
        self.masks: dict[int, np.ndarray] = {}
        self.node_skew_ms: dict[int, float] = {}
        self.node_inference_ms: dict[int, float] = {}
        self.node_coverage: dict[int, float] = {}  # modality coverage after the node's registration
        self.node_dropped = 0
        self.rgb_count = self.modal_count = 0
        self.unknown_masks = 0  # masks whose stamp matches no RGB frame seen here
        self.bad_labels = 0  # labels holding ids the model does not predict (not scored)
        self.unreadable_labels = 0  # label messages that hold no class ids (colour, float images)
        self.misfit_labels = 0  # labels whose size is not the mask's (not scored)
        self._pixels: Optional[np.ndarray] = None
        self._samples = SampleKeeper(opts.samples)
        self._strip_labels = StripLabels(self._samples)
        self.first_input: Optional[float] = None
        self.last_activity = time.perf_counter()
        self.last_mask: Optional[float] = None

        depth = 100  # generous: the evaluator must not lose what it measures
        inputs = input_qos(opts.input_qos, depth)
        ns = opts.segmentation_ns.rstrip("/")
        self.create_subscription(Image, opts.rgb_topic, self._on_rgb, inputs)
        self.create_subscription(Image, opts.modal_topic, self._on_modal, inputs)
        if opts.label_topic:
            self.create_subscription(Image, opts.label_topic, self._on_label, inputs)
        self.create_subscription(Image, f"{ns}/mask", self._on_mask, QoSProfile(depth=depth))
        self.create_subscription(SegmentationStats, f"{ns}/stats", self._on_stats, QoSProfile(depth=depth))
        self.create_subscription(ClassMap, f"{ns}/class_map", self._on_class_map, latched_qos())
        if opts.overlay_dir is not None:
            Path(opts.overlay_dir).mkdir(parents=True, exist_ok=True)

    # --- callbacks ----------------------------------------------------------------------------------

    def _on_rgb(self, msg: Image) -> None:
        now = time.perf_counter()
        stamp = stamp_ns(msg)
        with self._lock:
            self.first_input = self.first_input if self.first_input is not None else now
            self.last_activity = now
            self.rgb_count += 1
            self.rgb_received[stamp] = now
            self._rgb_msgs[stamp] = msg
            forget_older(self._rgb_msgs, stamp, self._history_ns)
            self._pair(0, msg, stamp)

    def _on_modal(self, msg: Image) -> None:
        stamp = stamp_ns(msg)
        with self._lock:
            self.last_activity = time.perf_counter()
            self.modal_count += 1
            self._modal_msgs[stamp] = msg
            forget_older(self._modal_msgs, stamp, self._history_ns)
            self._pair(1, msg, stamp)

    def _pair(self, stream: int, msg: Image, stamp: int) -> None:
        pair = self._pairer.add(stream, stamp_seconds(msg), stamp)  # seconds exactly as the node computes them
        if pair is not None:
            self.expected[pair.first] = pair.second

    def _on_label(self, msg: Image) -> None:
        stamp = stamp_ns(msg)
        try:
            label = np.array(label_from_message(msg, f"the label stamped {stamp} ns on {self.opts.label_topic}"))
        except DataError as err:  # a colour or float image: its values are no class ids; counted, said throttled
            with self._lock:
                self.last_activity = time.perf_counter()
                self.unreadable_labels += 1
            self.get_logger().error(str(err), throttle_duration_sec=5.0)
            return
        with self._lock:
            self.last_activity = time.perf_counter()
            self._labels.add_label(stamp, label)

    def _on_class_map(self, msg: ClassMap) -> None:
        with self._lock:
            self.class_names = list(msg.names)
            palette = np.asarray(msg.colors, np.uint8).reshape(-1, 3)
            self._palette = [tuple(int(v) for v in c) for c in palette]
            self._table = lookup_palette(palette)
            if self._cm is None or len(self._cm) != len(self.class_names):
                self._cm = np.zeros((len(self.class_names),) * 2, np.int64)
                self._pixels = np.zeros(len(self.class_names), np.int64)
        self.class_map_event.set()

    def _on_stats(self, msg: SegmentationStats) -> None:
        stamp = stamp_ns(msg)
        with self._lock:
            self.node_skew_ms[stamp] = float(msg.sync_skew_ms)
            self.node_inference_ms[stamp] = float(msg.inference_ms)
            self.node_coverage[stamp] = float(msg.modality_coverage)
            self.node_dropped = max(self.node_dropped, int(msg.frames_dropped))

    def _on_mask(self, msg: Image) -> None:
        now = time.perf_counter()
        stamp = stamp_ns(msg)
        mask = np.array(image_msg_to_array(msg), np.uint8)  # a copy: the message buffer is reused
        with self._lock:
            self.last_activity = self.last_mask = now
            self.mask_stamps.append(stamp)
            self.mask_received[stamp] = now
            if stamp in self.rgb_received:
                self.latency_ms[stamp] = (now - self.rgb_received[stamp]) * 1e3
            else:
                self.unknown_masks += 1
            if self.opts.keep_masks:
                self.masks[stamp] = mask
            if self._pixels is not None:
                self._pixels += np.bincount(mask.reshape(-1), minlength=256)[: len(self._pixels)]
            if self.opts.label_topic:
                self._labels.add_mask(stamp, mask)
            rgb_msg = self._rgb_msgs.get(stamp)
            modal_msg = self._modal_msgs.get(self.expected.get(stamp, -1))
            table = self._table
            index = len(self.mask_stamps) - 1
            want_sample = self._samples.wants(index)
        if rgb_msg is None or table is None:
            return
        if not want_sample and self.opts.overlay_dir is None:
            return
        rgb = np.ascontiguousarray(image_msg_to_rgb8(rgb_msg))
        if rgb.shape[:2] != mask.shape:
            return
        blended = overlay(rgb, colorize(mask, table), self.opts.overlay_alpha)
        if self.opts.overlay_dir is not None:
            cv2.imwrite(str(Path(self.opts.overlay_dir) / f"{stamp}.png"), cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
        if want_sample:
            modal = np.array(image_msg_to_array(modal_msg)) if modal_msg is not None \
                else np.zeros(mask.shape, np.uint8)
            with self._lock:
                self._samples.add(index, FrameSample(stamp, rgb, modal, blended, mask=mask,
                                                     label=self._strip_labels.take(stamp)))

    def _score(self, stamp: int, mask: np.ndarray, label: np.ndarray) -> None:
        if self._cm is None:
            return
        if label.shape != mask.shape:  # not scored, and said: it would otherwise read as "masks had no label"
            self.misfit_labels += 1
            self.get_logger().error(
                f"the label stamped {stamp} ns on {self.opts.label_topic} is {label.shape[1]}x{label.shape[0]}, "
                f"the mask {mask.shape[1]}x{mask.shape[0]}: labels must be at the RGB size", throttle_duration_sec=5.0)
            return
        try:
            check_label_ids(label, self.class_names, f"the label stamped {stamp} ns on {self.opts.label_topic}")
        except DataError as err:  # not scored (it would count fewer pixels): said once in a while, and counted
            self.bad_labels += 1
            self.get_logger().error(str(err), throttle_duration_sec=5.0)
            return
        frame = frame_confusion(mask, label, len(self._cm))
        self._strip_labels.scored(stamp, label)
        self._cm += frame
        self.confusion[stamp] = frame

    # --- results ------------------------------------------------------------------------------------

    def idle_for(self) -> float:
        """Seconds since the last message of any watched topic."""
        with self._lock:
            return time.perf_counter() - self.last_activity

    def all_answered(self) -> bool:
        """True when every expected pair has a mask (and at least one pair was expected)."""
        with self._lock:
            return bool(self.expected) and all(s in self.mask_received for s in self.expected)

    def summary(self) -> ReplaySummary:
        """What was measured so far, as a ReplaySummary (mode "live")."""
        with self._lock:
            s = ReplaySummary(mode="live")
            s.source = {"rgb_topic": self.opts.rgb_topic, "modal_topic": self.opts.modal_topic,
                        "labels": self.opts.label_topic or "none", "slop_s": self.opts.slop,
                        "queue_size": self.opts.queue_size}
            s.rgb_messages, s.modal_messages = self.rgb_count, self.modal_count
            s.legend = list(zip(self.class_names, self._palette))
            s.expected_pairs = len(self.expected)
            s.frames = len(self.mask_stamps)
            # Arrival order decides close calls of the pairing, so the node may pair a frame differently from
            # this process: count drops as pairs without a mask, not by stamp.
            s.dropped = max(0, s.expected_pairs - s.frames)
            repaired = sum(1 for st in self.mask_received if st not in self.expected)
            s.unpaired_rgb = self.rgb_count - len(self.expected)
            s.unpaired_modal = self.modal_count - len(self.expected)
            if self.first_input is not None and self.last_mask is not None:
                s.wall_seconds = self.last_mask - self.first_input
            first_mask = min(self.mask_received.values()) if self.mask_received else 0.0
            order = sorted(self.latency_ms, key=lambda st: self.mask_received[st])
            s.latency_ms = [self.latency_ms[st] for st in order]
            s.latency_t = [self.mask_received[st] - first_mask for st in order]
            s.inference_ms = [self.node_inference_ms[st] for st in self.mask_stamps if st in self.node_inference_ms]
            s.sync_skew_ms = [self.node_skew_ms[st] for st in self.mask_stamps if st in self.node_skew_ms]
            s.modality_coverage = [self.node_coverage[st] for st in self.mask_stamps if st in self.node_coverage]
            s.frames_scored = len(self.confusion)
            if self._cm is not None and self.confusion:
                s.metrics = compute_metrics(self._cm, self.class_names)
            if self._pixels is not None:
                s.class_pixels = {n: int(c) for n, c in zip(self.class_names, self._pixels)}
            if repaired:
                s.notes.append(f"{repaired} masks came from pairs the evaluator's pairing did not make "
                               "(messages arrived in another order at the node)")
            if self.unknown_masks:
                s.notes.append(f"{self.unknown_masks} masks had a stamp of no RGB frame seen by the evaluator")
            if self.node_dropped:
                s.notes.append(f"the node reports {self.node_dropped} pairs replaced while the model was busy")
            unscored = s.frames - s.frames_scored - self.bad_labels
            if self.unreadable_labels:
                s.notes.append(f"{self.unreadable_labels} messages on {self.opts.label_topic} hold no class ids "
                               "(colour or float images) and were not scored; publish mono8 class-id labels")
                unscored -= self.unreadable_labels
            if self.misfit_labels:
                s.notes.append(f"{self.misfit_labels} labels on {self.opts.label_topic} were not scored: they are not "
                               "at the mask's (RGB) size")
                unscored -= self.misfit_labels
            if self.opts.label_topic and unscored > 0:
                s.notes.append(f"{unscored} masks had no label")
            if self.bad_labels:
                s.notes.append(f"{self.bad_labels} labels on {self.opts.label_topic} were not scored: they hold "
                               f"class ids the model does not predict (it has {len(self.class_names)} classes)")
            s.samples = self._samples.items()
            return s


def spin_until_done(executor, evaluator: ReplayEvaluator, duration: float, idle_timeout: float,
                    stop: threading.Event = None) -> None:
    """Spin until ``duration`` s passed, or the streams were quiet for ``idle_timeout`` s after a mask, or ``stop``."""
    deadline = time.monotonic() + duration if duration > 0 else float("inf")
    while rclpy.ok() and time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        executor.spin_once(timeout_sec=0.1)
        if evaluator.last_mask is not None and evaluator.idle_for() > idle_timeout:
            break


def build_parser() -> argparse.ArgumentParser:
    from sigma_core.cli.errors import DefaultsHelpFormatter

    p = argparse.ArgumentParser(prog="replay_evaluator", formatter_class=DefaultsHelpFormatter,
                                description="Measure the node's latency, drops and accuracy during a live replay.")
    p.add_argument("--rgb-topic", default="rgb/image")
    p.add_argument("--modal-topic", default="modal/image")
    p.add_argument("--label-topic", help="mono8 class-id topic stamped like RGB (e.g. from the bag)")
    p.add_argument("--segmentation-ns", default="segmentation", help="namespace of the node's outputs")
    p.add_argument("--slop", type=float, default=0.05, help="the node's sync.slop (s)")
    p.add_argument("--queue-size", type=int, default=10, help="the node's sync.queue_size")
    p.add_argument("--out", type=Path, default=Path("replay_live_report"), help="report folder")
    p.add_argument("--save-overlays", action="store_true", help="write every overlay to OUT/overlays/")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    p.add_argument("--idle-timeout", type=float, default=3.0, help="stop when quiet this long after a mask")
    p.add_argument("--samples", type=int, default=6, help="frames in the report's strip")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--input-qos", choices=INPUT_QOS_NAMES, default="reliable",
                   help="QoS of the camera and label subscriptions: reliable (bag_player's default) or sensor_data "
                        "(best effort, to hear live camera drivers)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from rclpy.utilities import remove_ros_args

    stop_signals.exit_with_launch()
    argv = list(sys.argv if argv is None else ["replay_evaluator", *argv])
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    try:
        check_report_folder(args.out)  # before listening: a user's report.md is never replaced
    except (ValueError, OSError) as e:
        print(f"replay_evaluator: {e}", file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    opts = EvaluatorOptions(
        rgb_topic=args.rgb_topic, modal_topic=args.modal_topic, label_topic=args.label_topic,
        segmentation_ns=args.segmentation_ns, slop=args.slop, queue_size=args.queue_size, samples=args.samples,
        overlay_dir=args.out / "overlays" if args.save_overlays else None, input_qos=args.input_qos,
    )
    evaluator = ReplayEvaluator(opts)
    executor = SingleThreadedExecutor()
    executor.add_node(evaluator)
    try:
        spin_until_done(executor, evaluator, args.duration, args.idle_timeout)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    summary = evaluator.summary()
    evaluator.destroy_node()
    rclpy.try_shutdown()
    paths = write_report(summary, args.out, html_page=not args.no_html)
    print(format_summary(summary))
    print(f"report: {paths['markdown']}")
    return 0 if summary.frames > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
