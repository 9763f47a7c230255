"""The one per-frame path of the live node and offline replay: a paired RGB + modality frame -> mask and counts.

The node (``node/segmentation_node.py``) and ``sigma-replay-eval``
(``replay/replay_eval.py``) both load their model with :func:`load_segmenter`
and segment every pair with :func:`segment_pair`, so offline replay scores
exactly what the node runs (same RGB conversion, same modality resizing, same
scaling overrides). Imports no ROS: arrays in, arrays out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from sigma_core.data.image_encoding import to_rgb8
from sigma_core.data.modality import ModalityScaling
from sigma_core.onnx_runtime import is_onnx_path

from .node.parameters import ConfigError, resolve_checkpoint


@dataclass(frozen=True)
class ClassCounts:
    """pixel_count (K,) int64, mean_confidence (K,) float64, valid_pixels = pixel_count.sum()."""

    pixel_count: np.ndarray
    mean_confidence: np.ndarray
    valid_pixels: int


def count_classes(mask: np.ndarray, confidence: np.ndarray, num_classes: int) -> ClassCounts:
    """(H, W) uint8 class ids and (H, W) float32 confidence -> per-class counts and mean confidence.

    Pixels equal to the ignore id (255) or outside 0..num_classes-1 are not valid.
    """
    ids = mask.reshape(-1)
    counts = np.bincount(ids, minlength=256)[:num_classes]
    conf_sum = np.bincount(ids, weights=confidence.reshape(-1), minlength=256)[:num_classes]
    mean = np.divide(conf_sum, counts, out=np.zeros(num_classes), where=counts > 0)
    return ClassCounts(counts, mean, int(counts.sum()))


def load_segmenter(
    checkpoint: Union[str, Path],
    device: str = "auto",
    precision: str = "fp32",
    *,
    dataset: Optional[str] = None,
    modality: Optional[str] = None,
    thermal_range: Optional[tuple[float, float]] = None,
    depth_max_range: Optional[float] = None,
) -> Any:
    """The sigma_core Segmenter the node and replay run: ``checkpoint`` ('' = the bundled demo model).

    A ``.onnx`` file (sigma-export) gives an OnnxSegmenter and imports no torch: the node then runs where
    only onnxruntime is installed.

    dataset: what a published Sigma checkpoint (.pth) was trained on (see sigma_core.checkpoints.load_model);
    the Segmenter's ``meta.notes`` / ``meta.warnings`` say what was inferred or ignored, for the caller to show.
    modality / thermal_range / depth_max_range override what the checkpoint records (None: the
    checkpoint's). Raises ConfigError naming the checkpoint, device and precision and the reason
    when it cannot be loaded there.
    """
    path = checkpoint if isinstance(checkpoint, Path) else resolve_checkpoint(str(checkpoint))
    try:
        if is_onnx_path(path):  # an exported model: ONNX Runtime, and no torch imported at all
            from sigma_core.onnx_runtime import OnnxSegmenter

            seg = OnnxSegmenter(path, device=device, precision=precision)
            if dataset:
                seg.meta.warnings.append(f"dataset {dataset!r} ignored: {path.name} names its classes itself")
        else:
            from sigma_core import Segmenter

            seg = Segmenter.from_checkpoint(str(path), device=device, precision=precision, dataset=dataset)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        raise ConfigError(f"cannot run checkpoint {str(path)!r} on device {device!r} "
                          f"with precision {precision}: {e}") from e
    modality = modality or seg.modality
    if modality != seg.modality or thermal_range is not None or depth_max_range is not None:
        base = seg.scaling
        seg.scaling = ModalityScaling(
            modality=modality,
            range=thermal_range if thermal_range is not None else base.range,
            max_range=depth_max_range if depth_max_range is not None else base.max_range,
        )
    return seg


@dataclass(frozen=True)
class FrameResult:
    """One segmented pair.

    rgb: (H, W, 3) uint8 RGB the model saw; mask: (H, W) uint8 class ids; confidence: (H, W)
    float32 max softmax probability; counts: per-class counts of the mask; inference_ms: the
    model call, milliseconds; modal_resized: the modality had another size than RGB (the
    Segmenter resized it: nearest for depth, bilinear for thermal).
    """

    rgb: np.ndarray
    mask: np.ndarray
    confidence: np.ndarray
    counts: ClassCounts
    inference_ms: float
    modal_resized: bool


def segment_pair(segmenter: Any, rgb: np.ndarray, rgb_encoding: str, modal: np.ndarray,
                 min_inference_ms: float = 0.0) -> FrameResult:
    """Segment one pair: ``rgb`` in ``rgb_encoding`` (rgb8, bgr8, rgba8, bgra8, mono8) and the raw modality.

    modal: (H', W') uint8/uint16/float32 as decoded from its message (any size; resized to the RGB's).
    min_inference_ms pads the model call (testing a slower model). Raises ValueError for an
    unsupported RGB encoding or shape.
    """
    rgb8 = np.ascontiguousarray(to_rgb8(rgb, rgb_encoding))
    start = time.perf_counter()
    mask, confidence = segmenter(rgb8, modal)
    inference_ms = (time.perf_counter() - start) * 1e3
    if min_inference_ms > inference_ms:
        time.sleep((min_inference_ms - inference_ms) * 1e-3)
    mask = np.ascontiguousarray(mask, np.uint8)
    confidence = np.ascontiguousarray(confidence, np.float32)
    return FrameResult(
        rgb=rgb8,
        mask=mask,
        confidence=confidence,
        counts=count_classes(mask, confidence, segmenter.num_classes),
        inference_ms=inference_ms,
        modal_resized=modal.shape[:2] != rgb8.shape[:2],
    )


__all__ = ["ClassCounts", "FrameResult", "count_classes", "load_segmenter", "segment_pair"]
