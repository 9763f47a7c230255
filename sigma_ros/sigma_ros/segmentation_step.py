"""The one per-frame path of the live node and offline replay: a paired RGB + modality frame -> mask and counts.

The step itself lives in ``sigma_core.segmentation_step`` (``sigma-predict`` runs it too, without ROS): the
node (``node/segmentation_node.py``) and ``sigma-replay-eval`` (``replay/replay_eval.py``) load their model with
:func:`load_segmenter` and segment every pair with :func:`segment_pair`, so offline replay scores exactly what
the node runs (same RGB conversion, same registration of the modality into the RGB view, same modality resizing,
same scaling overrides). Here the loaders add what a ROS parameter means: an empty ``checkpoint`` is the bundled
demo model of the ``modality`` asked for, and every problem is a ConfigError naming it. Imports no ROS.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from sigma_core import segmentation_step as _core
from sigma_core.data.calibration import CalibrationError
from sigma_core.data.modality import ModalityScaling
from sigma_core.data.registration import DEFAULT_DISTANCE_M, Registration
from sigma_core.segmentation_step import (
    ClassCounts,
    FrameResult,
    PreparedPair,
    count_classes,
    prepare_pair,
    segment_pair,
    segment_pairs,
    segment_prepared,
)

from . import stop_signals
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
    threads: Optional[int] = None,
) -> Any:
    """sigma_core's ``load_segmenter`` with the node's checkpoint rules ('' = the bundled model of ``modality``).

    A ``.onnx`` file (sigma-export) gives an OnnxSegmenter and imports no torch. Raises ConfigError naming the
    checkpoint, device and precision and the reason when it cannot be loaded there.
    """
    path = checkpoint if isinstance(checkpoint, Path) else resolve_checkpoint(str(checkpoint), modality)
    if not str(path).endswith(".onnx"):
        with stop_signals.deferred():  # a stop inside torch's native start-up code aborts the process (-6)
            try:
                import torch  # noqa: F401
            except ImportError:
                pass  # sigma_core's loader says what to install
    try:
        return _core.load_segmenter(path, device, precision, dataset=dataset, modality=modality,
                                    thermal_range=thermal_range, depth_max_range=depth_max_range, threads=threads)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def load_registration(mode: Optional[str], calibration_file: Optional[str], scaling: ModalityScaling,
                      distance_m: float = DEFAULT_DISTANCE_M) -> Registration:
    """sigma_core's ``load_registration``; ConfigError naming the file, the parameter and what is wrong."""
    try:
        return _core.load_registration(mode, calibration_file, scaling, distance_m)
    except CalibrationError as e:
        raise ConfigError(str(e)) from None


__all__ = ["ClassCounts", "FrameResult", "PreparedPair", "count_classes", "load_registration", "load_segmenter",
           "prepare_pair", "segment_pair", "segment_pairs", "segment_prepared"]
