"""The node's ROS parameters, each declared once: default, meaning, parser, and whether it may change at run time.

Every parameter is declared with dynamic typing so that a YAML ``1`` where
``1.0`` was meant is accepted; each spec's parser then checks type and range
and raises :class:`ConfigError` naming the parameter, the bad value and what to
do. Parameters documented as "unset" default to what the checkpoint records.
``config/sigma.yaml`` documents the same parameters for users.

Adding a parameter is one entry in :data:`PARAMETERS` (plus its field in
:class:`NodeConfig`); a ``runtime=True`` one is then validated and applied by
:class:`RuntimeParameters` while the node runs, with no code in the node unless
changing it has side effects. Nothing here imports rclpy.
"""
from __future__ import annotations

import difflib
import math
import re
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from sigma_core.data.calibration import REGISTRATION_MODES
from sigma_core.data.image_encoding import DEFAULT_MAX_PIXELS
from sigma_core.data.registration import DEFAULT_DISTANCE_M
from sigma_core.model_io import MAX_THREADS

from ..errors import ConfigError  # also importable from here, as before

PRECISIONS = ("fp32", "fp16", "bf16")
MODALITIES = ("thermal", "depth")
INPUT_QOS_NAMES = ("sensor_data", "best_effort", "reliable")  # best_effort: sensor_data, by output.qos's name
OUTPUT_QOS_NAMES = ("reliable", "best_effort")
TRANSPORTS = ("raw", "compressed")
TIMER_PERIOD_S = (0.01, 3600.0)  # seconds: the accepted range of a timer period parameter
MAX_IMAGE_SIDE = 8192  # pixels: a warm-up or model input larger than this is a typo, not a camera
MAX_QUEUE = 10_000  # messages: a history or pairing queue longer than this is a typo (and gigabytes of images)
# Parameters that ROS declares on every rclpy node, and those the ROS libraries we use declare on ours
# (diagnostic_updater's Updater), besides our own; plus the qos_overrides.* family. Typos of these are refused too.
ROS_PARAMETERS = ("use_sim_time", "start_type_description_service", "diagnostic_updater.period",
                  "diagnostic_updater.use_fqn")
ROS_PARAMETER_PREFIXES = ("qos_overrides.",)
# diagnostic_updater's name for diagnostics.period_s (its Updater declares it; `ros2 param dump` writes both): one
# setting. Its parameters are read once, when the Updater is made, like diagnostics.period_s.
UPDATER_PERIOD = "diagnostic_updater.period"
READ_AT_START_ROS_PARAMETERS = (UPDATER_PERIOD, "diagnostic_updater.use_fqn")
# How `ros2 param dump` writes a parameter that has no value, and what rcl's YAML parser reads back from it: the
# string "null" (rcl has no YAML null). Reloading a dump must give the same configuration: these mean "unset".
DUMPED_UNSET = ("null", "~")


Parser = Callable[[str, Any], Any]  # (parameter name, raw value) -> parsed value; ConfigError if invalid


# --- parsers: (name, raw value) -> value, ConfigError naming the parameter ---------------------------------------


def _number(name: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.integer, np.floating))
    if isinstance(value, (bool, np.bool_)) or not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"parameter {name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"parameter {name} must be a finite number, got {value!r}")
    return value


def _sequence(name: str, value: Any, what: str) -> list:
    """A list-like parameter value as a list (ROS arrays arrive as lists or array.array); ConfigError for scalars."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise ConfigError(f"parameter {name} must be a list {what}, got {value!r}")
    return list(value)


def _unset(value: Any) -> bool:
    """None, an empty list, or what a `ros2 param dump` of an unset parameter reads back as (DUMPED_UNSET)."""
    if isinstance(value, str):
        return value in DUMPED_UNSET
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def constrained(constraint: str, bounds: Optional[tuple[float, float]] = None) -> Callable[[Parser], Parser]:
    """Attach what a parser accepts, for the ROS parameter descriptor (``ros2 param describe``): ``constraint``
    in words, and ``bounds`` (inclusive [low, high]) that ROS itself enforces as a floating point or integer range.
    """
    def attach(parse: Parser) -> Parser:
        parse.constraint, parse.bounds = constraint, bounds
        return parse
    return attach


@constrained("> 0")
def positive(name: str, value: Any) -> float:
    value = float(_number(name, value))
    if not value > 0:
        raise ConfigError(f"parameter {name} must be > 0, got {value}")
    return value


@constrained(f"{TIMER_PERIOD_S[0]}..{TIMER_PERIOD_S[1]} seconds", TIMER_PERIOD_S)
def timer_period(name: str, value: Any) -> float:
    """Seconds between a timer's calls, within TIMER_PERIOD_S (rclpy's timer overflows int64 ns near 9.2e9 s, and
    a period of nanoseconds would spin a core)."""
    value = positive(name, value)
    low, high = TIMER_PERIOD_S
    if not low <= value <= high:
        raise ConfigError(f"parameter {name} must be within {low}..{high} seconds, got {value}")
    return value


@constrained(">= 0", (0.0, math.inf))
def non_negative(name: str, value: Any) -> float:
    value = float(_number(name, value))
    if value < 0:
        raise ConfigError(f"parameter {name} must be >= 0, got {value}")
    return value


@constrained("an integer >= 1", (1, 2**63 - 1))  # ROS integers are int64
def positive_integer(name: str, value: Any) -> int:
    value = int(_number(name, value, integer=True))
    if value < 1:
        raise ConfigError(f"parameter {name} must be >= 1, got {value}")
    return value


@constrained(f"0 (automatic) or 1..{MAX_THREADS}", (0, MAX_THREADS))
def thread_count(name: str, value: Any) -> int:
    """CPU threads, 1..MAX_THREADS, or 0 for automatic (sigma_core.model_io.inference_threads)."""
    value = int(_number(name, value, integer=True))
    if not 0 <= value <= MAX_THREADS:
        raise ConfigError(f"parameter {name} must be 0 (automatic) or within 1..{MAX_THREADS}, got {value}")
    return value


@constrained(f"an integer 1..{MAX_QUEUE}", (1, MAX_QUEUE))
def queue_length(name: str, value: Any) -> int:
    """Messages kept in a queue or QoS history, 1..MAX_QUEUE."""
    value = positive_integer(name, value)
    if value > MAX_QUEUE:
        raise ConfigError(f"parameter {name} must be within 1..{MAX_QUEUE}, got {value}")
    return value


@constrained("true or false")
def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"parameter {name} must be true or false, got {value!r}")
    return value


def choice(*choices: str) -> Parser:
    def parse(name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"parameter {name} must be one of {', '.join(choices)}; got {value!r}")
        return value
    return constrained("one of " + ", ".join(choices))(parse)


def optional_text(what: str) -> Parser:
    """Empty string: None; else the string itself (ConfigError naming ``what`` for another type)."""
    def parse(name: str, value: Any) -> Optional[str]:
        if value == "":
            return None
        if not isinstance(value, str):
            raise ConfigError(f"parameter {name} must be {what}, got {value!r}")
        return value
    return constrained(f"{what}, or empty")(parse)


def optional_choice(*choices: str) -> Parser:
    """Empty string: None (the checkpoint decides); else one of ``choices``."""
    def parse(name: str, value: Any) -> Optional[str]:
        return None if value == "" else choice(*choices)(name, value)
    return constrained(f"one of {', '.join(choices)}, or empty")(parse)


@constrained("auto, cpu, cuda or cuda:N (an .onnx checkpoint also tensorrt or tensorrt:N)")
def device(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|(cuda|tensorrt)(:\d+)?", value):
        raise ConfigError(f"parameter {name} must be auto, cpu, cuda or cuda:N (an .onnx checkpoint also tensorrt "
                          f"or tensorrt:N); got {value!r}")
    return value


@constrained("a file path, or empty")
def checkpoint(name: str, value: Any) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"parameter {name} must be a path (a string), got {value!r}: quote it in YAML")
    return resolve_checkpoint(value)


@constrained("[low, high] with high > low, or unset")
def thermal_range(name: str, value: Any) -> Optional[tuple[float, float]]:
    if _unset(value):
        return None
    values = _sequence(name, value, "[low, high]")
    if len(values) != 2:
        raise ConfigError(f"parameter {name} must be [low, high], got {values!r}")
    lo, hi = (float(_number(name, x)) for x in values)
    if not hi > lo:
        raise ConfigError(f"parameter {name} must have high > low, got [{lo}, {hi}]")
    return lo, hi


def numbers(count: int, what: str) -> Parser:
    """A list of ``count`` finite numbers (``what`` names them, e.g. "[x, y, z] metres") as a float tuple; unset
    (empty list): None."""
    def parse(name: str, value: Any) -> Optional[tuple[float, ...]]:
        if _unset(value):
            return None
        values = _sequence(name, value, what)
        if len(values) != count:
            raise ConfigError(f"parameter {name} must be {what} ({count} numbers), got {values!r}")
        return tuple(float(_number(name, x)) for x in values)
    return parse


@constrained("> 0, or unset")
def optional_positive(name: str, value: Any) -> Optional[float]:
    return None if _unset(value) else positive(name, value)


@constrained(f"[height, width] of 4..{MAX_IMAGE_SIDE} pixels, or unset")
def image_size(name: str, value: Any) -> Optional[tuple[int, int]]:
    """[height, width] in pixels, 4..MAX_IMAGE_SIDE each; unset: None."""
    if _unset(value):
        return None
    values = _sequence(name, value, "[height, width]")
    if len(values) != 2 or not all(4 <= int(_number(name, x, integer=True)) <= MAX_IMAGE_SIDE for x in values):
        raise ConfigError(
            f"parameter {name} must be [height, width] of 4..{MAX_IMAGE_SIDE} pixels, got {values!r}"
        )
    return int(values[0]), int(values[1])


@constrained("0..1", (0.0, 1.0))
def overlay_alpha(name: str, value: Any) -> float:
    alpha = float(_number(name, value))
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"parameter {name} must be within 0..1, got {alpha}")
    return alpha


@constrained("flat [r, g, b, ...] of 0..255, one triplet per class, or unset")
def palette(name: str, value: Any) -> Optional[np.ndarray]:
    """Flat [r, g, b, r, g, b, ...] list -> (K, 3) uint8; None/empty stays None (the checkpoint's palette)."""
    if _unset(value):
        return None
    values = _sequence(name, value, "of integers [r, g, b, ...]")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        raise ConfigError(f"parameter {name} must be a list of integers 0..255, got {values!r}")
    if len(values) % 3 or not all(0 <= v <= 255 for v in values):
        raise ConfigError(
            f"parameter {name} must be flat RGB triplets [r, g, b, ...] with values 0..255; "
            f"got {len(values)} values {values!r}"
        )
    return np.asarray(values, np.uint8).reshape(-1, 3)


# --- the parameters ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterSpec:
    default: Any  # None: unset, the checkpoint decides
    description: str
    parse: Parser
    field: str  # the NodeConfig attribute that holds the parsed value
    runtime: bool = False  # may change while the node runs (ros2 param set)

    @property
    def constraint(self) -> str:
        """What the parser accepts, in words (the descriptor's additional_constraints)."""
        return getattr(self.parse, "constraint", "")

    @property
    def bounds(self) -> Optional[tuple[float, float]]:
        """Inclusive [low, high] that ROS enforces (integer_range for int bounds, else floating_point_range)."""
        return getattr(self.parse, "bounds", None)


PARAMETERS: dict[str, ParameterSpec] = {
    "checkpoint": ParameterSpec("", "path of a Sigma checkpoint (sigma_core.save_checkpoint); empty: the bundled demo "
                                "model of the modality (thermal unless modality is depth)",
                                checkpoint, "checkpoint"),
    "dataset": ParameterSpec("", "for a published Sigma checkpoint (.pth): the dataset it was trained on (mfnet, "
                                 "pst900, nyudepthv2, sunrgbd, or a dataset.yaml / class-list file); ignored with a "
                                 "warning for sigma_core checkpoints", optional_text("a preset name or a file path"),
                             "dataset"),
    "device": ParameterSpec("auto", "auto, cpu, cuda or cuda:N (.onnx: also tensorrt[:N])", device, "device"),
    "precision": ParameterSpec("fp32", "fp32, fp16 or bf16 (fp16/bf16 for GPUs; on a CPU only where native: "
                               "AMX-FP16, AVX512-BF16)", choice(*PRECISIONS), "precision"),
    "threads": ParameterSpec(0, "CPU threads of the model (torch, or ONNX Runtime for .onnx); 0: $OMP_NUM_THREADS "
                             "if set, else all CPUs (a container's CPU quota if fewer) but one (left to "
                             "decoding, the executor and DDS)", thread_count,
                             "threads"),
    "modality": ParameterSpec("", "thermal or depth; empty: the checkpoint's", optional_choice(*MODALITIES),
                              "modality"),
    "sync.slop": ParameterSpec(0.05, "largest RGB/modality stamp difference of a pair, seconds", positive,
                               "sync_slop"),
    "sync.queue_size": ParameterSpec(10, "messages kept per stream while looking for a partner", queue_length,
                                     "sync_queue_size"),
    "input.qos": ParameterSpec("sensor_data", "camera subscriptions: sensor_data (= best_effort) or reliable",
                               choice(*INPUT_QOS_NAMES), "input_qos"),
    "input.silent_warning_s": ParameterSpec(3.0, "warn when one stream is silent this long while the other is live",
                                            positive, "silent_warning_s"),
    "input.transport": ParameterSpec("raw", "raw (Image) or compressed (CompressedImage on <topic>/compressed, depth "
                                     "on <topic>/compressedDepth)", choice(*TRANSPORTS), "input_transport"),
    "input.max_pixels": ParameterSpec(DEFAULT_MAX_PIXELS, "largest image (width x height) an input message may "
                                      "declare; larger ones are refused before decoding (decompression bombs)",
                                      positive_integer, "input_max_pixels"),
    "thermal.range": ParameterSpec(None, "[low, high] raw thermal values mapped to 0..1; unset: the checkpoint's",
                                   thermal_range, "thermal_range"),
    "depth.max_range": ParameterSpec(None, "depth in metres mapped to 1 (farther is clipped); unset: the checkpoint's",
                                     optional_positive, "depth_max_range"),
    "depth.units": ParameterSpec(0.001, "metres per unit of integer depth images (16UC1/mono16): 0.001 = millimetres "
                                 "(REP 118); 0.00025 for an Intel L515's 0.25 mm", positive, "depth_units"),
    "depth.registered": ParameterSpec(True, "depth is registered to the RGB image (needed for segmentation/points)",
                                      boolean, "depth_registered"),
    "registration.mode": ParameterSpec("none", "how the modality image is brought into the RGB view: none (the "
                                       "cameras are aligned; it is stretched to the RGB size), homography (a 3x3 "
                                       "RGB-pixel -> modality-pixel matrix) or rig (both cameras' intrinsics and "
                                       "pose: thermal through the plane at registration.distance_m, depth "
                                       "reprojected pixel by pixel)", choice(*REGISTRATION_MODES),
                                       "registration_mode"),
    "registration.calibration_file": ParameterSpec("", "calibration of the two cameras: sigma-calibrate's file, "
                                                   "a Kalibr camchain (cam0 = RGB) or an OpenCV stereo YAML (K1 D1 "
                                                   "K2 D2 R T); empty: registration.homography, or rig intrinsics "
                                                   "from rgb/camera_info + modal/camera_info and the pose from "
                                                   "registration.translation/rotation",
                                                   optional_text("a file path"), "calibration_file"),
    "registration.distance_m": ParameterSpec(DEFAULT_DISTANCE_M, "rig mode, thermal: distance of the scene plane "
                                             "the thermal image is registered at, metres in front of the RGB camera",
                                             positive, "registration_distance_m"),
    "registration.homography": ParameterSpec(None, "homography mode without a file: 9 numbers, row-major 3x3, RGB "
                                             "pixel -> modality pixel", numbers(9, "a row-major 3x3 matrix"),
                                             "registration_homography"),
    "registration.translation": ParameterSpec(None, "rig mode without a file: the modality camera's position in "
                                              "the RGB camera's optical frame [x, y, z], metres (a static "
                                              "transform from the RGB to the modality optical frame)",
                                              numbers(3, "[x, y, z] metres"), "registration_translation"),
    "registration.rotation": ParameterSpec([0.0, 0.0, 0.0, 1.0], "rig mode without a file: the modality camera's "
                                           "orientation in the RGB camera's optical frame, quaternion [qx, qy, qz, "
                                           "qw]", numbers(4, "a quaternion [qx, qy, qz, qw]"),
                                           "registration_rotation"),
    "output.overlay_alpha": ParameterSpec(0.5, "weight of the class colours in segmentation/overlay, 0..1 (runtime)",
                                          overlay_alpha, "overlay_alpha", runtime=True),
    "output.palette": ParameterSpec(None, "flat [r, g, b, ...] 0..255, one colour per class; unset: the checkpoint's "
                                    "(runtime)", palette, "palette", runtime=True),
    "output.qos": ParameterSpec("reliable", "per-frame outputs: reliable or best_effort (the class map stays "
                                "latched)", choice(*OUTPUT_QOS_NAMES), "output_qos"),
    "output.depth": ParameterSpec(5, "per-frame outputs: messages kept per topic (QoS history depth)",
                                  queue_length, "output_depth"),
    "lifecycle": ParameterSpec(False, "true: a managed node, configured and activated through the lifecycle services",
                               boolean, "lifecycle"),
    "diagnostics.period_s": ParameterSpec(1.0, "seconds between /diagnostics reports, 0.01..3600", timer_period,
                                          "diagnostics_period_s"),
    "diagnostics.stall_timeout_s": ParameterSpec(5.0, "/diagnostics ERROR when images arrive but no mask comes out "
                                                 "for this long, seconds", positive, "stall_timeout_s"),
    "warmup.size": ParameterSpec(None, "[height, width] of the warm-up forward; unset: model input size or 480x640",
                                 image_size, "warmup_size"),
    "debug.min_inference_ms": ParameterSpec(0.0, "testing only: pad each forward to at least this many ms",
                                            non_negative, "min_inference_ms"),
}


@dataclass(frozen=True)
class NodeConfig:
    checkpoint: Path
    dataset: Optional[str]  # None: the checkpoint says (ours); a published checkpoint needs it
    device: str
    precision: str
    threads: int  # 0: automatic (sigma_core.model_io.inference_threads)
    modality: Optional[str]  # None: the checkpoint's
    sync_slop: float
    sync_queue_size: int
    input_qos: str
    silent_warning_s: float
    input_transport: str
    input_max_pixels: int
    thermal_range: Optional[tuple[float, float]]
    depth_max_range: Optional[float]
    depth_units: float  # metres per unit of integer depth
    depth_registered: bool
    registration_mode: str
    calibration_file: Optional[str]
    registration_distance_m: float
    registration_homography: Optional[tuple[float, ...]]  # 9 values, row-major
    registration_translation: Optional[tuple[float, float, float]]  # metres
    registration_rotation: Optional[tuple[float, float, float, float]]  # qx, qy, qz, qw
    overlay_alpha: float
    palette: Optional[np.ndarray]  # (K, 3) uint8
    output_qos: str
    output_depth: int
    lifecycle: bool
    diagnostics_period_s: float
    stall_timeout_s: float
    warmup_size: Optional[tuple[int, int]]  # (H, W)
    min_inference_ms: float


assert {s.field for s in PARAMETERS.values()} == {f.name for f in fields(NodeConfig)}, "one field per parameter"


def resolve_checkpoint(value: str, modality: Optional[str] = None) -> Path:
    """The checkpoint path to load: ``value``, or when empty the bundled demo model of ``modality`` (None: thermal)."""
    if not value:
        try:
            from sigma_core.assets import demo_checkpoint
        except ImportError:
            raise ConfigError(
                "parameter checkpoint is empty and this sigma_core has no bundled demo model: "
                "pass a checkpoint, e.g. --ros-args -p checkpoint:=/path/to/model.pt"
            ) from None
        path = Path(demo_checkpoint(modality or "thermal"))
        if not path.is_file():
            raise ConfigError(
                f"parameter checkpoint is empty and the bundled {modality or 'thermal'} demo model {path} is missing: "
                "pass a checkpoint, e.g. --ros-args -p checkpoint:=/path/to/model.pt"
            )
        return path
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"parameter checkpoint: no such file {str(path)!r}; pass the path of a Sigma checkpoint")
    return path


def check_palette_fits(palette: Optional[np.ndarray], num_classes: int) -> None:
    """ConfigError unless ``palette`` (K, 3) has one colour per class (None: the checkpoint's, always fits)."""
    if palette is not None and len(palette) != num_classes:
        raise ConfigError(
            f"parameter output.palette has {len(palette)} colours but the model has {num_classes} classes: "
            f"give {3 * num_classes} values or leave it unset"
        )


def check_known(names: Iterable[str]) -> None:
    """ConfigError naming the first parameter that is neither ours nor a standard rclpy one, and the closest known."""
    for name in sorted(names):
        if name in PARAMETERS or name in ROS_PARAMETERS or name.startswith(ROS_PARAMETER_PREFIXES):
            continue
        close = difflib.get_close_matches(name, [*PARAMETERS, *ROS_PARAMETERS], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown parameter {name!r}: {hint}known parameters are {', '.join(PARAMETERS)} (sigma_node --help)"
        )


def check_qos_overrides(names: Iterable[str], topics: Iterable[str], output_prefix: str) -> None:
    """ConfigError naming a ``qos_overrides.<topic>.*`` parameter for one of this node's ``topics`` (fully
    qualified) or a topic under ``output_prefix``: rclpy honours such a parameter only for an entity created with
    QoS overriding options, which this node's are not (their QoS are our parameters), so it would be silently
    ignored. Overrides of other topics (a ``/**`` file shared with other nodes) pass."""
    topics = set(topics)
    for name in sorted(names):
        found = re.fullmatch(r"qos_overrides\.(/.*)\.(publisher|subscription)(_[^.]*)?\.[a-z_]+", name)
        if found and (found[1] in topics or found[1].startswith(output_prefix)):
            raise ConfigError(f"parameter {name} would be ignored: this node's topics take their QoS from input.qos "
                              "(the camera subscriptions) and output.qos / output.depth (the outputs; the class map "
                              "and label info stay reliable and transient local): set those instead")


def parse_node_config(values: Mapping[str, Any]) -> NodeConfig:
    """Parameter values by name (missing ones take their defaults) -> NodeConfig; ConfigError if invalid."""
    check_known(values)
    parsed = {spec.field: spec.parse(name, values.get(name, spec.default)) for name, spec in PARAMETERS.items()}
    if not values.get("checkpoint") and parsed["modality"] == "depth":  # the bundled model that fits the input
        parsed["checkpoint"] = resolve_checkpoint("", "depth")
    cfg = NodeConfig(**parsed)
    check_registration(cfg)
    return cfg


def check_registration(cfg: NodeConfig) -> None:
    """ConfigError when the registration.* parameters contradict each other or miss what the mode needs."""
    mode, file = cfg.registration_mode, cfg.calibration_file
    rotation_given = cfg.registration_rotation not in (None, tuple(PARAMETERS["registration.rotation"].default))
    given = [name for name, value in (("registration.homography", cfg.registration_homography),
                                      ("registration.translation", cfg.registration_translation),
                                      ("registration.rotation", rotation_given)) if value]
    if mode == "none":
        if file or given:
            what = "registration.calibration_file" if file else given[0]
            raise ConfigError(f"parameter {what} is set but registration.mode is none: set registration.mode to "
                              "rig (or homography) to register the modality, or unset it")
        return
    if file and given:
        raise ConfigError(f"parameters registration.calibration_file and {given[0]} are both set: the file holds "
                          f"the calibration; unset {given[0]}")
    if file:
        return
    others = {"rig": [("registration.homography", cfg.registration_homography is not None)],
              "homography": [("registration.translation", cfg.registration_translation is not None),
                             ("registration.rotation", rotation_given)]}[mode]
    for name, is_set in others:  # the other mode's parameter would be silently ignored
        if is_set:
            raise ConfigError(f"parameter {name} is set but registration.mode is {mode}, which does not use it: "
                              "unset it or change registration.mode")
    if mode == "homography" and cfg.registration_homography is None:
        raise ConfigError("registration.mode homography needs registration.calibration_file or "
                          "registration.homography (9 numbers, RGB pixel -> modality pixel)")
    if mode == "rig" and cfg.registration_translation is None:
        raise ConfigError("registration.mode rig needs registration.calibration_file, or registration.translation "
                          "[x, y, z] metres and registration.rotation [qx, qy, qz, qw] (the modality camera's pose "
                          "in the RGB optical frame) with the intrinsics from rgb/camera_info and modal/camera_info")


START_OPTIONS = ("lifecycle", "diagnostics.period_s")  # read before configure: fixed for the node's lifetime


def parse_start_options(values: Mapping[str, Any]) -> tuple[bool, float]:
    """(lifecycle, diagnostics.period_s): what the node needs before it is configured; ConfigError if invalid."""
    return tuple(PARAMETERS[name].parse(name, values.get(name, PARAMETERS[name].default)) for name in START_OPTIONS)


def diagnostics_period_given(given: Mapping[str, Any]) -> Optional[float]:
    """The report period that the -p / params-file values ``given`` (name -> value) set, None if they set none.

    diagnostics.period_s and diagnostic_updater.period are one setting: either may be given; both only with the
    same value (a dump of the node holds both: an edit of one alone would be silently undone by the other).
    ConfigError otherwise.
    """
    periods = {name: timer_period(name, given[name]) for name in ("diagnostics.period_s", UPDATER_PERIOD)
               if name in given}
    if len(set(periods.values())) > 1:
        raise ConfigError(f"parameters diagnostics.period_s ({periods['diagnostics.period_s']}) and {UPDATER_PERIOD} "
                          f"({periods[UPDATER_PERIOD]}) disagree: they are one setting (diagnostic_updater's name "
                          "for it; `ros2 param dump` writes both): give one of them, or the same value in both")
    return next(iter(periods.values()), None)


def describe_parameters() -> str:
    """One line per parameter: name, default, meaning (for ``sigma_node --help``)."""
    width = max(map(len, PARAMETERS))
    lines = []
    for name, spec in PARAMETERS.items():
        default = "unset" if spec.default is None else repr(spec.default)
        lines.append(f"  {name:<{width}}  {spec.description} [default: {default}]")
    return "\n".join(lines)


# --- runtime changes -----------------------------------------------------------------------------------------------


class RuntimeParameters:
    """Validates and applies changes of the ``runtime=True`` parameters while a node runs.

    ``cfg`` is the current NodeConfig (readers take ``self.cfg`` once per use), or None while a lifecycle
    node is unconfigured (changes are then only parsed: configure reads them). A ``managed`` (lifecycle) node
    takes changes of the other parameters too while unconfigured, except START_OPTIONS: a configure that failed
    on a parameter can be retried without a restart. ``fits(cfg)`` raises
    ConfigError when a candidate configuration does not fit the running model; ``on_change(old, new)``
    runs after a change is accepted, for side effects such as republishing the class map.
    Every change is answered: an invalid one of any type is refused with a reason, never an exception.
    """

    def __init__(self, cfg: Optional[NodeConfig], fits: Callable[[NodeConfig], None] = lambda cfg: None,
                 on_change: Callable[[NodeConfig, NodeConfig], None] = lambda old, new: None, managed: bool = False):
        self.cfg = cfg
        self.managed = managed
        self._fits = fits
        self._on_change = on_change
        self._lock = threading.Lock()

    def candidate(self, changes: Mapping[str, Any]) -> Optional[NodeConfig]:
        """The configuration after ``changes`` (name -> raw value); ConfigError if one is invalid."""
        updates = {}
        for name, value in changes.items():
            spec = PARAMETERS.get(name)
            if spec is None:
                continue  # not ours (use_sim_time, qos_overrides.*): rclpy's
            if not spec.runtime:
                if not self.managed or name in START_OPTIONS:
                    raise ConfigError(f"parameter {name} is read once at start-up; restart the node to change it")
                if self.cfg is not None:
                    raise ConfigError(f"parameter {name} is read at configure: deactivate and clean up the node "
                                      "(ros2 lifecycle set), set it, then configure again")
            updates[spec.field] = spec.parse(name, value)
        if self.cfg is None:
            return None
        new = replace(self.cfg, **updates)
        self._fits(new)
        return new

    def validate(self, changes: Mapping[str, Any]) -> Optional[str]:
        """None if ``changes`` may be applied, else the reason it may not."""
        try:
            self.candidate(changes)
        except ConfigError as e:
            return str(e)
        except Exception as e:  # an answer, never an exception out of the executor
            return f"cannot set {', '.join(changes)} to {list(changes.values())!r}: {e!r}"
        return None

    def apply(self, changes: Mapping[str, Any]) -> None:
        """Apply already validated ``changes``."""
        with self._lock:
            old, self.cfg = self.cfg, self.candidate(changes)
        if old is not None and self.cfg is not None:
            self._on_change(old, self.cfg)

    def attach(self, node: Any) -> None:
        """Install the callbacks on an rclpy ``node``: validate on set, apply after set.

        Post-set callbacks came with Iron; on Humble the validating callback applies valid values itself.
        """
        from rcl_interfaces.msg import SetParametersResult  # only here: parsing needs no ROS

        post_set = hasattr(node, "add_post_set_parameters_callback")

        def on_set(params: list) -> SetParametersResult:
            changes = {p.name: p.value for p in params}
            # Declared writable by diagnostic_updater, which never reads them again (its declaring them comes
            # here too: they are not declared yet then).
            fixed = [name for name in changes if name in READ_AT_START_ROS_PARAMETERS and node.has_parameter(name)]
            reason = (f"parameter {fixed[0]} is read once at start-up; restart the node to change it" if fixed
                      else self.validate(changes))
            if reason is None and not post_set:
                self.apply(changes)
            return SetParametersResult(successful=reason is None, reason=reason or "")

        node.add_on_set_parameters_callback(on_set)
        if post_set:
            node.add_post_set_parameters_callback(lambda params: self.apply({p.name: p.value for p in params}))
