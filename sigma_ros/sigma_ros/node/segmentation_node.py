"""sigma_segmentation: the ROS 2 node that segments synchronized RGB + thermal/depth frames.

Data path: subscriptions (executor thread) -> input checks -> approximate-time
pairing -> a single-slot mailbox -> one inference thread -> publishers. The
subscriptions never wait for the model; while it is busy, a newer pair replaces
the waiting one (counted in ``frames_dropped``), so latency cannot build up.

Run: ``sigma_node --ros-args -p checkpoint:=model.pt`` or
``python -m sigma_ros.node --ros-args --params-file config/sigma.yaml``.
"""
from __future__ import annotations

from .. import ros_env  # noqa: F401  (before rclpy: the pip ROS wheels' library path)

# isort: split
from .. import stop_signals

# isort: split
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from sigma_core.data.modality import ModalityScaling
from sigma_core.inference import NonFiniteOutputError
from sigma_msgs.msg import ClassMap, SegmentationStats

from .frame_mailbox import LatestMailbox
from .image_conversion import (
    DEPTH_ENCODINGS,
    MODAL_ENCODINGS,
    RGB_ENCODINGS,
    array_to_image_msg,
    image_msg_to_array,
    image_msg_to_rgb8,
)
from .input_health import JUMP_BACK_TOLERANCE_S, ProblemLog, Stamp, StreamWatch, modality_problem
from .mask_rendering import colorize, lookup_palette, overlay
from .pair_synchronizer import PairSynchronizer, stamp_seconds
from .parameters import (
    MAX_IMAGE_SIDE,
    PARAMETERS,
    ConfigError,
    NodeConfig,
    RuntimeParameters,
    check_known,
    check_palette_fits,
    describe_parameters,
    parse_node_config,
)
from .point_cloud import Pinhole, labelled_points, points_to_cloud_msg
from .qos import input_qos, latched_qos, output_qos
from .segmentation_stats import count_classes, stats_msg

try:  # on real ROS 2 installs with vision_msgs; optional
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

NODE_NAME = "sigma_segmentation"


@dataclass
class _Frame:
    rgb: Image
    modal: Image


def load_segmenter(cfg: NodeConfig) -> Any:
    """The sigma_core Segmenter for ``cfg`` (checkpoint, device, precision, modality scaling overrides)."""
    from sigma_core import Segmenter

    try:
        seg = Segmenter.from_checkpoint(str(cfg.checkpoint), device=cfg.device, precision=cfg.precision,
                                        dataset=cfg.dataset)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"cannot run checkpoint {str(cfg.checkpoint)!r} on device {cfg.device!r} "
                          f"with precision {cfg.precision}: {e}") from e
    modality = cfg.modality or seg.modality
    if modality != seg.modality or cfg.thermal_range is not None or cfg.depth_max_range is not None:
        base = seg.scaling
        seg.scaling = ModalityScaling(
            modality=modality,
            range=cfg.thermal_range if cfg.thermal_range is not None else base.range,
            max_range=cfg.depth_max_range if cfg.depth_max_range is not None else base.max_range,
        )
    return seg


class SigmaSegmentationNode(Node):
    """Subscribes ``rgb/image``, ``modal/image`` (and ``modal/camera_info`` for depth); publishes ``segmentation/*``.

    Raises ConfigError from the constructor when a parameter is invalid.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        try:
            self._start()
        except BaseException:  # a half-built node still releases what it holds
            self.destroy_node()
            raise

    def _declare_parameters(self) -> NodeConfig:
        """Declare every parameter (refusing unknown ones given to this node) and parse them; ConfigError."""
        # rclpy keeps the -p / params-file values meant for this node here (the same attribute Humble..Kilted).
        check_known(getattr(self, "_parameter_overrides", {}))
        for name, spec in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=spec.description, dynamic_typing=True,
                                             read_only=not spec.runtime)
            self.declare_parameter(name, spec.default, descriptor)
        return parse_node_config({name: self.get_parameter(name).value for name in PARAMETERS})

    def _load_model(self) -> None:
        """Load the checkpoint and run the warm-up forward pass; ConfigError naming what does not fit."""
        self.get_logger().info(f"loading checkpoint {self.cfg.checkpoint}")
        self.seg = load_segmenter(self.cfg)
        for note in self.seg.meta.notes:  # what was inferred from a published checkpoint
            self.get_logger().info(note)
        for warning in self.seg.meta.warnings:  # e.g. a dataset parameter our own checkpoint makes unnecessary
            self.get_logger().warning(warning)
        self.modality: str = self.seg.scaling.modality
        if self.modality != self.seg.meta.scaling.modality:
            self.get_logger().warning(
                f"modality parameter {self.modality!r} overrides the checkpoint's {self.seg.meta.scaling.modality!r}: "
                "the model was not trained on this input"
            )
        self.class_names = list(self.seg.class_names)
        self._fits_model(self.cfg)
        self._use_palette(self.cfg.palette)
        if self.seg.input_size is not None and max(self.seg.input_size) > MAX_IMAGE_SIDE:
            raise ConfigError(f"checkpoint {str(self.cfg.checkpoint)!r} records input size {list(self.seg.input_size)}"
                              f", more than {MAX_IMAGE_SIDE} pixels a side: re-save it with a camera-sized input")
        size = self.cfg.warmup_size or self.seg.input_size or (480, 640)
        self.get_logger().info(f"warming up at {size[0]}x{size[1]}")
        try:
            self.seg.warmup(size)
        except (RuntimeError, MemoryError) as e:  # torch: out of memory, or a size the network cannot take
            raise ConfigError(f"warm-up forward pass at {size[0]}x{size[1]} failed ({e}); set warmup.size to the "
                              "camera's [height, width]") from None

    def _start(self) -> None:
        # The configuration lives in self.runtime (self.cfg): runtime parameter changes replace it whole.
        self.runtime = RuntimeParameters(self._declare_parameters(), fits=self._fits_model,
                                         on_change=self._on_runtime_change)
        self._load_model()

        self.problems = ProblemLog(self.get_logger().warning)
        self.frames_processed = 0
        self._mailbox: LatestMailbox[_Frame] = LatestMailbox()
        self._camera: Optional[Pinhole] = None
        self._camera_frame = ""
        if self.modality == "depth" and not self.cfg.depth_registered:
            self.get_logger().warning(
                "depth.registered is false: segmentation/points is off (the node has no depth-to-RGB extrinsics)"
            )

        out = output_qos()
        self.pub_mask = self.create_publisher(Image, "segmentation/mask", out)
        self.pub_color = self.create_publisher(Image, "segmentation/color_mask", out)
        self.pub_overlay = self.create_publisher(Image, "segmentation/overlay", out)
        self.pub_confidence = self.create_publisher(Image, "segmentation/confidence", out)
        self.pub_stats = self.create_publisher(SegmentationStats, "segmentation/stats", out)
        self.pub_class_map = self.create_publisher(ClassMap, "segmentation/class_map", latched_qos())
        self.pub_label_info = (
            self.create_publisher(LabelInfo, "segmentation/label_info", latched_qos()) if LabelInfo else None
        )
        self.pub_points = (
            self.create_publisher(PointCloud2, "segmentation/points", out)
            if self.modality == "depth" and self.cfg.depth_registered
            else None
        )
        self._publish_class_map()

        self.sync = PairSynchronizer(self.cfg.sync_queue_size, self.cfg.sync_slop, self._on_pair)
        qos = input_qos(self.cfg.input_qos)
        self.sub_rgb = self.create_subscription(Image, "rgb/image", lambda m: self._on_image(0, m), qos)
        self.sub_modal = self.create_subscription(Image, "modal/image", lambda m: self._on_image(1, m), qos)
        self.sub_info = (
            self.create_subscription(CameraInfo, "modal/camera_info", self._on_camera_info, qos)
            if self.pub_points is not None
            else None
        )
        self.topics = (self.sub_rgb.topic_name, self.sub_modal.topic_name)
        self._accepted = (RGB_ENCODINGS, DEPTH_ENCODINGS if self.modality == "depth" else MODAL_ENCODINGS)
        self.watch = StreamWatch(self.topics)
        self.create_timer(1.0, self._check_inputs)
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-JUMP_BACK_TOLERANCE_S),
                          on_clock_change=False),
            post_callback=self._on_clock_jump,
        )
        self.runtime.attach(self)

        self._worker = threading.Thread(target=self._run_worker, name="sigma_inference", daemon=True)
        self._worker.start()
        info = f", {self.sub_info.topic_name}" if self.sub_info else ""
        self.get_logger().info(
            f"ready: model {self.seg.model_name} from {self.cfg.checkpoint} ({len(self.class_names)} classes, "
            f"{self.modality}) "
            f"on {self.seg.device} {self.seg.precision}, scan backend {self.seg.scan_backend}; "
            f"pairing {self.sync.backend} (queue {self.cfg.sync_queue_size}, slop {self.cfg.sync_slop} s), "
            f"input QoS {self.cfg.input_qos}; in: {self.topics[0]}, {self.topics[1]}{info}; "
            f"out: {self.pub_mask.topic_name.rsplit('/', 1)[0]}/*"
        )

    @property
    def cfg(self) -> NodeConfig:
        """The current configuration (runtime parameters may have replaced it since start-up)."""
        return self.runtime.cfg

    # --- input (executor thread) -------------------------------------------------------------------

    def _on_image(self, stream: int, msg: Image) -> None:
        topic = self.topics[stream]
        stamp = stamp_seconds(msg)
        verdict, previous = self.watch.received(stream, stamp)
        if verdict is Stamp.ZERO:
            self.problems.report(
                "zero_stamp",
                f"{topic}: header.stamp is zero (the publisher does not stamp its images); pairing needs the "
                "capture time: fix the driver; message skipped",
            )
            return
        if verdict is Stamp.OUT_OF_ORDER:
            self.problems.report(
                "out_of_order",
                f"{topic}: stamp {stamp:.6f} s is not after the previous {previous:.6f} s; message skipped",
            )
            return
        if verdict is Stamp.JUMPED_BACK:
            self._time_went_back("stamp_jump", f"{topic}: stamp {stamp:.6f} s is {previous - stamp:.3f} s before "
                                 f"the previous {previous:.6f} s (a bag loop or restart, or a clock stepped back)")
        allowed = self._accepted[stream]
        if msg.encoding not in allowed:
            self.problems.report(
                "unsupported_encoding",
                f"{topic}: unsupported encoding {msg.encoding!r} for {'RGB' if stream == 0 else self.modality}; "
                f"expected one of {', '.join(allowed)}; message skipped",
            )
            return
        try:
            image_msg_to_array(msg)  # a view: checks size, step and data length without copying
        except ValueError as e:
            self.problems.report("bad_image", f"{topic}: {e}; message skipped")
            return
        if stream == 0:
            self.sync.add_rgb(msg)
        else:
            self.sync.add_modal(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self._camera = Pinhole.from_camera_info(msg)
            self._camera_frame = msg.header.frame_id
        except ValueError as e:
            self.problems.report("bad_camera_info", f"{self.sub_info.topic_name}: {e}")

    def _on_pair(self, rgb: Image, modal: Image) -> None:
        self.watch.paired()
        self._mailbox.put(_Frame(rgb, modal))

    def _time_went_back(self, kind: str, why: str) -> None:
        """Stamps or the clock jumped back: start the streams and the pairing over instead of waiting for the old
        time to come back (what tf2 and message_filters users expect)."""
        self.watch.restart()
        self.sync.reset()
        self.problems.report(kind, f"time went back: {why}; restarted the streams and the pairing")

    def _on_clock_jump(self, jump: Any) -> None:
        self._time_went_back("clock_jump",
                             f"the node's clock jumped by {jump.delta.nanoseconds * 1e-9:.3f} s (/clock reset)")

    def _check_inputs(self) -> None:
        """Every second: say why no segmentation comes out when inputs are missing, silent or never pair."""
        after = self.cfg.silent_warning_s
        waited = self.watch.nothing_for(after)
        if waited is not None:
            self.problems.report(
                "no_input",
                f"no messages on {self.topics[0]} or {self.topics[1]} for {waited:.0f} s: "
                f"{self._input_hint()}",
            )
        for topic, seconds in self.watch.silent(after):
            self.problems.report(
                "silent_stream",
                f"no messages on {topic} for {seconds:.1f} s while the other camera publishes: "
                f"check the driver, the topic remapping and input.qos; {self._input_hint([topic])}",
            )
        offset = self.watch.unpaired(after)
        if offset is not None:
            self.problems.report(
                "no_pairs",
                f"{self.topics[0]} and {self.topics[1]} both arrive but no pair within sync.slop "
                f"{self.cfg.sync_slop} s for {after:.0f} s: the newest stamps differ by {offset:+.3f} s "
                "(RGB minus modality). If the cameras run on different clocks, synchronise them (PTP/chrony) or "
                "stamp both from one clock; if they are just far apart in time, raise sync.slop",
            )

    def _input_hint(self, topics: Optional[list[str]] = None) -> str:
        """What the graph says about ``topics`` (default both inputs): another message type, or Image topics
        that exist elsewhere (a missing remapping)."""
        known = dict(self.get_topic_names_and_types())
        image_type = "sensor_msgs/msg/Image"
        # The graph lists our own subscriptions' type too: look for any other type on the same name.
        others = {t: [ty for ty in known.get(t, []) if ty != image_type] for t in topics or self.topics}
        wrong = [f"{t} carries {', '.join(types)}, not {image_type}" for t, types in others.items() if types]
        if wrong:
            return "; ".join(wrong) + " (remap to a raw Image topic)"
        images = sorted(t for t, types in known.items() if image_type in types and t not in self.topics
                        and not t.startswith(self.pub_mask.topic_name.rsplit("/", 1)[0]))
        found = f"Image topics seen: {', '.join(images[:6])}" if images else "no Image topic is published"
        return f"check that the cameras run and remap rgb/image:=... modal/image:=... ({found}), and input.qos"

    # --- runtime parameters ------------------------------------------------------------------------

    def _fits_model(self, cfg: NodeConfig) -> None:
        """ConfigError if ``cfg`` does not fit the loaded model (a palette with one colour per class)."""
        check_palette_fits(cfg.palette, len(self.class_names))

    def _on_runtime_change(self, old: NodeConfig, new: NodeConfig) -> None:
        """Side effects of runtime changes; plain values (overlay alpha) are read from ``self.cfg`` when used."""
        if new.palette is not old.palette:
            self._use_palette(new.palette)
            self._publish_class_map()

    def _use_palette(self, palette: Optional[np.ndarray]) -> None:
        """(K, 3) uint8 class colours, or None for the checkpoint's; also the lookup table the worker renders with."""
        self._palette = palette if palette is not None else np.asarray(self.seg.palette, np.uint8)
        self._table = lookup_palette(self._palette)

    def _publish_class_map(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        ids = list(range(len(self.class_names)))
        self.pub_class_map.publish(
            ClassMap(header=header, ids=ids, names=self.class_names, colors=self._palette.reshape(-1).tolist())
        )
        if self.pub_label_info is not None:
            classes = [VisionClass(class_id=i, class_name=n) for i, n in enumerate(self.class_names)]
            self.pub_label_info.publish(LabelInfo(header=header, class_map=classes, threshold=0.0))

    # --- inference (worker thread) -----------------------------------------------------------------

    def _run_worker(self) -> None:
        while not self._mailbox.closed:
            frame = self._mailbox.take(timeout=0.5)
            if frame is None:
                continue
            try:
                self._process(frame)
            except NonFiniteOutputError as e:  # never published as a confident-looking mask
                self.problems.report("non_finite_output", f"frame at {stamp_seconds(frame.rgb):.6f} s not "
                                                          f"published: {e}")
            except Exception as e:  # a bad frame must not stop the node
                self.problems.report("processing_error", f"frame at {stamp_seconds(frame.rgb):.6f} s failed: {e!r}")

    def _process(self, frame: _Frame) -> None:
        rgb_msg, modal_msg = frame.rgb, frame.modal
        rgb = np.ascontiguousarray(image_msg_to_rgb8(rgb_msg))
        raw = image_msg_to_array(modal_msg)
        h, w = rgb.shape[:2]
        if raw.shape[:2] != (h, w):  # the Segmenter resizes it (nearest for depth): worth a warning, not a drop
            self.problems.report(
                "size_mismatch",
                f"{self.topics[1]} is {raw.shape[1]}x{raw.shape[0]} but {self.topics[0]} is {w}x{h}: "
                "resizing the modality to the RGB size",
            )
        self._check_modality(raw)

        start = time.perf_counter()
        mask, confidence = self.seg(rgb, raw)
        inference_ms = (time.perf_counter() - start) * 1e3
        if self.cfg.min_inference_ms > inference_ms:  # testing only: a slower model
            time.sleep((self.cfg.min_inference_ms - inference_ms) * 1e-3)
        mask = np.ascontiguousarray(mask, np.uint8)

        header = rgb_msg.header
        self.pub_mask.publish(array_to_image_msg(mask, "mono8", header))
        self.frames_processed += 1
        if self.pub_confidence.get_subscription_count():
            conf = np.ascontiguousarray(confidence, np.float32)
            self.pub_confidence.publish(array_to_image_msg(conf, "32FC1", header))
        want_color = self.pub_color.get_subscription_count() > 0
        want_overlay = self.pub_overlay.get_subscription_count() > 0
        if want_color or want_overlay:
            color = colorize(mask, self._table)
            if want_color:
                self.pub_color.publish(array_to_image_msg(color, "rgb8", header))
            if want_overlay:
                blended = overlay(rgb, color, self.cfg.overlay_alpha)
                self.pub_overlay.publish(array_to_image_msg(blended, "rgb8", header))
        if self.pub_points is not None and self.pub_points.get_subscription_count():
            self._publish_points(header, raw, modal_msg, rgb, mask, confidence)

        counts = count_classes(mask, confidence, len(self.class_names))
        rgb_stamp = stamp_seconds(rgb_msg)
        latency_ms = self._latency_ms(rgb_stamp)
        self.pub_stats.publish(
            stats_msg(
                header,
                counts,
                self.class_names,
                model=self.seg.model_name,
                modality=self.modality,
                width=w,
                height=h,
                inference_ms=inference_ms,
                latency_ms=latency_ms,
                sync_skew_ms=(rgb_stamp - stamp_seconds(modal_msg)) * 1e3,
                frames_processed=self.frames_processed,
                frames_dropped=self._mailbox.dropped,
            )
        )

    def _check_modality(self, raw: np.ndarray) -> None:
        """Warn when most of a modality image carries nothing for the model (no depth return, thermal clipped)."""
        found = modality_problem(raw, self.seg.scaling)
        if found is None:
            return
        kind, fraction = found
        topic = self.topics[1]
        if kind == "invalid_depth":
            message = (f"{topic}: {fraction:.0%} of depth pixels are 0/NaN/inf (no return); "
                       "they are left out of segmentation/points")
        else:
            finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
            seen = f"{finite.min()}..{finite.max()}" if finite.size else "all NaN/inf"
            lo_hi = self.seg.scaling.range
            message = (f"{topic}: {fraction:.0%} of thermal pixels are NaN/inf or outside the thermal range "
                       f"{list(lo_hi) if lo_hi else 'of the image'} ({raw.dtype} values {seen}), so the model sees "
                       "a blank thermal image: set thermal.range to the camera's [low, high] raw values "
                       "(mono8: [0, 255]; 32FC1 Kelvin: e.g. [250, 350]) or check the camera")
        self.problems.report(kind, message)

    def _latency_ms(self, rgb_stamp: float) -> float:
        """Node clock minus the RGB stamp, ms; NaN while the clock has no time yet (use_sim_time before /clock)."""
        now = self.get_clock().now().nanoseconds
        if now == 0:
            self.problems.report("no_clock", "use_sim_time is true but no /clock message has arrived: latency_ms "
                                 "is NaN until one does (play the bag with --clock)")
            return float("nan")
        return (now * 1e-9 - rgb_stamp) * 1e3

    def _publish_points(self, header: Header, depth: np.ndarray, modal_msg: Image, rgb: np.ndarray,
                        mask: np.ndarray, confidence: np.ndarray) -> None:
        camera = self._camera
        if camera is None:
            topic = self.sub_info.topic_name
            self.problems.report(
                "no_camera_info",
                f"segmentation/points has subscribers but no CameraInfo has arrived on {topic}: remap "
                "modal/camera_info to the depth camera's camera_info topic (launch argument camera_info_topic)",
            )
            return
        points = labelled_points(depth, camera, rgb, mask, confidence)
        cloud_header = Header(stamp=header.stamp, frame_id=self._camera_frame or modal_msg.header.frame_id)
        self.pub_points.publish(points_to_cloud_msg(points, cloud_header))

    def destroy_node(self) -> None:
        """Stop the inference thread (it finishes the frame in hand), then the node. Safe on a half-built node."""
        mailbox, worker = getattr(self, "_mailbox", None), getattr(self, "_worker", None)
        if mailbox is not None:
            mailbox.close()
        if worker is not None and worker.is_alive():
            worker.join(timeout=10.0)
        super().destroy_node()


ROS_ARGUMENT_ERRORS = (_rclpy.RCLError, _rclpy.RCLInvalidROSArgsError, _rclpy.UnknownROSArgsError)


def _rcl_message(error: Exception) -> str:
    """An rcl error's message without the C source locations it carries."""
    return re.sub(r",? at /\S+:\d+", "", " ".join(str(error).split())).strip()


USAGE = """usage: sigma_node [-h] [--ros-args -p NAME:=VALUE ... --params-file FILE -r FROM:=TO ...]

Segments synchronized RGB + thermal/depth images with a Sigma checkpoint.
Subscribes rgb/image, modal/image (sensor_msgs/Image; depth: also modal/camera_info);
publishes segmentation/mask, color_mask, overlay, confidence, stats, points (depth), class_map.

parameters (--ros-args -p NAME:=VALUE, or a params file such as config/sigma.yaml):
{parameters}

example: sigma_node --ros-args -p checkpoint:=model.pt -r rgb/image:=/camera/color/image_raw \\
             -r modal/image:=/thermal/image_raw
"""


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``sigma_node``: 0 on a clean shutdown or a stop signal, 2 on invalid parameters or arguments."""
    stop_signals.install()
    argv = sys.argv if args is None else ["sigma_node", *args]
    if "-h" in argv[1:] or "--help" in argv[1:]:
        print(USAGE.format(parameters=describe_parameters()))
        return 0
    log = rclpy.logging.get_logger(NODE_NAME)
    node = None
    try:
        try:
            rclpy.init(args=argv, **stop_signals.ros_init_options())
            node = SigmaSegmentationNode()
        except ROS_ARGUMENT_ERRORS as e:  # unparsable --ros-args, -p value or params file
            log.error(f"invalid --ros-args or parameters file: {_rcl_message(e)}")
            return 2
        # One executor thread is enough: inference has its own thread, so callbacks never wait for the model.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=stop_signals.SPIN_STEP_S)  # a signal is noticed between steps
    except ConfigError as e:
        log.error(f"invalid configuration: {e}")
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
