"""sigma_segmentation: the ROS 2 node that segments synchronized RGB + thermal/depth frames.

Data path: subscriptions (executor thread) -> input checks -> approximate-time
pairing -> a single-slot mailbox -> a decode thread (decode, RGB conversion,
registration: ``segmentation_step.prepare_pair``) -> a second single-slot
mailbox -> the inference thread (``segmentation_step.segment_prepared``) ->
publishers. The next pair is decoded while the model runs on the current one.
The subscriptions never wait for the model; while it is busy, a newer pair
replaces the waiting one in either mailbox (counted in ``frames_dropped``), so
latency cannot build up and at most four pairs are held.

The node is a managed (lifecycle) node inside: configure loads and warms the
model and creates the publishers, activate subscribes and starts the inference
thread, deactivate stops processing (the model stays loaded), cleanup frees the
model. By default it walks through configure and activate itself at start-up
(a plain node: no lifecycle services, no transition_event topic); with ``lifecycle:=true`` it offers the
standard lifecycle services and waits for a manager (e.g. nav2_lifecycle_manager).

Run: ``sigma_node --ros-args -p checkpoint:=model.pt`` or
``python -m sigma_ros.node --ros-args --params-file config/sigma.yaml``.
"""
from __future__ import annotations

from .. import ros_env  # noqa: F401  (before rclpy: the pip ROS wheels' library path)

# isort: split
from .. import stop_signals

# isort: split
import gc
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import rclpy
from lifecycle_msgs.msg import State
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from sigma_core.data.bags import message_to_array
from sigma_core.data.calibration import CalibrationError
from sigma_core.data.image_encoding import ImageTooLargeError, check_compressed_size
from sigma_core.data.modality import depth_stream_evidence
from sigma_core.model_io import NonFiniteOutputError, inference_threads
from sigma_msgs.msg import ClassMap, SegmentationStats

from ..segmentation_step import PreparedPair, load_segmenter, prepare_pair, segment_prepared
from .diagnostics import HealthMonitor, HealthReport, NodeDiagnostics, decide_health
from .frame_mailbox import LatestMailbox
from .image_conversion import (
    DEPTH_ENCODINGS,
    MODAL_ENCODINGS,
    RGB_ENCODINGS,
    array_to_image_msg,
    image_msg_to_array,
)
from .input_health import (
    JUMP_BACK_TOLERANCE_S,
    ProblemLog,
    Stamp,
    StreamWatch,
    modality_problem,
)
from .mask_rendering import colorize, lookup_palette, overlay
from .pair_synchronizer import PairSynchronizer, stamp_seconds
from .parameters import (
    DUMPED_UNSET,
    MAX_IMAGE_SIDE,
    PARAMETERS,
    START_OPTIONS,
    ConfigError,
    NodeConfig,
    ParameterSpec,
    RuntimeParameters,
    check_known,
    check_palette_fits,
    check_qos_overrides,
    describe_parameters,
    diagnostics_period_given,
    parse_node_config,
    parse_start_options,
)
from .point_cloud import Pinhole, labelled_points, points_to_cloud_msg
from .qos import input_qos, latched_qos, output_qos
from .registration_source import CAMERA_INFO_TOPICS, MODAL, RGB, RegistrationSource, check_calibration_file
from .segmentation_stats import stats_msg

try:  # on real ROS 2 installs with vision_msgs; optional
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

NODE_NAME = "sigma_segmentation"
LOW_COVERAGE = 0.5  # below this fraction of the RGB image covered by the modality the node warns
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def parameter_descriptor(name: str, spec: ParameterSpec, managed: bool = False) -> ParameterDescriptor:
    """The ROS descriptor of one of our parameters: what ``ros2 param describe`` shows, and the range ROS enforces.

    Dynamic typing, so that a YAML ``1`` where ``1.0`` was meant is accepted (our parser converts it); ROS
    then checks a range only against a value of the range's own type, and our parser checks every value.
    Read only unless changeable at run time, or (a ``managed`` node) while unconfigured.
    """
    while_unconfigured = managed and not spec.runtime and name not in START_OPTIONS
    constraint = spec.constraint + ("; set only while unconfigured (read at configure)" if while_unconfigured else "")
    descriptor = ParameterDescriptor(description=spec.description, additional_constraints=constraint,
                                     dynamic_typing=True, read_only=not spec.runtime and not while_unconfigured)
    if spec.bounds is not None:
        low, high = spec.bounds
        if isinstance(low, int) and isinstance(high, int):
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high),
                                                                  step=0.0)]
    return descriptor


# Problem kinds of a message refused on arrival (it never reaches the pairing).
REFUSAL_KINDS = ("unsupported_encoding", "bad_image", "image_too_large", "zero_stamp", "out_of_order")
MILLIMETRE = 0.001  # metres per unit of REP 118's 16UC1 depth, what sigma_core's scaling and the points assume


@dataclass
class _Frame:
    rgb: Any  # sensor_msgs Image or CompressedImage
    modal: Any


@dataclass
class _Prepared:
    """A pair decoded and converted by the decode thread, waiting for the model."""

    frame: _Frame
    pair: PreparedPair
    raw_shape: tuple  # the modality as decoded, for the size-mismatch warning
    registration_mode: str


# Problems of waiting (no images, no pairs, no CameraInfo yet) that a published mask ends.
ENDED_BY_A_MASK = ("no_input", "silent_stream", "no_pairs", "waiting_for_camera_info")


class SigmaSegmentationNode(LifecycleNodeMixin, Node):
    """Subscribes ``rgb/image``, ``modal/image`` (and ``modal/camera_info`` for depth); publishes ``segmentation/*``.

    With ``input.transport:=compressed`` it subscribes ``rgb/image/compressed`` and
    ``modal/image/compressed`` (``modal/image/compressedDepth`` for depth: png or rvl) instead, after remapping
    of the base topics, as image_transport does. Raises ConfigError from the constructor when a
    parameter is invalid or, unless ``lifecycle`` is true, when the model cannot be configured.
    """

    def __init__(self, **kwargs: Any):
        Node.__init__(self, NODE_NAME, **kwargs)
        try:
            self._start()
        except BaseException:  # a half-built node still releases what it holds
            self.destroy_node()
            raise

    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter (refusing unknown ones given to this node); their values by name. ConfigError."""
        # rclpy keeps the -p / params-file values meant for this node here (the same attribute Humble..Kilted).
        overrides = getattr(self, "_parameter_overrides", {})
        check_known(overrides)
        inputs = [self.resolve_topic_name(t) for t in ("rgb/image", "modal/image", *CAMERA_INFO_TOPICS)]
        check_qos_overrides(overrides, [*inputs, *(f"{t}/{suffix}" for t in inputs[:2]
                                                   for suffix in ("compressed", "compressedDepth"))],
                            self.resolve_topic_name("segmentation") + "/")
        # Given as diagnostic_updater.period alone, the period is diagnostics.period_s's value too (one setting).
        period = diagnostics_period_given({name: p.value for name, p in overrides.items()})
        managed = PARAMETERS["lifecycle"].parse("lifecycle", overrides["lifecycle"].value) \
            if "lifecycle" in overrides else PARAMETERS["lifecycle"].default
        for name, spec in PARAMETERS.items():
            # `ros2 param dump` writes an unset parameter as null, which rcl reads back as the string "null":
            # such a parameter stays unset, so that a dump of this node dumps the same again.
            override = overrides.get(name)
            dumped_unset = spec.default is None and override is not None and override.value in DUMPED_UNSET
            default = period if name == "diagnostics.period_s" and period is not None else spec.default
            try:
                self.declare_parameter(name, default, parameter_descriptor(name, spec, managed),
                                       ignore_override=dumped_unset)
            except InvalidParameterValueException as e:  # outside the descriptor's range: our parser's words
                spec.parse(name, overrides[name].value)
                raise ConfigError(f"parameter {name}: {e}") from None
        return {name: self.get_parameter(name).value for name in PARAMETERS}

    def _start(self) -> None:
        self.managed, period = parse_start_options(self._declare_parameters())
        # The configuration lives in self.runtime (self.cfg; None until configured): runtime parameter
        # changes replace it whole.
        self.runtime = RuntimeParameters(None, fits=self._fits_model, on_change=self._on_runtime_change,
                                         managed=self.managed)
        self.seg: Any = None
        self.state = "unconfigured"
        self._configure_error: Optional[str] = None
        self.problems = ProblemLog(self.get_logger().warning)
        self.health = HealthMonitor(2)
        self._accepted_at: list[Optional[float]] = [None, None]  # monotonic time of each stream's last usable image
        self.frames_processed = 0
        self._dropped_before = 0  # frames dropped by earlier activations' mailboxes
        self._mailbox: LatestMailbox[_Frame] = LatestMailbox()  # pairs to decode
        self._mailbox.close()
        self._prepared: LatestMailbox[_Prepared] = LatestMailbox()  # decoded pairs for the model
        self._prepared.close()
        self._worker: Optional[threading.Thread] = None
        self._decoder: Optional[threading.Thread] = None
        self._subscriptions_active: list = []
        self._silence_timer = None
        self._camera: Optional[Pinhole] = None
        self.registration: Optional[RegistrationSource] = None
        self.coverage: Optional[float] = None  # of the last frame
        self._camera_frame = ""
        self.topics = (self.resolve_topic_name("rgb/image"), self.resolve_topic_name("modal/image"))
        if self.managed:
            LifecycleNodeMixin.__init__(self, enable_communication_interface=True)
        else:
            # No rcl state machine: it would advertise ~/transition_event even without the lifecycle services.
            # The transitions below are then plain calls; the mixin's callbacks need only this (empty) set.
            self._managed_entities = set()
        self.runtime.attach(self)
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-JUMP_BACK_TOLERANCE_S),
                          on_clock_change=False),
            post_callback=self._on_clock_jump,
        )
        self.diagnostics = NodeDiagnostics(self, self._health_report, period)
        if self.managed:
            self.get_logger().info("lifecycle node: waiting for configure")
            return
        if self.on_configure(LifecycleState("configuring", State.TRANSITION_STATE_CONFIGURING)) != SUCCESS:
            raise ConfigError(self._configure_error or "configure failed")  # main() logs it and exits 2
        self.on_activate(LifecycleState("activating", State.TRANSITION_STATE_ACTIVATING))

    # --- lifecycle transitions ---------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the parameters, load and warm the model, create the publishers. FAILURE with the reason logged."""
        try:
            cfg = parse_node_config({name: self.get_parameter(name).value for name in PARAMETERS})
            check_calibration_file(cfg)
            self._load_model(cfg)
            self.registration = RegistrationSource(cfg, self.seg.scaling)
        except Exception as e:  # noqa: BLE001 - whatever stops configuring, its reason is logged, never lost
            self.seg = None
            self._configure_error = str(e) if isinstance(e, ConfigError) else (
                f"configuring failed with {type(e).__name__}: {' '.join(str(e).split())}")
            if self.managed:
                self.get_logger().error(f"configure failed: {self._configure_error}")
            return FAILURE
        self._configure_error = None
        self.runtime.cfg = cfg
        self._use_palette(cfg.palette)
        if self.modality == "depth" and not self._points_possible(cfg):
            why = ("registration.mode homography has no 3D geometry" if cfg.registration_mode == "homography" else
                   "depth.registered is false and registration.mode is none (the node has no depth-to-RGB "
                   "extrinsics: set registration.mode rig)")
            self.get_logger().warning(f"segmentation/points is off: {why}")
        self._create_publishers(cfg)
        self.sync = PairSynchronizer(cfg.sync_queue_size, cfg.sync_slop, self._on_pair)
        self._accepted = (RGB_ENCODINGS, DEPTH_ENCODINGS if self.modality == "depth" else MODAL_ENCODINGS)
        self.state = "inactive"
        if self.managed:
            self.get_logger().info(f"configured: {self._describe()}")
        return super().on_configure(state)

    def _load_model(self, cfg: NodeConfig) -> None:
        """Load the checkpoint and run the warm-up forward pass; ConfigError naming what does not fit."""
        self.get_logger().info(f"loading checkpoint {cfg.checkpoint}")
        try:
            threads, why = inference_threads(cfg.threads)
        except ValueError as e:  # a bad $OMP_NUM_THREADS
            raise ConfigError(f"parameter threads is 0 (automatic) and {e}") from None
        seg = load_segmenter(cfg.checkpoint, cfg.device, cfg.precision, dataset=cfg.dataset, modality=cfg.modality,
                             thermal_range=cfg.thermal_range, depth_max_range=cfg.depth_max_range, threads=threads)
        self._threads = f"{threads} CPU thread(s) ({why})"
        for note in seg.meta.notes:  # what was inferred from a published checkpoint
            self.get_logger().info(note)
        for warning in seg.meta.warnings:  # e.g. a dataset parameter our own checkpoint makes unnecessary
            self.get_logger().warning(warning)
        self.seg, self.modality, self.class_names = seg, seg.scaling.modality, list(seg.class_names)
        self._fits_model(cfg)
        if seg.input_size is not None and max(seg.input_size) > MAX_IMAGE_SIDE:
            raise ConfigError(f"checkpoint {str(cfg.checkpoint)!r} records input size {list(seg.input_size)}"
                              f", more than {MAX_IMAGE_SIDE} pixels a side: re-save it with a camera-sized input")
        # An .onnx file of fixed dimensions runs at them only (every image is resized to them): warmed up there.
        size = getattr(seg, "fixed_size", None) or cfg.warmup_size or seg.input_size or (480, 640)
        self.get_logger().info(f"warming up at {size[0]}x{size[1]}")
        try:
            seg.warmup(size)
        except (RuntimeError, MemoryError, ValueError) as e:  # out of memory, a size the network (file) refuses
            raise ConfigError(f"warm-up forward pass at {size[0]}x{size[1]} failed ({e}); set warmup.size to the "
                              "camera's [height, width]") from None

    @property
    def cfg(self) -> Optional[NodeConfig]:
        """The current configuration (runtime parameters may have replaced it since configure); None before."""
        return self.runtime.cfg

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Publishers on, subscriptions created, inference thread started."""
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._publish_class_map()
        self.sync.reset()  # no half pair from an earlier activation
        self._create_subscriptions(self.cfg)
        self.watch = StreamWatch([sub.topic_name for sub in self._subscriptions_active[:2]])  # as subscribed
        self.health.reset()
        # On the steady clock: with use_sim_time the node's clock stands still until /clock comes, when a missing
        # input is the very thing to report.
        self._silence_timer = self.create_timer(1.0, self._check_inputs, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._mailbox, self._prepared = LatestMailbox(), LatestMailbox()
        self._worker = threading.Thread(target=self._run_worker, name="sigma_inference", daemon=True)
        self._decoder = threading.Thread(target=self._run_decoder, name="sigma_decode", daemon=True)
        self._worker.start()
        self._decoder.start()
        self.state = "active"
        self.get_logger().info(f"{'active' if self.managed else 'ready'}: {self._describe()}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop processing: subscriptions gone, the frame in hand finished; the model stays loaded."""
        self._stop_processing()
        self.state = "inactive"
        self.get_logger().info("inactive: subscriptions closed, model kept")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model (and its GPU memory) and the publishers; back to unconfigured."""
        self._release_model()
        self.get_logger().info("unconfigured: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: stop processing and free the model."""
        self._stop_processing()
        self._release_model()
        self.state = "finalized"
        return super().on_shutdown(state)

    def _describe(self) -> str:
        infos = [s.topic_name for s in (getattr(self, "sub_rgb_info", None), getattr(self, "sub_info", None)) if s]
        info = "".join(f", {t}" for t in infos)
        subs = [s.topic_name for s in self._subscriptions_active[:2]] or list(self.topics)
        reg = self.registration
        calibration = reg.registration.calibration if reg is not None and reg.registration is not None else None
        registered = (f"; registration {reg.mode}" + (f" from {calibration.source}" if calibration else
                                                      " (intrinsics from CameraInfo)" if reg.mode == "rig" else "")
                      if reg is not None and reg.mode != "none" else "")
        return (
            f"model {self.seg.model_name} from {self.cfg.checkpoint} ({len(self.class_names)} classes, "
            f"{self.modality}) on {self.seg.device} {self.seg.precision}, {self.seg.runtime}, scan backend "
            f"{self.seg.scan_backend}, {self._threads}, next pair decoded while the model runs; "
            f"pairing {self.sync.backend} (queue {self.cfg.sync_queue_size}, slop {self.cfg.sync_slop} s), "
            f"input {self.cfg.input_transport}, QoS {self.cfg.input_qos}; in: {subs[0]}, {subs[1]}{info}; "
            f"out: {self.pub_mask.topic_name.rsplit('/', 1)[0]}/* ({self.cfg.output_qos}, depth "
            f"{self.cfg.output_depth}){registered}; diagnostics {self.diagnostics.backend}"
        )

    def _create_publishers(self, cfg: NodeConfig) -> None:
        out = output_qos(cfg.output_qos, cfg.output_depth)
        pub = self.create_lifecycle_publisher if self.managed else self.create_publisher
        self.pub_mask = pub(Image, "segmentation/mask", out)
        self.pub_color = pub(Image, "segmentation/color_mask", out)
        self.pub_overlay = pub(Image, "segmentation/overlay", out)
        self.pub_confidence = pub(Image, "segmentation/confidence", out)
        self.pub_stats = pub(SegmentationStats, "segmentation/stats", out)
        self.pub_class_map = pub(ClassMap, "segmentation/class_map", latched_qos())
        self.pub_label_info = pub(LabelInfo, "segmentation/label_info", latched_qos()) if LabelInfo else None
        self.pub_points = (
            pub(PointCloud2, "segmentation/points", out)
            if self.modality == "depth" and self._points_possible(cfg)
            else None
        )
        self._publishers_owned = [p for p in (self.pub_mask, self.pub_color, self.pub_overlay, self.pub_confidence,
                                              self.pub_stats, self.pub_class_map, self.pub_label_info,
                                              self.pub_points) if p is not None]

    def _create_subscriptions(self, cfg: NodeConfig) -> None:
        qos = input_qos(cfg.input_qos)
        if cfg.input_transport == "compressed":
            # image_transport's naming: the base topic (remapped) plus the transport's suffix.
            modal_suffix = "compressedDepth" if self.modality == "depth" else "compressed"
            kinds = [(CompressedImage, f"{self.topics[0]}/compressed"),
                     (CompressedImage, f"{self.topics[1]}/{modal_suffix}")]
        else:
            kinds = [(Image, self.topics[0]), (Image, self.topics[1])]
        self._subscriptions_active = [
            self.create_subscription(msg_type, topic, lambda m, i=i: self._on_image(i, m), qos)
            for i, (msg_type, topic) in enumerate(kinds)
        ]
        need_rgb, need_modal = self.registration.needs_camera_info()
        # Points from a depth image that is not reprojected use the depth camera's own intrinsics.
        need_modal = need_modal or (self.pub_points is not None and self.registration.mode == "none")
        self.sub_rgb_info = (
            self.create_subscription(CameraInfo, CAMERA_INFO_TOPICS[RGB], lambda m: self._on_camera_info(RGB, m),
                                     qos)
            if need_rgb else None
        )
        self.sub_info = (
            self.create_subscription(CameraInfo, CAMERA_INFO_TOPICS[MODAL],
                                     lambda m: self._on_camera_info(MODAL, m), qos)
            if need_modal else None
        )
        self._subscriptions_active += [s for s in (self.sub_info, self.sub_rgb_info) if s is not None]

    def _stop_processing(self) -> None:
        for sub in self._subscriptions_active:
            self.destroy_subscription(sub)
        self._subscriptions_active = []
        self.sub_info = self.sub_rgb_info = None
        if self._silence_timer is not None:
            self.destroy_timer(self._silence_timer)
            self._silence_timer = None
        self._dropped_before = self._frames_dropped()
        for mailbox in (self._mailbox, self._prepared):
            mailbox.close()
            mailbox.dropped = 0  # now in _dropped_before: a second stop (deactivate, then shutdown) adds nothing
        for thread in (self._decoder, self._worker):
            if thread is not None and thread.is_alive():
                thread.join(timeout=30.0)
        self._worker = self._decoder = None

    def _frames_dropped(self) -> int:
        """Pairs replaced by newer ones before they were decoded or segmented, over all activations."""
        return self._dropped_before + self._mailbox.dropped + self._prepared.dropped

    def _release_model(self) -> None:
        for pub in getattr(self, "_publishers_owned", []):
            self.destroy_lifecycle_publisher(pub)
        self._publishers_owned = []
        device = getattr(self.seg, "device", None)
        self.seg = None
        self.runtime.cfg = None
        gc.collect()
        if device is not None and getattr(device, "type", "") == "cuda" and "torch" in sys.modules:
            import torch  # (an ONNX model on CUDA never imported torch: nothing of torch's to free)

            torch.cuda.empty_cache()
        self.state = "unconfigured"

    # --- input (executor thread) -------------------------------------------------------------------

    def _accepts(self, stream: int, encoding: str, what: str) -> bool:
        """Whether stream ``stream`` may carry ``encoding``; reports the problem if not."""
        allowed = self._accepted[stream]
        if encoding in allowed:
            return True
        self.problems.report(
            "unsupported_encoding",
            f"{what}: unsupported encoding {encoding!r} for {'RGB' if stream == 0 else self.modality}; "
            f"expected one of {', '.join(allowed)}; message skipped",
        )
        return False

    def _on_image(self, stream: int, msg: Any) -> None:
        topic = self._subscriptions_active[stream].topic_name
        self.health.received(stream)
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
        if isinstance(msg, Image) and not self._accepts(stream, msg.encoding, topic):
            return
        try:  # sizes from the fields or headers alone: a bomb never reaches the decoder (compressed: worker thread)
            if isinstance(msg, Image):
                image_msg_to_array(msg, self.cfg.input_max_pixels)  # a view: checks size, step and data length
            else:
                check_compressed_size(msg.format, msg.data, self.cfg.input_max_pixels)
        except ValueError as e:
            self._report_bad_image(topic, e, "message skipped")
            return
        self.health.accepted(stream)
        self._accepted_at[stream] = time.monotonic()
        if stream == 0:
            self.sync.add_rgb(msg)
        else:
            self.sync.add_modal(msg)

    def _report_bad_image(self, topic: str, error: ValueError, what_happened: str) -> None:
        if isinstance(error, ImageTooLargeError):
            self.problems.report("image_too_large", f"{topic}: {error}; {what_happened} (input.max_pixels is "
                                 f"{self.cfg.input_max_pixels:,}: raise it only for a camera that large)")
        else:
            self.problems.report("bad_image", f"{topic}: {error}; {what_happened}")

    def _on_camera_info(self, stream: int, msg: CameraInfo) -> None:
        sub = self.sub_rgb_info if stream == RGB else self.sub_info
        topic = sub.topic_name if sub is not None else CAMERA_INFO_TOPICS[stream]
        try:
            self.registration.camera_info(stream, msg, topic)
            if stream == MODAL and self.registration.mode == "none":
                self._camera = Pinhole.from_camera_info(msg)
                self._camera_frame = msg.header.frame_id
        except ValueError as e:  # CalibrationError too
            self.problems.report("bad_camera_info", f"{topic}: {e}")

    def _on_pair(self, rgb: Any, modal: Any) -> None:
        self.health.paired()
        self.watch.paired()
        self._mailbox.put(_Frame(rgb, modal))

    def _time_went_back(self, kind: str, why: str) -> None:
        """Stamps or the clock jumped back: start the streams and the pairing over instead of waiting for the old
        time to come back (what tf2 and message_filters users expect)."""
        if self.state != "active":
            return
        self.watch.restart()
        self.sync.reset()
        self.problems.report(kind, f"time went back: {why}; restarted the streams and the pairing")

    def _on_clock_jump(self, jump: Any) -> None:
        self._time_went_back("clock_jump",
                             f"the node's clock jumped by {jump.delta.nanoseconds * 1e-9:.3f} s (/clock reset)")

    def _check_inputs(self) -> None:
        """Every second: say why no segmentation comes out when inputs are missing, silent or never pair."""
        topics = [sub.topic_name for sub in self._subscriptions_active[:2]]
        after = self.cfg.silent_warning_s
        waited = self.watch.nothing_for(after)
        if waited is not None:
            self.problems.report(
                "no_input",
                f"no messages on {topics[0]} or {topics[1]} for {waited:.0f} s: "
                f"{self._input_hint()}",
            )
        for topic, seconds in self.watch.silent(after):
            self.problems.report(
                "silent_stream",
                f"no messages on {topic} for {seconds:.1f} s while the other camera publishes: "
                f"check the driver, the topic remapping and input.qos; {self._input_hint([topic])}",
            )
        offset = self.watch.unpaired(after)
        now = time.monotonic()
        refused = [t for t, at in zip(topics, self._accepted_at) if at is None or now - at > after]
        if offset is not None and refused:  # its messages arrive, but none is usable: say why, not "the clocks"
            kinds = [k for k in REFUSAL_KINDS if k in self.problems.last]
            last = max(kinds, key=lambda k: self.problems.last[k][0], default=None)
            self.problems.report(
                "no_pairs",
                f"{topics[0]} and {topics[1]} both arrive but every message on {refused[0]} for {after:.0f} s was "
                f"refused, so nothing pairs" + (f"; the last: {self.problems.last[last][1]}" if last else ""),
            )
        elif offset is not None:
            self.problems.report(
                "no_pairs",
                f"{topics[0]} and {topics[1]} both arrive but no pair within sync.slop "
                f"{self.cfg.sync_slop} s for {after:.0f} s: the newest stamps differ by {offset:+.3f} s "
                "(RGB minus modality). If the cameras run on different clocks, synchronise them (PTP/chrony) or "
                "stamp both from one clock; if they are just far apart in time, raise sync.slop",
            )

    def _input_hint(self, topics: Optional[list[str]] = None) -> str:
        """What the graph says about ``topics`` (default both inputs): another message type, or Image topics
        that exist elsewhere (a missing remapping)."""
        known = dict(self.get_topic_names_and_types())
        compressed = self.cfg.input_transport == "compressed"
        image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        # The graph lists our own subscriptions' type too: look for any other type on the same name.
        subscribed = [sub.topic_name for sub in self._subscriptions_active[:2]]
        others = {t: [ty for ty in known.get(t, []) if ty != image_type] for t in topics or subscribed}
        wrong = [f"{t} carries {', '.join(types)}, not {image_type}" for t, types in others.items() if types]
        if wrong:
            return "; ".join(wrong) + f" (remap to a{' compressed' if compressed else ' raw Image'} topic, or set " \
                "input.transport)"
        images = sorted(t for t, types in known.items() if image_type in types and t not in subscribed
                        and not t.startswith(self.pub_mask.topic_name.rsplit("/", 1)[0]))
        what = image_type.rsplit("/", 1)[1]
        incompatible = self._incompatible_publishers(topics or subscribed)
        if incompatible:
            return incompatible
        found = f"{what} topics seen: {', '.join(images[:6])}" if images else f"no {what} topic is published"
        return (f"check that the cameras run and remap rgb/image:=... modal/image:=... ({found}), input.qos and "
                "input.transport")

    def _incompatible_publishers(self, topics: list[str]) -> str:
        """'' or what keeps publishers that exist on ``topics`` from reaching the subscription: a best-effort
        publisher never delivers to a reliable subscription (input.qos reliable)."""
        if self.cfg.input_qos != "reliable":  # best effort matches every publisher
            return ""
        found = []
        for topic in topics:
            best_effort = [i for i in self.get_publishers_info_by_topic(topic)
                           if i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
            if best_effort:
                found.append(f"{len(best_effort)} best-effort publisher(s) on {topic}")
        if not found:
            return ""
        return (f"{'; '.join(found)}, but input.qos is reliable: a reliable subscription never receives from a "
                "best-effort publisher (incompatible QoS); set input.qos:=sensor_data")

    def _check_unique_name(self) -> None:
        """Report another node of this node's name in the graph: its parameter and lifecycle services and its
        /diagnostics status cannot be told apart from this one's (ROS 2 lets both run, and says nothing)."""
        name, namespace = self.get_name(), self.get_namespace()
        same = sum(1 for n, ns in self.get_node_names_and_namespaces() if (n, ns) == (name, namespace))
        if same > 1:
            self.problems.report(
                "duplicate_name",
                f"{same} nodes named {self.get_fully_qualified_name()} run in this ROS domain: ros2 param, ros2 "
                "lifecycle and /diagnostics cannot tell them apart; give each its own namespace (launch argument "
                "namespace:=...) or stop the other one",
            )

    def _health_report(self) -> HealthReport:
        self._check_unique_name()  # once per report, in every lifecycle state
        info = [("state", self.state)]
        if self.seg is not None:
            info += [("registration", self.cfg.registration_mode),
                     ("modality coverage", "-" if self.coverage is None else f"{self.coverage:.1%}"),
                     ("device", str(self.seg.device)), ("precision", str(self.seg.precision)),
                     ("scan backend", str(self.seg.scan_backend)), ("model", self.seg.model_name),
                     ("checkpoint", str(self.cfg.checkpoint)), ("input transport", self.cfg.input_transport)]
        topics = [s.topic_name for s in self._subscriptions_active[:2]] or list(self.topics)
        return decide_health(
            self.health.take(), self.problems, topics, state=self.state, configure_error=self._configure_error,
            stall_timeout_s=self.cfg.stall_timeout_s if self.cfg else 5.0,
            frames_processed=self.frames_processed, frames_dropped=self._frames_dropped(),
            info=info,
        )

    # --- runtime parameters ------------------------------------------------------------------------

    def _fits_model(self, cfg: NodeConfig) -> None:
        """ConfigError if ``cfg`` does not fit the loaded model (a palette with one colour per class)."""
        check_palette_fits(cfg.palette, len(self.class_names))

    def _on_runtime_change(self, old: NodeConfig, new: NodeConfig) -> None:
        """Side effects of runtime changes; plain values (overlay alpha) are read from ``self.cfg`` when used."""
        if new.palette is not old.palette:
            self._use_palette(new.palette)
            if self.state == "active":
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

    def _run_decoder(self) -> None:
        mailbox, prepared = self._mailbox, self._prepared
        while not mailbox.closed:
            frame = mailbox.take(timeout=0.5)
            if frame is None:
                continue
            try:
                item = self._prepare(frame)
            except Exception as e:  # a bad frame must not stop the node
                self.problems.report("processing_error", f"frame at {stamp_seconds(frame.rgb):.6f} s failed: {e!r}")
                continue
            if item is not None:
                prepared.put(item)

    def _run_worker(self) -> None:
        prepared = self._prepared
        while not prepared.closed:
            item = prepared.take(timeout=0.5)
            if item is None:
                continue
            try:
                self._process(item)
            except NonFiniteOutputError as e:  # never published as a confident-looking mask
                self.problems.report("non_finite_output", f"frame at {stamp_seconds(item.frame.rgb):.6f} s not "
                                                          f"published: {e}")
            except Exception as e:  # a bad frame must not stop the node
                self.problems.report("processing_error",
                                     f"frame at {stamp_seconds(item.frame.rgb):.6f} s failed: {e!r}")

    def _decode(self, stream: int, msg: Any) -> Optional[tuple[np.ndarray, str]]:
        """An input message -> (array, encoding), with sigma_core's decoder (the bag tools' too); None if unusable."""
        topic = self._subscriptions_active[stream].topic_name if len(self._subscriptions_active) > stream else ""
        try:
            arr, encoding = message_to_array(msg, self.cfg.input_max_pixels)
        except ValueError as e:
            self._report_bad_image(topic, e, "frame skipped")
            return None
        if not self._accepts(stream, encoding, topic):
            return None
        return arr, encoding

    def _prepare(self, frame: _Frame) -> Optional[_Prepared]:
        """Decode thread: a pair -> what the model needs; None (reported) when it cannot be segmented."""
        rgb_msg, modal_msg = frame.rgb, frame.modal
        decoded = self._decode(0, rgb_msg), self._decode(1, modal_msg)
        if decoded[0] is None or decoded[1] is None:
            return None
        (rgb_arr, rgb_encoding), (raw, modal_encoding) = decoded
        if self.modality == "depth" and raw.dtype.kind in "ui" and self.cfg.depth_units != MILLIMETRE:
            # A camera in other units than REP 118's millimetres (depth.units): metres from here on, so the model's
            # scaling and the point cloud read the same depth. 0 (no return) stays 0.
            raw = raw.astype(np.float32) * np.float32(self.cfg.depth_units)
        self._check_modality(raw, modal_encoding)
        registration = self.registration.registration
        if registration is None:  # rig mode waits for the CameraInfo it takes the intrinsics from
            topics = [s.topic_name for s in (self.sub_rgb_info, self.sub_info) if s is not None]
            waiting = self.registration.waiting_for(topics)
            self.problems.report(
                "waiting_for_camera_info",
                f"frame not published: registration.mode rig takes the intrinsics from CameraInfo and nothing usable "
                f"has arrived on {' and '.join(waiting)} yet: remap rgb/camera_info and modal/camera_info to the "
                "cameras' camera_info topics, or set registration.calibration_file",
            )
            return None
        try:
            pair = prepare_pair(rgb_arr, rgb_encoding, raw, registration)
        except CalibrationError as e:  # images that do not fit the calibration: never a wrong warp
            self.problems.report("registration_error", f"frame not published: {e}")
            return None
        return _Prepared(frame, pair, raw.shape, registration.mode)

    def _process(self, item: _Prepared) -> None:
        """Inference thread: the model on a prepared pair, then every output."""
        rgb_msg, modal_msg = item.frame.rgb, item.frame.modal
        result = segment_prepared(self.seg, item.pair, self.cfg.min_inference_ms)
        rgb, mask, confidence = result.rgb, result.mask, result.confidence
        h, w = mask.shape
        if result.aspect_warning is not None:
            self.problems.report("aspect_ratio", f"{self.topics[0]} and {self.topics[1]}: {result.aspect_warning}")
        elif result.modal_resized:  # the Segmenter resized it (nearest for depth): worth a warning, not a drop
            self.problems.report(
                "size_mismatch",
                f"{self.topics[1]} is {item.raw_shape[1]}x{item.raw_shape[0]} but {self.topics[0]} is {w}x{h}: "
                "resizing the modality to the RGB size",
            )
        self.coverage = result.coverage
        if result.coverage < LOW_COVERAGE:
            self.problems.report(
                "low_coverage",
                f"the modality camera covers only {result.coverage:.0%} of the RGB image after registration "
                f"({item.registration_mode}); the rest gets no {self.modality}: check the calibration and "
                "registration.distance_m, or aim the cameras alike",
            )

        header = rgb_msg.header
        self.pub_mask.publish(array_to_image_msg(mask, "mono8", header))
        self.frames_processed += 1
        if self.frames_processed == 1 or self.problems.last.keys() & ENDED_BY_A_MASK:
            self.problems.resolve(*ENDED_BY_A_MASK)  # a mask came out: waiting for images or pairs is over
        if self.pub_confidence.get_subscription_count():
            self.pub_confidence.publish(array_to_image_msg(confidence, "32FC1", header))
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
            self._publish_points(header, result.modal, modal_msg, rgb, mask, confidence)

        rgb_stamp = stamp_seconds(rgb_msg)
        latency_ms = self._latency_ms(rgb_stamp)
        self.health.output(result.inference_ms, latency_ms)
        self.pub_stats.publish(
            stats_msg(
                header,
                result.counts,
                self.class_names,
                model=self.seg.model_name,
                modality=self.modality,
                width=w,
                height=h,
                inference_ms=result.inference_ms,
                latency_ms=latency_ms,
                sync_skew_ms=(rgb_stamp - stamp_seconds(modal_msg)) * 1e3,
                frames_processed=self.frames_processed,
                frames_dropped=self._frames_dropped(),
                modality_coverage=result.coverage,
            )
        )

    def _check_modality(self, raw: np.ndarray, encoding: str) -> None:
        """Warn when most of a modality image carries nothing for the model (no depth return, thermal clipped),
        and when a thermal model is fed a depth camera (a range cannot fix that: another model can)."""
        topic = self.topics[1]
        if self.modality == "thermal" and self._depth_on_thermal(topic, encoding, raw):
            return
        found = modality_problem(raw, self.seg.scaling)
        if found is None:
            return
        kind, fraction = found
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

    def _depth_on_thermal(self, topic: str, encoding: str, raw: np.ndarray) -> bool:
        """Report (and return True) when the modality stream looks like a depth camera but the model is thermal."""
        base = topic.rsplit("/", 1)[0]
        info_beside = encoding in ("16UC1", "32FC1") and self.count_publishers(f"{base}/camera_info") > 0
        reasons = depth_stream_evidence(topic, encoding, raw, info_beside)
        if not reasons:
            return False
        bundled = "the bundled depth demo model: leave checkpoint empty and set -p modality:=depth"
        self.problems.report(
            "depth_on_thermal_model",
            f"{topic} looks like a depth camera ({'; '.join(reasons)}) but the model ({self.cfg.checkpoint.name}) "
            f"is a thermal model, so its masks mean nothing here; thermal.range cannot fix that. Run a depth "
            f"model: {bundled}, or -p checkpoint:=<a depth checkpoint>. If this really is a thermal camera, set "
            "thermal.range to its [low, high] raw values",
        )
        return True

    def _latency_ms(self, rgb_stamp: float) -> float:
        """Node clock minus the RGB stamp, ms; NaN while the clock has no time yet (use_sim_time before /clock)."""
        now = self.get_clock().now().nanoseconds
        if now == 0:
            self.problems.report("no_clock", "use_sim_time is true but no /clock message has arrived: latency_ms "
                                 "is NaN until one does (play the bag with --clock)")
            return float("nan")
        return (now * 1e-9 - rgb_stamp) * 1e3

    def _points_possible(self, cfg: NodeConfig) -> bool:
        """Whether segmentation/points can be right: depth registered by its driver, or reprojected here."""
        return cfg.registration_mode == "rig" or (cfg.registration_mode == "none" and cfg.depth_registered)

    def _publish_points(self, header: Header, depth: np.ndarray, modal_msg: Any, rgb: np.ndarray,
                        mask: np.ndarray, confidence: np.ndarray) -> None:
        reprojected = self.registration.points_camera()
        if reprojected is not None:  # depth reprojected into the RGB camera: its intrinsics and frame
            camera, rays = reprojected
            points = labelled_points(depth, camera, rgb, mask, confidence, rays)
            self.pub_points.publish(points_to_cloud_msg(points, Header(stamp=header.stamp, frame_id=header.frame_id)))
            return
        camera = self._camera
        if camera is None:
            self.problems.report(
                "no_camera_info",
                f"segmentation/points has subscribers but no CameraInfo has arrived on "
                f"{self.resolve_topic_name('modal/camera_info')}: remap modal/camera_info to the depth camera's "
                "camera_info topic (launch argument camera_info_topic)",
            )
            return
        points = labelled_points(depth, camera, rgb, mask, confidence)
        cloud_header = Header(stamp=header.stamp, frame_id=self._camera_frame or modal_msg.header.frame_id)
        self.pub_points.publish(points_to_cloud_msg(points, cloud_header))

    def destroy_node(self) -> None:
        """Stop the inference thread (it finishes the frame in hand), then the node. Safe on a half-built node."""
        if hasattr(self, "_mailbox"):
            self._stop_processing()
        super().destroy_node()


ROS_ARGUMENT_ERRORS = (_rclpy.RCLError, _rclpy.RCLInvalidROSArgsError, _rclpy.UnknownROSArgsError)


def _rcl_message(error: Exception) -> str:
    """An rcl error's message without the C source locations it carries."""
    return re.sub(r",? at /\S+:\d+", "", " ".join(str(error).split())).strip()


USAGE = """usage: sigma_node [-h] [--ros-args -p NAME:=VALUE ... --params-file FILE -r FROM:=TO ...]

Segments synchronized RGB + thermal/depth images with a Sigma checkpoint.
Subscribes rgb/image, modal/image (sensor_msgs/Image; depth: also modal/camera_info; with
input.transport compressed: <topic>/compressed, depth <topic>/compressedDepth; registration.mode rig
without a calibration file: rgb/camera_info and modal/camera_info);
publishes segmentation/mask, color_mask, overlay, confidence, stats, points (depth), class_map,
and /diagnostics. With -p lifecycle:=true it waits for the lifecycle services (configure, activate).

parameters (--ros-args -p NAME:=VALUE, or a params file such as config/sigma.yaml):
{parameters}

example: sigma_node --ros-args -p checkpoint:=model.pt -r rgb/image:=/camera/color/image_raw \\
             -r modal/image:=/thermal/image_raw
a thermal camera beside the RGB one: add -p registration.mode:=rig -p registration.calibration_file:=rig.yaml
"""


def _print_help() -> None:
    """Print the usage; a reader that stops early (``sigma_node --help | head``) is no error."""
    try:
        print(USAGE.format(parameters=describe_parameters()), flush=True)
    except BrokenPipeError:  # the interpreter's final flush would fail again: point stdout at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of ``sigma_node``: 0 on a clean shutdown or a stop signal, 2 on invalid parameters or arguments."""
    stop_signals.install()
    argv = sys.argv if args is None else ["sigma_node", *args]
    if "-h" in argv[1:] or "--help" in argv[1:]:
        _print_help()
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
        # A signal is noticed between steps; stopping() also catches a stop Python had to drop (see stop_signals).
        while rclpy.ok() and not stop_signals.stopping():
            executor.spin_once(timeout_sec=stop_signals.SPIN_STEP_S)
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
