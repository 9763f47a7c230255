"""What runs around any Sigma network, torch-free: camera images -> network inputs, logits -> mask.

The torch Segmenter (sigma_core.inference) and the ONNX one (sigma_core.onnx_runtime) both use these, so a
model sees the same values whichever runtime runs it; nothing here imports torch (a deployment with
ONNX Runtime has no torch).
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from .data.modality import ModalityScaling
from .data.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_modal, normalize_rgb, to_chw

MAX_CLASSES = 255  # class ids 0..254 in a uint8 mask; 255 is the ignore id
MAX_CLASS_NAME = 256  # characters: a longer "class name" is damage (it would go out in every ClassMap message)
MAX_INPUT_SIDE = 8192  # pixels: a recorded or fixed network input larger than this is a typo, not a camera
MAX_NORMALIZED = 1e4  # |(v - mean) / std| for v in 0..1 beyond this: mean/std were not meant for 0..1 values


class NonFiniteOutputError(RuntimeError):
    """The network gave NaN/inf logits for a frame; its mask would be meaningless, so none is returned."""


def check_description(num_classes: int, class_names: Any, palette: Any, normalization: Any, input_size: Any,
                      source: str) -> None:
    """ValueError naming ``source`` and the first thing wrong with what a model file says about its model.

    Every model file (our checkpoints, sigma-export's ONNX files) is checked by this one function, so a file
    cannot carry a description one runtime refuses and another runs. num_classes: the logits' channels K.
    class_names: K distinct printable strings (at most MAX_CLASSES, each at most MAX_CLASS_NAME characters); palette: K
    [r, g, b] integers 0..255; normalization: {"mean": [3], "std": [3]} finite, std > 0, for 0..1 values;
    input_size: None or [H, W] integers 4..MAX_INPUT_SIDE.
    """
    from .data.labels import check_class_names

    if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
        raise ValueError(f"{source}: class names must be a list of strings, got {_shorten(class_names)}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"{source}: {num_classes} classes do not fit a uint8 mask (1..{MAX_CLASSES}; 255 is the "
                         "ignore id)")
    if len(class_names) != num_classes:
        raise ValueError(f"{source}: {len(class_names)} class names for a model with {num_classes} classes")
    long_name = next((n for n in class_names if len(n) > MAX_CLASS_NAME), None)
    if long_name is not None:
        raise ValueError(f"{source}: a class name of {len(long_name)} characters ({_shorten(long_name)}); names "
                         f"are at most {MAX_CLASS_NAME}")
    controlled = next((n for n in class_names if not n.isprintable()), None)
    if controlled is not None:  # a newline or escape code forges log lines and breaks report tables
        raise ValueError(f"{source}: class name {controlled!r} holds control characters (newline, tab, escape)")
    check_class_names(class_names, source)
    if not (isinstance(palette, (list, tuple)) and len(palette) == num_classes
            and all(isinstance(c, (list, tuple)) and len(c) == 3 and all(_is_byte(v) for v in c) for c in palette)):
        raise ValueError(f"{source}: palette must be {num_classes} [r, g, b] colours with integer values 0..255, "
                         f"got {_shorten(palette)}")
    _check_normalization(normalization, source)
    if input_size is not None and not (
            isinstance(input_size, (list, tuple)) and len(input_size) == 2
            and all(_is_integer(v) and 4 <= v <= MAX_INPUT_SIDE for v in input_size)):
        raise ValueError(f"{source}: input_size must be (H, W) with both 4..{MAX_INPUT_SIDE}, or None; got "
                         f"{_shorten(input_size)}")


def _check_normalization(norm: Any, source: str) -> None:
    usage = "{'mean': [3 numbers], 'std': [3 numbers > 0]} for 0..1 values (ImageNet's: mean 0.485 0.456 0.406)"
    if not (isinstance(norm, dict) and set(norm) == {"mean", "std"}
            and all(isinstance(norm[k], (list, tuple)) and len(norm[k]) == 3 for k in ("mean", "std"))
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (*norm["mean"], *norm["std"]))):
        raise ValueError(f"{source}: normalization must be {usage}, got {_shorten(norm)}")
    if not all(math.isfinite(v) for v in (*norm["mean"], *norm["std"])) or min(norm["std"]) <= 0:
        raise ValueError(f"{source}: normalization must be finite with std > 0, got {norm}")
    reach = max(abs(v - m) / s for m, s in zip(norm["mean"], norm["std"]) for v in (0.0, 1.0))
    if reach > MAX_NORMALIZED:
        raise ValueError(f"{source}: normalization {norm} maps 0..1 pixel values to +-{reach:.3g} (limit "
                         f"{MAX_NORMALIZED:g}); it must be {usage}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_byte(value: Any) -> bool:
    return _is_integer(value) and 0 <= value <= 255


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def modal_to_unit(modal: np.ndarray, scaling: ModalityScaling, size: tuple[int, int]) -> np.ndarray:
    """Raw modality (H', W') or (H', W', C) -> (H, W) float32 in [0, 1] at ``size`` = (H, W).

    A modality of another size than RGB is resized to it: nearest for depth (no mixing of
    valid and invalid pixels), bilinear for thermal.
    """
    unit, _ = scaling.to_unit(modal)
    return resize_unit(unit, scaling, size)


def resize_unit(unit: np.ndarray, scaling: ModalityScaling, size: tuple[int, int]) -> np.ndarray:
    if unit.shape[:2] == tuple(size):
        return unit
    interp = cv2.INTER_NEAREST if scaling.modality == "depth" else cv2.INTER_LINEAR
    return cv2.resize(unit, (size[1], size[0]), interpolation=interp)


def images_to_inputs(
    rgb: np.ndarray,
    modal: np.ndarray,
    scaling: ModalityScaling,
    size: Optional[tuple[int, int]] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """One image pair -> the network's inputs, numpy (3, h, w) float32 each.

    rgb: (H, W, 3) uint8 RGB. modal: raw thermal/depth, (H', W') or (H', W', C), uint8/uint16/float
    (NaN/inf allowed: ModalityScaling marks them invalid); resized to (H, W) first.
    size: (h, w) the network runs at, or None for (H, W). mean/std: for 0..1 values (ImageNet default).
    Training, evaluation and the Segmenter all use this, so a model sees the same values everywhere.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (H, W, 3) uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    height, width = rgb.shape[:2]
    unit = modal_to_unit(modal, scaling, (height, width))
    if size is not None and tuple(size) != (height, width):
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        unit = resize_unit(unit, scaling, tuple(size))
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return to_chw(normalize_rgb(rgb, mean, std)), to_chw(normalize_modal(unit, mean, std))


def logits_to_mask(logits: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(K, h, w) float32 logits -> ((H, W) uint8 class ids, (H, W) float32 max softmax probability) at ``size``.

    Bilinear resize of the logits (half-pixel centres, as torch's align_corners=False) when (h, w) != size.
    """
    logits = np.ascontiguousarray(logits, np.float32)
    height, width = size
    resized = np.empty((logits.shape[0], height, width), np.float32)  # (K, H, W): reduced over K below, in place
    for plane, out in zip(logits, resized):  # a class at a time: OpenCV's vectorised path (not for > 4 channels)
        if plane.shape == (height, width):
            out[...] = plane
        elif cv2.resize(plane, (width, height), dst=out, interpolation=cv2.INTER_LINEAR) is not out:
            raise RuntimeError("OpenCV did not resize into the given array")  # never seen; never a blank mask
    mask = resized.argmax(axis=0).astype(np.uint8)
    top = resized.max(axis=0)
    with np.errstate(over="ignore"):  # l - max below -3.4e38 is -inf, exactly right (exp: 0); no RuntimeWarning
        np.exp(np.subtract(resized, top, out=resized), out=resized)
    confidence = np.float32(1.0) / resized.sum(axis=0)  # softmax of the arg max: exp(0) / sum
    return mask, confidence


class ModelDescription:
    """What Segmenter and OnnxSegmenter tell alike from their metadata (``self.meta``: ``class_names``, ``palette``)
    and their modality scaling (``self._scaling``)."""

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def palette(self) -> list[list[int]]:
        """One [r, g, b] (0..255) per class id."""
        return [list(c) for c in self.meta.palette]

    @property
    def scaling(self) -> ModalityScaling:
        """How raw modality values become [0, 1]; settable (e.g. a node parameter overrides the thermal range)."""
        return self._scaling

    @scaling.setter
    def scaling(self, value: ModalityScaling) -> None:
        if not isinstance(value, ModalityScaling):
            raise TypeError(f"scaling must be a ModalityScaling, got {type(value).__name__}")
        self._scaling = value

    @property
    def modality(self) -> str:
        return self._scaling.modality


MAX_THREADS = 1024  # CPU threads: more than this is a typo, not a machine (libgomp aborts the process it cannot start)


def threads_from_environment() -> int:
    """$OMP_NUM_THREADS as a thread count, 0 when unset, empty or 0; OpenMP's list form ("4,2": threads per nested
    level) gives its first, the outermost level's. ValueError naming a value that is not one, or above MAX_THREADS."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not text:
        return 0
    levels = [part.strip() for part in text.split(",")]
    if not all(level.isascii() and level.isdigit() for level in levels):  # "²".isdigit(), but no int()
        raise ValueError(f"OMP_NUM_THREADS={text!r} is not a thread count: set it to a number (1, 2, ...) or unset it")
    if int(levels[0]) > MAX_THREADS:
        raise ValueError(f"OMP_NUM_THREADS={text!r} above {MAX_THREADS} threads is a typo: set it to a number "
                         "(1, 2, ...) or unset it")
    return int(levels[0])


def inference_threads(requested: int = 0) -> tuple[int, str]:
    """The CPU threads to run a model on, and where that number comes from (for logs): ``requested`` when > 0,
    else $OMP_NUM_THREADS when set, else every CPU this process may use (its affinity, or a container's CPU quota
    where that is fewer) but one, at least one.

    Why one fewer: a live node decodes the next pair, runs its ROS executor and DDS beside the model. On our
    2-core machine the node (bundled nano, 640x480 at 15 Hz) segmented every pair, 15.0 masks/s at latency p95
    54-55 ms, with one model thread, and 14.7-14.9 masks/s at p95 125-132 ms with two, whose OpenMP threads
    lost more to those threads than they gained.
    Raises ValueError naming a bad $OMP_NUM_THREADS, or a ``requested`` that is no integer 0..MAX_THREADS.
    """
    if isinstance(requested, bool) or not isinstance(requested, numbers.Integral) \
            or not 0 <= requested <= MAX_THREADS:
        raise ValueError(f"a thread count must be an integer 0..{MAX_THREADS} (0: automatic), got {requested!r}")
    requested = int(requested)
    if requested:
        return requested, "asked for"
    from_environment = threads_from_environment()
    if from_environment:
        return from_environment, "$OMP_NUM_THREADS"
    cpus = usable_cpus()
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < cpus:
        return max(1, quota - 1), f"automatic: {quota} CPU(s) (the container's CPU quota) less one for decoding and ROS"
    return max(1, cpus - 1), f"automatic: {cpus} CPU(s) less one for decoding and ROS"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a container's cpuset) where the system has one,
    else every CPU; at least 1. A container's CPU-time quota is not counted (inference_threads weighs it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


CGROUP_ROOT = Path("/sys/fs/cgroup")  # what a container sees of its own cgroup


def _cgroup_cpu_quota() -> Optional[int]:
    """The CPUs a CPU-time quota allows (docker --cpus=1.5: 2), rounded up; None without one or where it cannot be
    read. cgroup v2's cpu.max ("QUOTA PERIOD", "max ..." none) or v1's cpu.cfs_quota_us (-1 none) / period."""
    try:
        if (CGROUP_ROOT / "cpu.max").exists():
            quota, period = (CGROUP_ROOT / "cpu.max").read_text().split()[:2]
        else:
            quota = (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (CGROUP_ROOT / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None
