"""What runs around any Sigma network, torch-free: camera images -> network inputs, logits -> mask.

The torch Segmenter (sigma_core.inference) and the ONNX one (sigma_core.onnx_runtime) both use these, so a
model sees the same values whichever runtime runs it; nothing here imports torch (a deployment with
ONNX Runtime has no torch).
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from .data.modality import ModalityScaling
from .data.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_modal, normalize_rgb, to_chw


class NonFiniteOutputError(RuntimeError):
    """The network gave NaN/inf logits for a frame; its mask would be meaningless, so none is returned."""


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
    if tuple(logits.shape[1:]) != tuple(size):
        resized = cv2.resize(np.ascontiguousarray(logits.transpose(1, 2, 0)), (size[1], size[0]),
                             interpolation=cv2.INTER_LINEAR)
        logits = resized.reshape(size[0], size[1], -1).transpose(2, 0, 1)
    top = logits.max(axis=0)
    exp = np.exp(logits - top)
    confidence = (1.0 / exp.sum(axis=0)).astype(np.float32)  # softmax of the arg max: exp(0) / sum
    return logits.argmax(axis=0).astype(np.uint8), confidence
