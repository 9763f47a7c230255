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
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
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
from .input_health import ProblemLog, StreamWatch
from .mask_rendering import colorize, lookup_palette, overlay
from .pair_synchronizer import PairSynchronizer, stamp_seconds
from .parameters import (
    PARAMETERS,
    RUNTIME_PARAMETERS,
    ConfigError,
    NodeConfig,
    parse_alpha,
    parse_node_config,
    parse_palette,
)
from .point_cloud import Pinhole, depth_to_metres, labelled_points, points_to_cloud_msg
from .qos import input_qos, latched_qos, output_qos
from .segmentation_stats import count_classes, stats_msg

try:  # on real ROS 2 installs with vision_msgs; optional
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

NODE_NAME = "sigma_segmentation"
# Post-set parameter callbacks came with Iron; on Humble the validating callback applies the values itself.
_POST_SET_CALLBACKS = hasattr(Node, "add_post_set_parameters_callback")
MOSTLY_INVALID_DEPTH = 0.5  # warn when more than this fraction of a depth frame has no return


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
        for name, spec in PARAMETERS.items():
            self.declare_parameter(
                name,
                spec.default,
                ParameterDescriptor(
                    description=spec.description,
                    dynamic_typing=True,
                    read_only=name not in RUNTIME_PARAMETERS,
                ),
            )
        values = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.cfg = parse_node_config(values)

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
        self._use_palette(self.cfg.palette)
        parse_palette(self._palette.reshape(-1).tolist(), len(self.class_names))  # the palette must fit the model
        self._alpha = self.cfg.overlay_alpha
        self.seg.warmup(self.cfg.warmup_size)

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
        self.create_timer(1.0, self._check_silence)
        self.add_on_set_parameters_callback(self._validate_runtime_parameters)
        if _POST_SET_CALLBACKS:
            self.add_post_set_parameters_callback(self._apply_runtime_parameters)

        self._worker = threading.Thread(target=self._run_worker, name="sigma_inference", daemon=True)
        self._worker.start()
        info = f", {self.sub_info.topic_name}" if self.sub_info else ""
        self.get_logger().info(
            f"ready: model {self.seg.model_name} ({len(self.class_names)} classes, {self.modality}) "
            f"on {self.seg.device} {self.seg.precision}, scan backend {self.seg.scan_backend}; "
            f"pairing {self.sync.backend} (queue {self.cfg.sync_queue_size}, slop {self.cfg.sync_slop} s), "
            f"input QoS {self.cfg.input_qos}; in: {self.topics[0]}, {self.topics[1]}{info}; "
            f"out: {self.pub_mask.topic_name.rsplit('/', 1)[0]}/*"
        )

    # --- input (executor thread) -------------------------------------------------------------------

    def _on_image(self, stream: int, msg: Image) -> None:
        topic = self.topics[stream]
        stamp = stamp_seconds(msg)
        previous = self.watch.received(stream, stamp)
        if previous is not None:
            self.problems.report(
                "out_of_order",
                f"{topic}: stamp {stamp:.6f} s is not after the previous {previous:.6f} s; message skipped",
            )
            return
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
        self._mailbox.put(_Frame(rgb, modal))

    def _check_silence(self) -> None:
        for topic, seconds in self.watch.silent(self.cfg.silent_warning_s):
            self.problems.report(
                "silent_stream",
                f"no messages on {topic} for {seconds:.1f} s while the other camera publishes: "
                "check the driver, the topic remapping and input.qos",
            )

    # --- runtime parameters ------------------------------------------------------------------------

    def _validate_runtime_parameters(self, params: list[Parameter]) -> SetParametersResult:
        try:
            for p in params:
                if p.name == "output.overlay_alpha":
                    parse_alpha(p.value)
                elif p.name == "output.palette":
                    parse_palette(p.value, len(self.class_names))
        except ConfigError as e:
            return SetParametersResult(successful=False, reason=str(e))
        if not _POST_SET_CALLBACKS:  # Humble: the values are valid, so apply them now
            self._apply_runtime_parameters(params)
        return SetParametersResult(successful=True)

    def _apply_runtime_parameters(self, params: list[Parameter]) -> None:
        for p in params:
            if p.name == "output.overlay_alpha":
                self._alpha = parse_alpha(p.value)
            elif p.name == "output.palette":
                self._use_palette(parse_palette(p.value, len(self.class_names)))
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
        if self.modality == "depth":
            _, valid = depth_to_metres(raw)
            invalid = 1.0 - float(valid.mean())
            if invalid > MOSTLY_INVALID_DEPTH:
                self.problems.report(
                    "invalid_depth",
                    f"{self.topics[1]}: {invalid:.0%} of depth pixels are 0/NaN/inf (no return); "
                    "they are left out of segmentation/points",
                )

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
                self.pub_overlay.publish(array_to_image_msg(overlay(rgb, color, self._alpha), "rgb8", header))
        if self.pub_points is not None and self.pub_points.get_subscription_count():
            self._publish_points(header, raw, modal_msg, rgb, mask, confidence)

        counts = count_classes(mask, confidence, len(self.class_names))
        rgb_stamp = stamp_seconds(rgb_msg)
        latency_ms = (self.get_clock().now().nanoseconds * 1e-9 - rgb_stamp) * 1e3
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
        """Stop the inference thread (it finishes the frame in hand), then the node."""
        self._mailbox.close()
        if self._worker.is_alive():
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``sigma_node``: 0 on a clean shutdown, 2 on invalid parameters."""
    rclpy.init(args=args)
    node = None
    try:
        node = SigmaSegmentationNode()
        # One executor thread is enough: inference has its own thread, so callbacks never wait for the model.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ConfigError as e:
        rclpy.logging.get_logger(NODE_NAME).error(f"invalid configuration: {e}")
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
