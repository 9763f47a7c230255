"""Per-frame class statistics of a mask -> sigma_msgs/SegmentationStats."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from std_msgs.msg import Header

from sigma_msgs.msg import ClassStat, SegmentationStats


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


def stats_msg(
    header: Header,
    counts: ClassCounts,
    class_names: Sequence[str],
    *,
    model: str,
    modality: str,
    width: int,
    height: int,
    inference_ms: float,
    latency_ms: float,
    sync_skew_ms: float,
    frames_processed: int,
    frames_dropped: int,
) -> SegmentationStats:
    """The SegmentationStats message of one frame; every class listed, in id order."""
    valid = counts.valid_pixels
    msg = SegmentationStats()
    msg.header = header
    msg.model, msg.modality = model, modality
    msg.classes = [
        ClassStat(
            id=i,
            name=name,
            pixel_count=int(counts.pixel_count[i]),
            fraction=float(counts.pixel_count[i] / valid) if valid else 0.0,
            mean_confidence=float(counts.mean_confidence[i]),
        )
        for i, name in enumerate(class_names)
    ]
    msg.valid_pixels = valid
    msg.width, msg.height = int(width), int(height)
    msg.inference_ms = float(inference_ms)
    msg.latency_ms = float(latency_ms)
    msg.sync_skew_ms = float(sync_skew_ms)
    msg.frames_processed = int(frames_processed)
    msg.frames_dropped = int(frames_dropped)
    return msg


__all__ = ["ClassCounts", "count_classes", "stats_msg"]
