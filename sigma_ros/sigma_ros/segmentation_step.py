"""The one per-frame path of the live node and offline replay: a paired RGB + modality frame -> mask and counts.

The step itself lives in ``sigma_core.segmentation_step`` (``sigma-predict`` runs it too, without ROS); here
the node's and replay's loader adds what a ROS parameter means: an empty ``checkpoint`` is the bundled demo
model of the ``modality`` asked for, and every problem is a ConfigError naming the parameter. Imports no ROS.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from sigma_core import segmentation_step as _core
from sigma_core.segmentation_step import ClassCounts, FrameResult, count_classes, segment_pair, segment_pairs

from .errors import ConfigError
from .node.parameters import resolve_checkpoint


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
    """sigma_core's ``load_segmenter`` with the node's checkpoint rules ('' = the bundled model of ``modality``).

    Raises ConfigError naming the checkpoint, device and precision and the reason when it cannot be loaded there.
    """
    path = checkpoint if isinstance(checkpoint, Path) else resolve_checkpoint(str(checkpoint), modality)
    try:
        return _core.load_segmenter(path, device, precision, dataset=dataset, modality=modality,
                                    thermal_range=thermal_range, depth_max_range=depth_max_range)
    except ValueError as e:
        raise ConfigError(str(e)) from e


__all__ = ["ClassCounts", "FrameResult", "count_classes", "load_segmenter", "segment_pair", "segment_pairs"]
