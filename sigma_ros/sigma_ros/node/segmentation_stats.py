"""Per-frame class statistics of a mask (``segmentation_step.count_classes``) -> sigma_msgs/SegmentationStats."""
from __future__ import annotations

from typing import Sequence

from std_msgs.msg import Header

from sigma_msgs.msg import ClassStat, SegmentationStats

from ..segmentation_step import ClassCounts


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
    modality_coverage: float = 1.0,
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
    msg.modality_coverage = float(modality_coverage)
    return msg


__all__ = ["stats_msg"]
