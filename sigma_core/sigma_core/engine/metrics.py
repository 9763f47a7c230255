"""Segmentation metrics from a confusion matrix: one place for mIoU and its relatives.

The confusion matrix ``cm`` is (K, K) int64 with rows = ground truth and
columns = prediction, accumulated over all labelled pixels; labels outside
[0, K) (e.g. the ignore value 255) are left out. A class with no ground-truth
pixel and no prediction has an undefined IoU (NaN) and is left out of the
means, as in the published evaluation; a class that is predicted but absent
from the ground truth has IoU 0 and counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch


def confusion_counts(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """numpy, no torch (the replay tools run beside an .onnx model): integer arrays of one shape -> (K, K) int64
    confusion (rows: truth, columns: prediction), as ConfusionMatrix.update counts it.

    Target pixels outside [0, K) are ignored; predictions must lie in [0, K) (ValueError).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    k = int(num_classes)
    pred, true = prediction.reshape(-1).astype(np.int64), target.reshape(-1).astype(np.int64)
    keep = (true >= 0) & (true < k)
    pred, true = pred[keep], true[keep]
    if pred.size and (int(pred.min()) < 0 or int(pred.max()) >= k):
        raise ValueError(f"predicted class ids must lie in [0, {k}), got {int(pred.min())}..{int(pred.max())}")
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix (rows: truth, columns: prediction) on any torch device."""

    def __init__(self, num_classes: int, device: Any = "cpu"):
        import torch  # here: the rest of this module (metrics from a numpy matrix) serves torch-free tools

        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. prediction, target: integer tensors of the same shape, e.g. (B, H, W).

        Target pixels outside [0, K) are ignored; predictions must lie in [0, K).
        """
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        import torch

        k = self.num_classes
        pred = prediction.reshape(-1).to(self.matrix.device, torch.int64)
        true = target.reshape(-1).to(self.matrix.device, torch.int64)
        keep = (true >= 0) & (true < k)
        pred, true = pred[keep], true[keep]
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            raise ValueError(f"predicted class ids must lie in [0, {k}), got {int(pred.min())}..{int(pred.max())}")
        self.matrix += torch.bincount(true * k + pred, minlength=k * k).reshape(k, k)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of an initialised torch.distributed group (no-op otherwise)."""
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self, class_names: Optional[Sequence[str]] = None) -> SegmentationMetrics:
        return compute_metrics(self.matrix.cpu().numpy(), class_names)


@dataclass
class SegmentationMetrics:
    """Metrics as fractions in [0, 1] (NaN where undefined). Per-class arrays are (K,) float64."""

    miou: float
    mean_class_accuracy: float
    pixel_accuracy: float
    fw_iou: float
    iou: np.ndarray
    class_accuracy: np.ndarray
    pixels_per_class: np.ndarray  # ground-truth pixel counts, (K,) int64
    class_names: list[str]
    confusion: np.ndarray  # (K, K) int64

    def to_dict(self) -> dict:
        """JSON-ready dict; NaN (undefined) becomes None. Percentages are not applied here."""

        def clean(v: float) -> Optional[float]:
            return None if not np.isfinite(v) else float(v)

        return {
            "miou": clean(self.miou),
            "mean_class_accuracy": clean(self.mean_class_accuracy),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "fw_iou": clean(self.fw_iou),
            "per_class": [
                {"class": n, "iou": clean(i), "accuracy": clean(a), "pixels": int(p)}
                for n, i, a, p in zip(self.class_names, self.iou, self.class_accuracy, self.pixels_per_class)
            ],
            "confusion_matrix": self.confusion.tolist(),
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def compute_metrics(confusion: np.ndarray, class_names: Optional[Sequence[str]] = None) -> SegmentationMetrics:
    """(K, K) confusion matrix (rows truth, columns prediction) -> SegmentationMetrics.

    IoU_k = TP / (TP + FP + FN); class accuracy_k = TP / (TP + FN);
    pixel accuracy = sum TP / all pixels; frequency-weighted IoU = sum_k freq_k IoU_k
    with freq_k the ground-truth share of class k (classes with no ground truth weigh 0).
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    tp = np.diag(cm).astype(np.float64)
    truth = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    union = truth + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(truth > 0, tp / truth, np.nan)
    total = truth.sum()
    freq = truth / total if total > 0 else np.zeros(k)
    present = freq > 0
    return SegmentationMetrics(
        miou=_nanmean(iou),
        mean_class_accuracy=_nanmean(acc),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        fw_iou=float((freq[present] * iou[present]).sum()) if total > 0 else float("nan"),
        iou=iou,
        class_accuracy=acc,
        pixels_per_class=truth.astype(np.int64),
        class_names=names,
        confusion=cm,
    )


def chance_miou(pixels_per_class: np.ndarray) -> dict[str, float]:
    """mIoU of two content-blind predictors on a set with these ground-truth pixel counts (K,).

    "uniform": each pixel gets a uniformly random class (expected IoU_k =
    (p_k/K) / (1/K + p_k - p_k/K)); "majority": every pixel gets the most frequent class.
    Classes absent from the ground truth are left out, as in compute_metrics (the
    uniform predictor still hits them, so they would count as IoU 0; leaving them out
    favours chance, which is the conservative side for a "beats chance" check).
    """
    counts = np.asarray(pixels_per_class, dtype=np.float64)
    present = counts > 0
    k = counts.size
    p = counts / counts.sum()
    uniform = (p / k) / (1.0 / k + p - p / k)
    return {"uniform": float(uniform[present].mean()), "majority": float(p.max() / present.sum())}
