"""Training augmentations of the published recipe, applied identically to RGB, modality and labels.

Order (as published): random horizontal flip, random scale from ``scales``
(bilinear for images, nearest for labels), ImageNet normalisation of both
modalities, random crop to ``crop_size`` where a side smaller than the crop is
padded with 0 (in normalised space, i.e. the mean colour) for RGB/modality and
with 255 (ignored) for labels. Randomness comes only from the ``rng`` passed
in, so a dataset that derives it from (seed, epoch, index) is reproducible
with any number of loader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from .normalize import normalize_modal, normalize_rgb, to_chw

IGNORE_INDEX = 255
PUBLISHED_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def to_network(rgb: np.ndarray, modal: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """No augmentation: (H, W, 3) uint8 RGB, (H, W) float32 unit modality, (H, W) labels ->
    ((3, H, W) float32, (3, H, W) float32, (H, W) int64)."""
    return to_chw(normalize_rgb(rgb)), to_chw(normalize_modal(modal)), np.asarray(label, dtype=np.int64)


@dataclass(frozen=True)
class TrainAugmentation:
    """Callable ``(rgb, modal, label, rng) -> (rgb (3, h, w), modal (3, h, w), label (h, w) int64)``.

    rgb: (H, W, 3) uint8 RGB; modal: (H, W) float32 in [0, 1] (ModalityScaling output);
    label: (H, W) integer class ids. ``crop_size`` (height, width) or None for no crop.
    """

    crop_size: Optional[tuple[int, int]] = None
    scales: tuple[float, ...] = PUBLISHED_SCALES
    flip: bool = True

    def __post_init__(self):
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            raise ValueError(f"crop_size must be (height, width) >= 1, got {self.crop_size}")

    def __call__(self, rgb: np.ndarray, modal: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if rgb.shape[:2] != modal.shape[:2] or rgb.shape[:2] != label.shape[:2]:
            raise ValueError(
                f"RGB {rgb.shape[:2]}, modality {modal.shape[:2]} and label {label.shape[:2]} sizes differ"
            )
        label = np.asarray(label)
        if self.flip and rng.random() < 0.5:
            rgb, modal, label = rgb[:, ::-1], modal[:, ::-1], label[:, ::-1]
        scale = float(self.scales[int(rng.integers(len(self.scales)))])
        if scale != 1.0:
            h, w = label.shape
            size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))  # cv2 takes (width, height)
            rgb = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_LINEAR)
            modal = cv2.resize(np.ascontiguousarray(modal, dtype=np.float32), size, interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(np.ascontiguousarray(label, dtype=np.uint8 if label.max(initial=0) < 256 else np.int32),
                               size, interpolation=cv2.INTER_NEAREST)
        rgb_n, modal_n, label = to_network(rgb, modal, label)
        if self.crop_size is not None:
            rgb_n, modal_n, label = random_crop_pad(rgb_n, modal_n, label, self.crop_size, rng)
        return rgb_n, modal_n, label


def random_crop_pad(rgb: np.ndarray, modal: np.ndarray, label: np.ndarray, crop_size: tuple[int, int],
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop (C, H, W)/(C, H, W)/(H, W) to crop_size at one random position; pad short sides (0 / 255)."""
    ch, cw = int(crop_size[0]), int(crop_size[1])
    h, w = label.shape
    y0 = int(rng.integers(0, h - ch + 1)) if h > ch else 0
    x0 = int(rng.integers(0, w - cw + 1)) if w > cw else 0
    rgb, modal, label = rgb[:, y0:y0 + ch, x0:x0 + cw], modal[:, y0:y0 + ch, x0:x0 + cw], label[y0:y0 + ch, x0:x0 + cw]
    h, w = label.shape
    if (h, w) == (ch, cw):
        return np.ascontiguousarray(rgb), np.ascontiguousarray(modal), np.ascontiguousarray(label)
    # centre the image in the padded crop, as the published loader does
    top, left = (ch - h) // 2, (cw - w) // 2
    out_rgb = np.zeros((rgb.shape[0], ch, cw), np.float32)
    out_modal = np.zeros((modal.shape[0], ch, cw), np.float32)
    out_label = np.full((ch, cw), IGNORE_INDEX, np.int64)
    out_rgb[:, top:top + h, left:left + w] = rgb
    out_modal[:, top:top + h, left:left + w] = modal
    out_label[top:top + h, left:left + w] = label
    return out_rgb, out_modal, out_label
