"""The one per-frame path: a paired RGB + modality frame -> mask, confidence and class counts.

The live node (sigma_ros), offline replay (``sigma-replay-eval``) and ``sigma-predict`` all load their model
with :func:`load_segmenter` and segment every pair with :func:`segment_pair`, so a mask is the same whichever
tool made it (same RGB conversion, same registration of the modality into the RGB view, same modality resizing,
same scaling overrides). Arrays in, arrays out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .data.calibration import CalibrationError, load_calibration
from .data.image_encoding import to_rgb8
from .data.modality import ModalityScaling
from .data.registration import DEFAULT_DISTANCE_M, Registration, aspect_ratio_warning


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


def bundled_checkpoint(modality: Optional[str] = None) -> Path:
    """The bundled demo model for ``modality`` (None: thermal); ValueError when this sigma_core lacks it."""
    from .assets import demo_checkpoint

    path = demo_checkpoint(modality or "thermal")
    if not path.is_file():
        raise ValueError(f"the bundled {modality or 'thermal'} demo model {path} is missing: pass a checkpoint")
    return path


def load_segmenter(
    checkpoint: Union[str, Path, None],
    device: str = "auto",
    precision: str = "fp32",
    *,
    dataset: Optional[str] = None,
    modality: Optional[str] = None,
    thermal_range: Optional[tuple[float, float]] = None,
    depth_max_range: Optional[float] = None,
    threads: Optional[int] = None,
) -> Any:
    """The Segmenter every tool runs: ``checkpoint`` (None or '': the bundled demo model of ``modality``).

    checkpoint: anything ``Segmenter.from_checkpoint`` takes (ours, a published Sigma .pth with ``dataset``), or
    a ``.onnx`` file (sigma-export), which gives an OnnxSegmenter and imports no torch.
    dataset: what a published Sigma checkpoint (.pth) was trained on (see sigma_core.checkpoints.load_model);
    the Segmenter's ``meta.notes`` / ``meta.warnings`` say what was inferred or ignored, for the caller to show.
    modality / thermal_range / depth_max_range override what the checkpoint records (None: the
    checkpoint's). threads: the CPU threads the model runs on, 0 automatic (see model_io.inference_threads):
    torch's intra-op threads, process-wide (the numba scan follows them), or the ONNX Runtime session's; None
    leaves torch as it is and gives ONNX Runtime $OMP_NUM_THREADS. Raises ValueError naming a bad count, or naming
    the checkpoint, device and precision and the reason when it cannot be loaded there (fp16/bf16 on a CPU without
    them in hardware included).
    """
    from .model_io import inference_threads
    from .onnx_runtime import is_onnx_path

    if threads is not None:  # 0: automatic, as the node's parameter; ValueError naming a bad count or $OMP_NUM_THREADS
        threads = inference_threads(threads)[0]

    path = Path(checkpoint) if checkpoint else bundled_checkpoint(modality)
    try:
        if is_onnx_path(path):  # an exported model (sigma-export): ONNX Runtime, and no torch imported at all
            from .onnx_runtime import OnnxSegmenter

            seg = OnnxSegmenter(path, device=device, precision=precision, threads=threads)
            if dataset:
                seg.meta.warnings.append(f"dataset {dataset!r} ignored: {path.name} names its classes itself")
        else:
            import torch

            from .inference import Segmenter

            if threads is not None:
                torch.set_num_threads(threads)
            seg = Segmenter.from_checkpoint(str(path), device=device, precision=precision, dataset=dataset)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        raise ValueError(f"cannot run checkpoint {str(path)!r} on device {device!r} "
                         f"with precision {precision}: {e}") from e
    modality = modality or seg.modality
    if modality != seg.modality:  # said here, so every tool says it (the node logs meta.warnings)
        seg.meta.warnings.append(f"modality {modality!r} overrides the checkpoint's {seg.modality!r}: the model "
                                 f"was not trained on this input (a {modality} checkpoint, or none for the "
                                 f"bundled {modality} model, fits it)")
    unused = (("depth max range", depth_max_range) if modality == "thermal" else ("thermal range", thermal_range))
    if unused[1] is not None:  # a scaling of the other modality: said, not silently dropped
        seg.meta.warnings.append(f"{unused[0]} {unused[1]} is ignored: the modality is {modality}")
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
    model call, milliseconds (for a batch: its share); modal: the modality the model saw, (H', W') raw values
    (registered: at the RGB size, depth as float32 metres along the RGB camera's axis); coverage: the fraction
    of RGB pixels it covers (1.0 without registration); modal_resized: the modality had another size than RGB
    (the Segmenter resized it: nearest for depth, bilinear for thermal); aspect_warning: without registration,
    what is wrong when the two images' aspect ratios differ (two different cameras), else None.
    """

    rgb: np.ndarray
    mask: np.ndarray
    confidence: np.ndarray
    counts: ClassCounts
    inference_ms: float
    modal: np.ndarray
    coverage: float
    modal_resized: bool
    aspect_warning: Optional[str] = None


def load_registration(mode: Optional[str], calibration_file: Optional[str], scaling: ModalityScaling,
                      distance_m: float = DEFAULT_DISTANCE_M) -> Registration:
    """The Registration of a calibration file; mode None: the file's own (rig, or homography for a file holding
    only a homography), "none" without a file. Raises CalibrationError (a ValueError) naming the file and what
    is wrong (see sigma_core.data.calibration)."""
    if mode not in (None, "none") and not calibration_file:
        raise CalibrationError(f"registration mode {mode} needs a calibration file (registration.calibration_file, "
                               "--calibration)")
    calibration = load_calibration(calibration_file) if calibration_file else None
    if mode is None:
        mode = calibration.mode if calibration is not None else "none"
    return Registration(mode, calibration, scaling, distance_m)


@dataclass(frozen=True)
class PreparedPair:
    """A pair converted for the model, before it runs: rgb (H, W, 3) uint8 RGB; modal the modality as the model
    will see it (registered into the RGB view, or as decoded); coverage and aspect_warning as in FrameResult."""

    rgb: np.ndarray
    modal: np.ndarray
    coverage: float
    aspect_warning: Optional[str]


def prepare_pair(rgb: np.ndarray, rgb_encoding: str, modal: np.ndarray,
                 registration: Optional[Registration] = None) -> PreparedPair:
    """The model-independent half of :func:`segment_pair` (RGB conversion, registration), which the node runs on
    the next pair while the model runs on the current one. Raises as segment_pair does."""
    rgb8 = np.ascontiguousarray(to_rgb8(rgb, rgb_encoding))
    aspect_warning, coverage = None, 1.0
    if registration is None or registration.mode == "none":
        aspect_warning = aspect_ratio_warning(rgb8.shape[:2], modal.shape[:2])
    else:
        registered = registration(modal, rgb8.shape[:2])
        modal, coverage = registered.image, registered.coverage
    return PreparedPair(rgb8, modal, coverage, aspect_warning)


def segment_prepared(segmenter: Any, pair: PreparedPair, min_inference_ms: float = 0.0) -> FrameResult:
    """The model half of :func:`segment_pair`: the model on a prepared pair, mask, confidence and counts."""
    start = time.perf_counter()
    mask, confidence = segmenter(pair.rgb, pair.modal)
    inference_ms = (time.perf_counter() - start) * 1e3
    if min_inference_ms > inference_ms:
        time.sleep((min_inference_ms - inference_ms) * 1e-3)
    return _result(segmenter, pair, mask, confidence, inference_ms)


def segment_pair(segmenter: Any, rgb: np.ndarray, rgb_encoding: str, modal: np.ndarray,
                 min_inference_ms: float = 0.0, registration: Optional[Registration] = None) -> FrameResult:
    """Segment one pair: ``rgb`` in ``rgb_encoding`` (rgb8, bgr8, rgba8, bgra8, mono8) and the raw modality.

    modal: (H', W') uint8/uint16/float32 as decoded from its message (any size): registered into the RGB view
    by ``registration`` (None or mode none: resized to the RGB size). min_inference_ms pads the model call
    (testing a slower model). Raises ValueError for an unsupported RGB encoding or shape, CalibrationError (a
    ValueError) when the images do not fit the registration's calibration.
    """
    return segment_prepared(segmenter, prepare_pair(rgb, rgb_encoding, modal, registration), min_inference_ms)


def segment_pairs(segmenter: Any, rgbs: list[np.ndarray], rgb_encoding: str, modals: list[np.ndarray],
                  max_batch: int = 8, registration: Optional[Registration] = None) -> list[FrameResult]:
    """:func:`segment_pair` for several pairs at once, batched through ``Segmenter.predict_batch``.

    The masks equal segment_pair's on each pair (the network sees the same inputs; pairs of one size run
    together, ``max_batch`` at a time).
    """
    pairs = [prepare_pair(rgb, rgb_encoding, modal, registration) for rgb, modal in zip(rgbs, modals)]
    start = time.perf_counter()
    outputs = segmenter.predict_batch([p.rgb for p in pairs], [p.modal for p in pairs], max_batch=max_batch)
    share_ms = (time.perf_counter() - start) * 1e3 / max(len(pairs), 1)
    return [_result(segmenter, pair, mask, confidence, share_ms) for pair, (mask, confidence) in zip(pairs, outputs)]


def _result(segmenter: Any, pair: PreparedPair, mask: np.ndarray, confidence: np.ndarray,
            inference_ms: float) -> FrameResult:
    mask = np.ascontiguousarray(mask, np.uint8)
    confidence = np.ascontiguousarray(confidence, np.float32)
    return FrameResult(
        rgb=pair.rgb,
        mask=mask,
        confidence=confidence,
        counts=count_classes(mask, confidence, segmenter.num_classes),
        inference_ms=inference_ms,
        modal=pair.modal,
        coverage=pair.coverage,
        modal_resized=pair.modal.shape[:2] != pair.rgb.shape[:2],
        aspect_warning=pair.aspect_warning,
    )


__all__ = ["ClassCounts", "FrameResult", "PreparedPair", "bundled_checkpoint", "count_classes", "load_registration",
           "load_segmenter", "prepare_pair", "segment_pair", "segment_pairs", "segment_prepared"]
