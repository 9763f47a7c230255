"""Offline replay evaluation: a bag through the node's pairing and model, scored against its labels.

For a bag, its RGB and modality topics and a checkpoint, this pairs frames with
the node's policy (``sigma_core.data.pairing.ApproximateTimePairer``, fed in
the bag's log-time order, exactly as the node would receive them), segments
every pair with the node's own per-frame step (``segmentation_step``), and, where labels exist (a
mono8 label topic stamped like RGB, or an extracted ``Label/`` folder whose
files are named by RGB stamp in nanoseconds), scores the masks with
``sigma_core.engine.metrics``. It reports mIoU and per-class IoU, per-frame
inference time percentiles, sync skew and unpaired frames, writes the report
(``report.py``), and optionally an output bag with the node's topics
(``/segmentation/mask``, ``color_mask``, ``stats``, ``class_map``) for
Foxglove or RViz.

Unlike the live node, nothing is dropped here: every pair is segmented. Reads
and writes bags with ``rosbags``; needs no running ROS graph.

Usage::

    sigma-replay-eval BAG --checkpoint model.pt --rgb-topic /rgb/image --modal-topic /thermal/image
                      [--label-topic /label/image | --label-dir extracted/Label] [--output-bag out_bag]
                      [--out replay_report]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from sigma_core.data.bags import (
    IMAGE_TYPES,
    BagError,
    bag_topics,
    describe_topics,
    message_to_array,
    open_bag,
    read_messages,
    resolve_topic,
    stamp_ns,
)
from sigma_core.data.calibration import CalibrationError, load_calibration
from sigma_core.data.labels import label_from_message, read_label_image
from sigma_core.data.modality import depth_stream_evidence
from sigma_core.data.pairing import ApproximateTimePairer
from sigma_core.data.registration import DEFAULT_DISTANCE_M, Registration
from sigma_core.model_io import NonFiniteOutputError
from sigma_core.segmentation_step import bundled_checkpoint

from .. import ros_env  # noqa: F401  (before rclpy, imported below through node_config)

# isort: split
from ..node.mask_rendering import colorize, lookup_palette, overlay
from ..node.pair_synchronizer import stamp_seconds
from ..node.parameters import ConfigError
from ..segmentation_step import load_registration, load_segmenter, segment_pair
from .report import (
    FrameSample,
    ReplaySummary,
    SampleKeeper,
    StripLabels,
    check_report_folder,
    format_summary,
    write_report,
)

MASK_TOPIC = "/segmentation/mask"
COLOR_TOPIC = "/segmentation/color_mask"
STATS_TOPIC = "/segmentation/stats"
CLASS_MAP_TOPIC = "/segmentation/class_map"


@dataclass
class ReplayOptions:
    """What to replay. slop (s) and queue_size have the node's meaning and defaults."""

    bag: Path
    rgb_topic: str
    modal_topic: str
    label_topic: Optional[str] = None
    label_dir: Optional[Path] = None
    slop: float = 0.05
    queue_size: int = 10
    output_bag: Optional[Path] = None
    output_storage: str = "sqlite3"
    overlay_alpha: float = 0.5
    samples: int = 6  # frames in the report's strip
    max_pairs: Optional[int] = None
    keep_masks: bool = False  # keep every mask in the result (tests)
    allow_partial: bool = False  # a damaged bag read in part is a warning (summary.notes), not an error
    registration: Optional[Registration] = None  # of the modality into the RGB view, as the node's (None: none)


@dataclass
class ReplayResult:
    """The summary plus per-frame details keyed by RGB stamp (ns).

    modal_stamp: the modality stamp paired with each RGB frame; confusion: the frame's
    (K, K) int64 confusion matrix where labelled; masks: (H, W) uint8, with keep_masks.
    """

    summary: ReplaySummary
    modal_stamp: dict[int, int] = field(default_factory=dict)
    confusion: dict[int, np.ndarray] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)


def read_label_file(label_dir: Path, stamp: int) -> Optional[np.ndarray]:
    """``label_dir/<stamp_ns>.png`` as (H, W) class ids (grey or indexed PNG), or None if absent;
    DataError naming the file if it cannot be decoded or is a colour image."""
    path = label_dir / f"{stamp}.png"
    if not path.is_file():
        return None
    return read_label_image(path)


def sigma_msgs_dir() -> Path:
    """The folder holding sigma_msgs' .msg files: the installed package's share, else the source tree's."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            installed = Path(get_package_share_directory("sigma_msgs")) / "msg"
            if installed.is_dir():
                return installed
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    source = Path(__file__).resolve().parents[2] / "sigma_msgs" / "msg"
    if source.is_dir():
        return source
    raise FileNotFoundError(
        "cannot find sigma_msgs/msg/*.msg (neither an installed sigma_msgs nor the source tree): "
        "build sigma_msgs (tools/setup.sh or colcon build) and source its set-up"
    )


def register_sigma_msgs(typestore: Any) -> None:
    """Register sigma_msgs' message types with a ``rosbags`` typestore, from their .msg definitions."""
    from rosbags.typesys import get_types_from_msg

    types: dict = {}
    for msg_file in sorted(sigma_msgs_dir().glob("*.msg")):
        types.update(get_types_from_msg(msg_file.read_text(), f"sigma_msgs/msg/{msg_file.stem}"))
    typestore.register(types)


class OutputBag:
    """Writes the node's output topics to a rosbag2: messages built by the node's own code (rclpy types,
    ``segmentation_stats.stats_msg``), serialised by rclpy, stored with ``rosbags`` (sigma_msgs registered
    from its .msg files so the bag carries their definitions)."""

    def __init__(self, path: Path, storage: str, class_names: Sequence[str], palette: np.ndarray, model: str,
                 modality: str):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if path.exists():
            raise FileExistsError(f"output bag {path} exists already; remove it or choose another --output-bag")
        plugins = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
        if storage not in plugins:
            raise ValueError(f"output storage must be sqlite3 or mcap, got {storage!r}")
        ts = get_typestore(Stores.ROS2_KILTED)
        register_sigma_msgs(ts)
        self.writer = Writer(path, version=9, storage_plugin=plugins[storage])
        self.writer.open()
        img = "sensor_msgs/msg/Image"
        self.conns = {
            "mask": self.writer.add_connection(MASK_TOPIC, img, typestore=ts),
            "color": self.writer.add_connection(COLOR_TOPIC, img, typestore=ts),
            "stats": self.writer.add_connection(STATS_TOPIC, "sigma_msgs/msg/SegmentationStats", typestore=ts),
            "class_map": self.writer.add_connection(CLASS_MAP_TOPIC, "sigma_msgs/msg/ClassMap", typestore=ts),
        }
        self.class_names, self.model, self.modality = list(class_names), model, modality
        self.palette = np.asarray(palette, np.uint8).reshape(-1, 3)
        self.frames = 0

    def write(self, log_ns: int, stamp: int, frame_id: str, mask: np.ndarray, color: np.ndarray,
              counts: Any, inference_ms: float, sync_skew_ms: float) -> None:
        """One frame's outputs at log time ``log_ns`` (the RGB message's), stamped like the RGB image.

        counts: ``segmentation_step.count_classes`` of the mask. latency_ms is 0 (no live clock offline).
        """
        from builtin_interfaces.msg import Time
        from rclpy.serialization import serialize_message
        from std_msgs.msg import Header

        from sigma_msgs.msg import ClassMap

        from ..node.image_conversion import array_to_image_msg
        from ..node.segmentation_stats import stats_msg

        sec, nsec = divmod(int(stamp), 1_000_000_000)
        header = Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame_id)
        if self.frames == 0:
            cmap = ClassMap(header=header, ids=list(range(len(self.class_names))), names=self.class_names,
                            colors=self.palette.reshape(-1).tolist())
            self.writer.write(self.conns["class_map"], log_ns, serialize_message(cmap))
        self.frames += 1
        self.writer.write(self.conns["mask"], log_ns, serialize_message(array_to_image_msg(mask, "mono8", header)))
        self.writer.write(self.conns["color"], log_ns, serialize_message(array_to_image_msg(color, "rgb8", header)))
        stats = stats_msg(header, counts, self.class_names, model=self.model, modality=self.modality,
                          width=mask.shape[1], height=mask.shape[0], inference_ms=inference_ms, latency_ms=0.0,
                          sync_skew_ms=sync_skew_ms, frames_processed=self.frames, frames_dropped=0)
        self.writer.write(self.conns["stats"], log_ns, serialize_message(stats))

    def close(self) -> None:
        self.writer.close()


def _iter_bag(opts: ReplayOptions, partial: Optional[list[str]] = None) -> Iterator[tuple[str, int, Any]]:
    """(role, log_ns, deserialised message) for the replayed topics, in the bag's log-time order.

    Read to its end, fewer messages than the bag declares raise ShortReadError, or with ``partial`` (a list)
    add a warning to it (sigma_core.data.bags.read_messages)."""
    roles = {opts.rgb_topic: "rgb", opts.modal_topic: "modal"}
    if opts.label_topic:
        roles[opts.label_topic] = "label"
    with open_bag(opts.bag) as reader:
        available = bag_topics(reader)
        in_bag = {}
        for topic, role in roles.items():
            found = resolve_topic(reader, topic)  # ROS 1 bags may name topics without the leading slash
            if found is None:
                raise BagError(f"bag {opts.bag} has no topic {topic}; its topics are: {describe_topics(reader)}")
            if available[found] not in IMAGE_TYPES:
                raise BagError(f"topic {found} in {opts.bag} is {available[found]}, not an Image or CompressedImage")
            in_bag[found] = role
        conns = [c for c in reader.connections if c.topic in in_bag]
        for conn, log_ns, msg in read_messages(reader, conns, opts.bag, partial):
            yield in_bag[conn.topic], log_ns, msg


def _depth_on_thermal_note(topic: str, encoding: str, raw: np.ndarray, segmenter: Any) -> str:
    """The node's 'a depth camera into a thermal model' report, for a bag: empty when the stream is not depth."""
    reasons = depth_stream_evidence(topic, encoding, raw, False)
    if not reasons:
        return ""
    return (f"{topic} looks like a depth camera ({'; '.join(reasons)}) but {segmenter.model_name} is a thermal "
            f"model, so its masks and scores mean nothing here: replay a depth checkpoint (the bundled depth demo "
            f"model: --checkpoint {bundled_checkpoint('depth')})")


def replay_bag(opts: ReplayOptions, segmenter: Any, out_dir: Optional[Path] = None) -> ReplayResult:
    """Replay ``opts.bag`` through ``segmenter`` (a sigma_core Segmenter); see the module docstring.

    With ``out_dir``, sample frames for the report are kept (``opts.samples``).
    """
    from sigma_core.engine.metrics import compute_metrics

    from .label_matching import LabelMatcher, check_label_ids, frame_confusion

    if opts.label_topic and opts.label_dir:
        raise ValueError("give either a label topic or a label folder, not both")
    if opts.max_pairs is not None and opts.max_pairs < 1:
        raise ValueError(f"--max-pairs must be >= 1 (or left out for every pair), got {opts.max_pairs}")
    if opts.label_dir is not None and not Path(opts.label_dir).is_dir():
        raise FileNotFoundError(f"label folder {opts.label_dir} does not exist")
    class_names = list(segmenter.class_names)
    k = len(class_names)
    table = lookup_palette(np.asarray(segmenter.palette, np.uint8))
    pairer = ApproximateTimePairer(queue_size=opts.queue_size, slop=opts.slop)
    summary = ReplaySummary(mode="offline", source={
        "bag": str(opts.bag), "rgb_topic": opts.rgb_topic, "modal_topic": opts.modal_topic,
        "labels": opts.label_topic or (str(opts.label_dir) if opts.label_dir else "none"),
        "model": segmenter.model_name, "device": str(segmenter.device), "precision": str(segmenter.precision),
        "slop_s": opts.slop, "queue_size": opts.queue_size,
        "registration": opts.registration.mode if opts.registration is not None else "none",
    })
    summary.legend = [(name, tuple(int(v) for v in c))
                      for name, c in zip(class_names, np.asarray(segmenter.palette, np.uint8).reshape(-1, 3))]
    result = ReplayResult(summary)
    total = np.zeros((k, k), np.int64)  # confusion of every scored frame
    labelled = opts.label_topic is not None or opts.label_dir is not None
    pixels = np.zeros(k, np.int64)
    out_bag = OutputBag(Path(opts.output_bag), opts.output_storage, class_names, segmenter.palette,
                        segmenter.model_name, segmenter.scaling.modality) if opts.output_bag else None
    samples = SampleKeeper(opts.samples if out_dir is not None else 0)
    strip_labels = StripLabels(samples)

    label_source = (f"on {opts.label_topic}" if opts.label_topic else f"in {opts.label_dir}")

    def score(stamp: int, mask: np.ndarray, label: np.ndarray) -> None:
        if label.shape != mask.shape:
            raise ValueError(f"label at stamp {stamp} ns is {label.shape[1]}x{label.shape[0]}, "
                             f"mask is {mask.shape[1]}x{mask.shape[0]}: labels must be at the RGB size")
        check_label_ids(label, class_names, f"the label stamped {stamp} ns {label_source}")
        frame = frame_confusion(mask, label, k)
        total[:] += frame  # in place: the closure does not rebind it
        strip_labels.scored(stamp, label)
        result.confusion[stamp] = frame
        summary.frames_scored += 1

    matcher = LabelMatcher(score, horizon_ns=10_000_000_000)  # masks and label-topic images, by stamp

    start = time.perf_counter()
    frames_processed = 0
    non_finite, first_non_finite = 0, ""
    short_read: list[str] = []
    aspect_noted = False
    try:
        for role, log_ns, msg in _iter_bag(opts, short_read if opts.allow_partial else None):
            stamp = stamp_ns(msg)
            if role == "label":
                label = label_from_message(msg, f"the label stamped {stamp} ns on {opts.label_topic}")
                matcher.add_label(stamp, np.array(label))
                continue
            if role == "rgb":
                summary.rgb_messages += 1
            else:
                summary.modal_messages += 1
            pair = pairer.add(0 if role == "rgb" else 1, stamp_seconds(msg), (stamp, log_ns, msg))
            if pair is None:
                continue
            (rgb_stamp, rgb_log, rgb_msg), (modal_stamp, _, modal_msg) = pair.first, pair.second
            summary.expected_pairs += 1
            rgb_arr, rgb_enc = message_to_array(rgb_msg)
            modal, modal_enc = message_to_array(modal_msg)
            if summary.expected_pairs == 1 and segmenter.scaling.modality == "thermal":
                depth_note = _depth_on_thermal_note(opts.modal_topic, modal_enc, modal, segmenter)
                if depth_note:
                    summary.notes.append(depth_note)
            try:
                # what the node runs, registration and resizing included
                frame = segment_pair(segmenter, rgb_arr, rgb_enc, modal, registration=opts.registration)
            except NonFiniteOutputError as e:  # as the node does: no mask rather than a meaningless one
                non_finite += 1
                first_non_finite = first_non_finite or f"first at stamp {rgb_stamp} ns: {e}"
                if opts.max_pairs is not None and summary.expected_pairs >= opts.max_pairs:
                    break
                continue
            rgb, mask, counts, inference_ms = frame.rgb, frame.mask, frame.counts, frame.inference_ms
            frames_processed += 1
            summary.frames += 1
            summary.modality_coverage.append(frame.coverage)
            if frame.aspect_warning and not aspect_noted:
                summary.notes.append(frame.aspect_warning.replace("registration.mode (rig or homography) with "
                                                                  "registration.calibration_file", "--calibration"))
                aspect_noted = True
            summary.inference_ms.append(inference_ms)
            summary.sync_skew_ms.append((rgb_stamp - modal_stamp) / 1e6)
            result.modal_stamp[rgb_stamp] = modal_stamp
            pixels += counts.pixel_count
            if opts.keep_masks:
                result.masks[rgb_stamp] = mask
            if opts.label_dir is not None:
                label = read_label_file(Path(opts.label_dir), rgb_stamp)
                if label is not None:
                    score(rgb_stamp, mask, label)
            elif opts.label_topic:
                matcher.add_mask(rgb_stamp, mask)
            color = None
            if out_bag is not None:
                color = colorize(mask, table)
                out_bag.write(rgb_log, rgb_stamp, rgb_msg.header.frame_id, mask, color, counts, inference_ms,
                              (rgb_stamp - modal_stamp) / 1e6)
            if samples.wants(frames_processed - 1):
                color = colorize(mask, table) if color is None else color
                samples.add(frames_processed - 1, FrameSample(rgb_stamp, rgb, np.array(modal),
                                                              overlay(rgb, color, opts.overlay_alpha), mask=mask,
                                                              label=strip_labels.take(rgb_stamp)))
            if opts.max_pairs is not None and summary.expected_pairs >= opts.max_pairs:
                break
    finally:
        if out_bag is not None:
            out_bag.close()
    summary.wall_seconds = time.perf_counter() - start
    summary.notes += [f"warning (--allow-partial): {w}" for w in short_read]
    if non_finite:
        summary.dropped += non_finite
        summary.notes.append(f"{non_finite} of {summary.expected_pairs} pairs got NaN/infinite logits and no mask "
                             f"(not scored, counted as dropped); {first_non_finite}")
    summary.unpaired_rgb = summary.rgb_messages - summary.expected_pairs
    summary.unpaired_modal = summary.modal_messages - summary.expected_pairs
    summary.class_pixels = {n: int(c) for n, c in zip(class_names, pixels)}
    if labelled:
        if summary.frames_scored:
            summary.metrics = compute_metrics(total, class_names)
        missing = summary.frames - summary.frames_scored
        if missing:
            summary.notes.append(f"{missing} of {summary.frames} segmented frames had no label")
    summary.samples = samples.items()
    return result


def build_parser() -> argparse.ArgumentParser:
    from sigma_core.cli.errors import DefaultsHelpFormatter

    p = argparse.ArgumentParser(
        prog="sigma-replay-eval", formatter_class=DefaultsHelpFormatter,
        description="Replay a bag through the node's pairing and model offline; score, time and report it.",
    )
    p.add_argument("bag", type=Path, help="rosbag2 folder/file (sqlite3 or MCAP) or ROS 1 .bag")
    p.add_argument("--checkpoint", default="", help="Sigma checkpoint (default: the bundled demo model)")
    p.add_argument("--dataset", default=None,
                   help="for a published Sigma checkpoint (.pth): the dataset it was trained on (mfnet, pst900, "
                        "nyudepthv2, sunrgbd, or a dataset.yaml / class-list file)")
    p.add_argument("--rgb-topic", required=True)
    p.add_argument("--modal-topic", required=True, help="thermal or depth image topic")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--label-topic", help="mono8 class-id topic stamped like RGB")
    labels.add_argument("--label-dir", type=Path, help="extracted Label/ folder (files named <RGB stamp ns>.png)")
    p.add_argument("--slop", type=float, default=0.05, help="pairing slop in seconds (the node's sync.slop)")
    p.add_argument("--queue-size", type=int, default=10, help="pairing queue size (the node's sync.queue_size)")
    p.add_argument("--calibration", help="two-camera calibration (sigma-calibrate's, a Kalibr camchain or an OpenCV "
                                         "stereo YAML): register the modality into the RGB view as the node does "
                                         "with registration.calibration_file")
    p.add_argument("--registration-mode", choices=("homography", "rig"),
                   help="with --calibration: the node's registration.mode (default: the file's: rig, or homography "
                        "for a file holding only a homography)")
    p.add_argument("--registration-distance", type=float, default=DEFAULT_DISTANCE_M,
                   help="rig mode, thermal: plane distance in metres (the node's registration.distance_m)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N (an .onnx checkpoint also tensorrt, tensorrt:N)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--output-bag", type=Path, help="write /segmentation/{mask,color_mask,stats,class_map} here")
    p.add_argument("--output-storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--out", type=Path, default=Path("replay_report"), help="report folder")
    p.add_argument("--samples", type=int, default=6, help="frames in the report's strip")
    p.add_argument("--max-pairs", type=int, help="stop after this many pairs (>= 1)")
    p.add_argument("--allow-partial", action="store_true",
                   help="a damaged bag that yields fewer messages than its index declares: score what can be read "
                        "and warn with the counts (default: an error)")
    p.add_argument("--no-html", action="store_true", help="Markdown report only")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_report_folder(args.out)  # before the replay: a user's report.md is never replaced
        if args.registration_mode and not args.calibration:
            raise ValueError(f"--registration-mode {args.registration_mode} needs --calibration FILE")
        if args.calibration:  # before the (slow) model load, as the node does: a bad file fails at once
            try:
                load_calibration(args.calibration)
            except CalibrationError as e:
                raise ValueError(f"--calibration: {e}") from None
        try:
            seg = load_segmenter(args.checkpoint, args.device, args.precision, dataset=args.dataset)
        except ConfigError as e:  # the node's wording names its parameter; here it is a flag
            raise ValueError(str(e).replace("parameter checkpoint", "--checkpoint")) from None
        for line in seg.meta.notes + [f"warning: {w}" for w in seg.meta.warnings]:  # what a .pth needed inferred
            print(line)
        try:
            registration = load_registration(args.registration_mode, args.calibration, seg.scaling,
                                             args.registration_distance)
        except ConfigError as e:
            raise ValueError(f"--calibration: {e}") from None
        opts = ReplayOptions(
            bag=args.bag, rgb_topic=args.rgb_topic, modal_topic=args.modal_topic, label_topic=args.label_topic,
            label_dir=args.label_dir, slop=args.slop, queue_size=args.queue_size, output_bag=args.output_bag,
            output_storage=args.output_storage, samples=args.samples, max_pairs=args.max_pairs,
            allow_partial=args.allow_partial,
            registration=registration,
        )
        result = replay_bag(opts, seg, out_dir=args.out)
    except (ValueError, OSError, RuntimeError) as e:  # BagError is a ValueError; RuntimeError: the model failed
        print(f"sigma-replay-eval: {e}", file=sys.stderr)
        return 2
    summary = result.summary
    for note in summary.notes:
        if note.startswith("warning"):
            print(f"sigma-replay-eval: {note}", file=sys.stderr)
    summary.source["checkpoint"] = args.checkpoint or "bundled demo model"
    paths = write_report(summary, args.out, html_page=not args.no_html)
    print(format_summary(summary))
    print(f"report: {paths['markdown']}" + (f" and {paths['html']}" if "html" in paths else ""))
    if args.output_bag:
        print(f"output bag: {args.output_bag}")
    if summary.frames == 0:
        print("sigma-replay-eval: no frame pairs found; check the topics and --slop", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
