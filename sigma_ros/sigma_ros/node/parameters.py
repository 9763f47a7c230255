"""The node's ROS parameters: declaration, documentation and validation into a plain dataclass.

Every parameter is declared with dynamic typing so that a YAML ``1`` where
``1.0`` was meant is accepted; :func:`parse_node_config` then checks types and
ranges and raises :class:`ConfigError` naming the parameter, the bad value and
what to do. Parameters documented as "unset" default to what the checkpoint
records. ``config/sigma.yaml`` documents the same parameters for users.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from .qos import INPUT_QOS_NAMES

PRECISIONS = ("fp32", "fp16", "bf16")
MODALITIES = ("thermal", "depth")
RUNTIME_PARAMETERS = ("output.overlay_alpha", "output.palette")  # cheap: may change while running


class ConfigError(ValueError):
    """A parameter is missing or invalid; the message says which and what to do."""


@dataclass(frozen=True)
class ParameterSpec:
    default: Any  # None: unset, the checkpoint decides
    description: str


PARAMETERS: dict[str, ParameterSpec] = {
    "checkpoint": ParameterSpec("", "path of a Sigma checkpoint (sigma_core.save_checkpoint); empty: the bundled demo"),
    "dataset": ParameterSpec("", "for a published Sigma checkpoint (.pth): the dataset it was trained on (mfnet, "
                                 "pst900, nyudepthv2, sunrgbd, or a dataset.yaml / class-list file); ignored with a "
                                 "warning for sigma_core checkpoints"),
    "device": ParameterSpec("auto", "auto, cpu, cuda or cuda:N"),
    "precision": ParameterSpec("fp32", "fp32, fp16 or bf16 (on a CPU, bf16 only where native: AVX512-BF16, AMX)"),
    "modality": ParameterSpec("", "thermal or depth; empty: the checkpoint's"),
    "sync.slop": ParameterSpec(0.05, "largest RGB/modality stamp difference of a pair, seconds"),
    "sync.queue_size": ParameterSpec(10, "messages kept per stream while looking for a partner"),
    "input.qos": ParameterSpec("sensor_data", "camera subscriptions: sensor_data (best effort) or reliable"),
    "input.silent_warning_s": ParameterSpec(3.0, "warn when one stream is silent this long while the other is live"),
    "thermal.range": ParameterSpec(None, "[low, high] raw thermal values mapped to 0..1; unset: the checkpoint's"),
    "depth.max_range": ParameterSpec(None, "depth in metres mapped to 1 (farther is clipped); unset: the checkpoint's"),
    "depth.registered": ParameterSpec(True, "depth is registered to the RGB image (needed for segmentation/points)"),
    "output.overlay_alpha": ParameterSpec(0.5, "weight of the class colours in segmentation/overlay, 0..1 (runtime)"),
    "output.palette": ParameterSpec(None, "flat [r, g, b, ...] 0..255, one colour per class; unset: the checkpoint's"),
    "warmup.size": ParameterSpec(None, "[height, width] of the warm-up forward; unset: model input size or 480x640"),
    "debug.min_inference_ms": ParameterSpec(0.0, "testing only: pad each forward to at least this many ms"),
}


@dataclass(frozen=True)
class NodeConfig:
    checkpoint: Path
    dataset: Optional[str]  # None: the checkpoint says (ours); a published checkpoint needs it
    device: str
    precision: str
    modality: Optional[str]  # None: the checkpoint's
    sync_slop: float
    sync_queue_size: int
    input_qos: str
    silent_warning_s: float
    thermal_range: Optional[tuple[float, float]]
    depth_max_range: Optional[float]
    depth_registered: bool
    overlay_alpha: float
    palette: Optional[np.ndarray]  # (K, 3) uint8
    warmup_size: Optional[tuple[int, int]]  # (H, W)
    min_inference_ms: float


def _number(name: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"parameter {name} must be {kind}, got {value!r}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"parameter {name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def parse_alpha(value: Any) -> float:
    alpha = float(_number("output.overlay_alpha", value))
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"parameter output.overlay_alpha must be within 0..1, got {alpha}")
    return alpha


def parse_palette(value: Any, num_classes: Optional[int] = None) -> Optional[np.ndarray]:
    """Flat [r, g, b, r, g, b, ...] list -> (K, 3) uint8; None/empty stays None (the checkpoint's palette)."""
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return None
    values = list(value)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"parameter output.palette must be a list of integers 0..255, got {values!r}")
    if len(values) % 3 or not all(0 <= v <= 255 for v in values):
        raise ConfigError(
            f"parameter output.palette must be flat RGB triplets [r, g, b, ...] with values 0..255; "
            f"got {len(values)} values {values!r}"
        )
    palette = np.asarray(values, np.uint8).reshape(-1, 3)
    if num_classes is not None and len(palette) != num_classes:
        raise ConfigError(
            f"parameter output.palette has {len(palette)} colours but the model has {num_classes} classes: "
            f"give {3 * num_classes} values or leave it unset"
        )
    return palette


def resolve_checkpoint(value: str) -> Path:
    """The checkpoint path to load: ``value``, or the bundled demo model when empty."""
    if not value:
        try:
            from sigma_core.assets import demo_checkpoint
        except ImportError:
            raise ConfigError(
                "parameter checkpoint is empty and this sigma_core has no bundled demo model: "
                "pass a checkpoint, e.g. --ros-args -p checkpoint:=/path/to/model.pt"
            ) from None
        path = Path(demo_checkpoint())
        if not path.is_file():
            raise ConfigError(
                f"parameter checkpoint is empty and the bundled demo model {path} is missing: "
                "pass a checkpoint, e.g. --ros-args -p checkpoint:=/path/to/model.pt"
            )
        return path
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"parameter checkpoint: no such file {str(path)!r}; pass the path of a Sigma checkpoint")
    return path


def parse_node_config(values: Mapping[str, Any]) -> NodeConfig:
    """Parameter values by name (missing ones take their defaults) -> NodeConfig; ConfigError if invalid."""
    unknown = set(values) - set(PARAMETERS)
    if unknown:
        raise ConfigError(f"unknown parameters {sorted(unknown)}; known: {sorted(PARAMETERS)}")
    v = {name: values.get(name, spec.default) for name, spec in PARAMETERS.items()}

    device = v["device"]
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"parameter device must be auto, cpu, cuda or cuda:N; got {device!r}")
    modality = v["modality"] or None
    if modality is not None:
        _choice("modality", modality, MODALITIES)
    dataset = v["dataset"] or None
    if dataset is not None and not isinstance(dataset, str):
        raise ConfigError(f"parameter dataset must be a preset name or a file path, got {dataset!r}")

    slop = float(_number("sync.slop", v["sync.slop"]))
    if not slop > 0:
        raise ConfigError(f"parameter sync.slop must be > 0 seconds, got {slop}")
    queue_size = int(_number("sync.queue_size", v["sync.queue_size"], integer=True))
    if queue_size < 1:
        raise ConfigError(f"parameter sync.queue_size must be >= 1, got {queue_size}")
    silent = float(_number("input.silent_warning_s", v["input.silent_warning_s"]))
    if not silent > 0:
        raise ConfigError(f"parameter input.silent_warning_s must be > 0 seconds, got {silent}")

    thermal_range = v["thermal.range"]
    if thermal_range is not None and len(thermal_range) > 0:
        if len(thermal_range) != 2:
            raise ConfigError(f"parameter thermal.range must be [low, high], got {list(thermal_range)!r}")
        lo, hi = (float(_number("thermal.range", x)) for x in thermal_range)
        if not hi > lo:
            raise ConfigError(f"parameter thermal.range must have high > low, got [{lo}, {hi}]")
        thermal_range = (lo, hi)
    else:
        thermal_range = None
    max_range = v["depth.max_range"]
    if max_range is not None:
        max_range = float(_number("depth.max_range", max_range))
        if not max_range > 0:
            raise ConfigError(f"parameter depth.max_range must be > 0 metres, got {max_range}")
    if not isinstance(v["depth.registered"], bool):
        raise ConfigError(f"parameter depth.registered must be true or false, got {v['depth.registered']!r}")
    warmup_size = v["warmup.size"]
    if warmup_size is not None and len(warmup_size) > 0:
        if len(warmup_size) != 2 or not all(int(_number("warmup.size", x, integer=True)) >= 4 for x in warmup_size):
            raise ConfigError(
                f"parameter warmup.size must be [height, width] of at least 4 pixels, got {list(warmup_size)!r}"
            )
        warmup_size = (int(warmup_size[0]), int(warmup_size[1]))
    else:
        warmup_size = None
    min_ms = float(_number("debug.min_inference_ms", v["debug.min_inference_ms"]))
    if min_ms < 0:
        raise ConfigError(f"parameter debug.min_inference_ms must be >= 0, got {min_ms}")

    return NodeConfig(
        checkpoint=resolve_checkpoint(v["checkpoint"]),
        dataset=dataset,
        device=device,
        precision=_choice("precision", v["precision"], PRECISIONS),
        modality=modality,
        sync_slop=slop,
        sync_queue_size=queue_size,
        input_qos=_choice("input.qos", v["input.qos"], INPUT_QOS_NAMES),
        silent_warning_s=silent,
        thermal_range=thermal_range,
        depth_max_range=max_range,
        depth_registered=v["depth.registered"],
        overlay_alpha=parse_alpha(v["output.overlay_alpha"]),
        palette=parse_palette(v["output.palette"]),
        warmup_size=warmup_size,
        min_inference_ms=min_ms,
    )
