"""Class-id masks -> colour images for people: the colour mask and the overlay on the camera image (node, replay,
sigma-predict)."""
from __future__ import annotations

import numpy as np

from .data.transforms import IGNORE_INDEX  # 255: unlabelled / invalid (sigma_msgs/ClassMap.ignore_id)


def lookup_palette(palette: np.ndarray) -> np.ndarray:
    """(K, 3) uint8 palette -> (256, 3) uint8 lookup table; ids without a colour (incl. 255) are black."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) > IGNORE_INDEX:
        raise ValueError(f"palette has {len(palette)} colours; at most {IGNORE_INDEX} classes fit a mono8 mask")
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette
    return table


def colorize(mask: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class ids + (256, 3) table from :func:`lookup_palette` -> (H, W, 3) uint8 RGB."""
    return table[mask]


def overlay(rgb: np.ndarray, color_mask: np.ndarray, alpha: float) -> np.ndarray:
    """Blend: ``alpha * color_mask + (1 - alpha) * rgb``; (H, W, 3) uint8 each -> (H, W, 3) uint8."""
    if alpha <= 0.0:
        return np.ascontiguousarray(rgb)
    if alpha >= 1.0:
        return color_mask
    # Integer blend with 8-bit weights: exact enough for display and ~4x faster than float32.
    a = int(round(alpha * 256))
    out = (color_mask.astype(np.uint16) * a + rgb.astype(np.uint16) * (256 - a)) >> 8
    return out.astype(np.uint8)
