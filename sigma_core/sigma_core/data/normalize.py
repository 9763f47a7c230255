"""Network input normalisation: the one place for the ImageNet constants.

The published recipe normalises both modalities with ImageNet mean/std; a
single-channel modality (thermal, depth) is first scaled to [0, 1] by
:class:`~sigma_core.data.modality.ModalityScaling` and replicated to three
channels. Training (datasets), inference (Segmenter) and the node all call
these functions so they feed the network identical values.
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # RGB order, for values in [0, 1]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize_rgb(rgb: np.ndarray, mean: np.ndarray = IMAGENET_MEAN, std: np.ndarray = IMAGENET_STD) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32, ImageNet-normalised (or by a checkpoint's mean/std; channels last)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"RGB image must be (H, W, 3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"RGB image must be uint8 (0..255), got {rgb.dtype}")
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((rgb.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def normalize_modal(unit: np.ndarray, mean: np.ndarray = IMAGENET_MEAN, std: np.ndarray = IMAGENET_STD) -> np.ndarray:
    """(H, W) float32 in [0, 1] (from ModalityScaling.to_unit) -> (H, W, 3) float32, replicated and normalised."""
    unit = np.asarray(unit, dtype=np.float32)
    if unit.ndim != 2:
        raise ValueError(f"modality map must be (H, W) in [0, 1], got shape {unit.shape}")
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((unit[..., None] - mean) / std).astype(np.float32)


def to_chw(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> contiguous (C, H, W), the layout torch models take."""
    return np.ascontiguousarray(np.transpose(image, (2, 0, 1)))


def denormalize_rgb(chw: np.ndarray) -> np.ndarray:
    """(3, H, W) normalised float -> (H, W, 3) uint8 RGB, for visualising network inputs."""
    hwc = np.transpose(np.asarray(chw, dtype=np.float32), (1, 2, 0)) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.round(hwc * 255.0), 0, 255).astype(np.uint8)
