"""Masks and label images that arrive separately, matched by stamp and scored: shared by both replay evaluators.

A label topic is stamped like the RGB frames, so a mask and its label share one stamp (integer
nanoseconds); which of the two comes first depends on the bag or the graph.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from sigma_core.data.labels import check_label_values
from sigma_core.engine.metrics import confusion_counts

MatchCallback = Callable[[int, np.ndarray, np.ndarray], None]  # (stamp ns, (H, W) uint8 mask, (H, W) uint8 label)


def forget_older(pending: dict[int, Any], newest: int, horizon_ns: int) -> None:
    """Drop the entries of ``pending`` (keyed by stamp, ns) more than ``horizon_ns`` older than ``newest``."""
    for stamp in [s for s in pending if s < newest - horizon_ns]:
        del pending[stamp]


def frame_confusion(mask: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) predicted ids and (H, W) label ids -> (K, K) int64 confusion of this frame (rows: label).

    Label ids outside 0..K-1 (e.g. 255, unlabelled) are ignored, as in ``sigma_core.engine.metrics``.
    """
    return confusion_counts(mask, label, num_classes)


def check_label_ids(label: np.ndarray, class_names: Sequence[str], where: str) -> None:
    """DataError (a ValueError) naming ``where``, the value and the class count if ``label`` holds an id the model
    cannot predict (not 0..K-1 and not 255): scoring it would silently count fewer pixels."""
    k = len(class_names)
    shown = ", ".join(class_names[:4]) + (", ..." if k > 4 else "")
    check_label_values(label, k, where,
                       f"the model predicts {k} classes ({shown}): score it against labels of those classes, "
                       "or use a checkpoint trained on the label topic's classes")


class LabelMatcher:
    """Calls ``on_match(stamp, mask, label)`` once both the mask and the label of a stamp have arrived.

    Whatever waits for its partner is kept for ``horizon_ns`` behind the newest stamp of its kind, so memory
    stays bounded on long runs. Not thread-safe: call it under the caller's lock.
    """

    def __init__(self, on_match: MatchCallback, horizon_ns: int):
        self._on_match = on_match
        self._horizon = int(horizon_ns)
        self._labels: dict[int, np.ndarray] = {}  # labels waiting for their mask
        self._masks: dict[int, np.ndarray] = {}  # masks waiting for their label

    def add_mask(self, stamp: int, mask: np.ndarray) -> None:
        if stamp in self._labels:
            self._on_match(stamp, mask, self._labels.pop(stamp))
        else:
            self._masks[stamp] = mask
            forget_older(self._masks, stamp, self._horizon)

    def add_label(self, stamp: int, label: np.ndarray) -> None:
        if stamp in self._masks:
            self._on_match(stamp, self._masks.pop(stamp), label)
        else:
            self._labels[stamp] = label
            forget_older(self._labels, stamp, self._horizon)
