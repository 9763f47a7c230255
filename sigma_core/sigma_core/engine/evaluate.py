"""Evaluation: test-time prediction (whole image or sliding window, multi-scale, flip) and dataset metrics.

The prediction functions take any ``model(rgb, x) -> logits`` with normalised
(B, 3, H, W) float inputs and return summed softmax scores (B, K, H, W) at the
input size; ``evaluate_dataset`` runs them over a dataset into a confusion matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.normalize import IMAGENET_MEAN, IMAGENET_STD
from ..inference import resolve_device
from .metrics import ConfusionMatrix, SegmentationMetrics

SegModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` covering [0, size): every ``stride``, the last flush with the end."""
    if size <= window:
        return [0]
    n = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(n)})


def sliding_window_logits(model: SegModel, rgb: torch.Tensor, x: torch.Tensor, crop: Sequence[int],
                          stride_ratio: float = 2.0 / 3.0) -> torch.Tensor:
    """(B, 3, H, W) inputs -> (B, K, H, W) logits averaged over overlapping crop-sized windows.

    Windows step by ceil(stride_ratio * crop) and the last one is flush with the image end;
    a side not larger than the crop is taken whole (no padding), so an image that fits in
    the crop is one plain forward pass.
    """
    _, _, h, w = rgb.shape
    ch, cw = min(int(crop[0]), h), min(int(crop[1]), w)
    if (ch, cw) == (h, w):
        return model(rgb, x)
    sh, sw = max(1, math.ceil(ch * stride_ratio)), max(1, math.ceil(cw * stride_ratio))
    total: Optional[torch.Tensor] = None
    count = torch.zeros(1, 1, h, w, device=rgb.device, dtype=torch.float32)
    for top in window_starts(h, ch, sh):
        for left in window_starts(w, cw, sw):
            window = (slice(None), slice(None), slice(top, top + ch), slice(left, left + cw))
            logits = model(rgb[window], x[window]).float()
            if total is None:
                total = torch.zeros(rgb.shape[0], logits.shape[1], h, w, device=rgb.device, dtype=torch.float32)
            total[window] += logits
            count[window] += 1
    return total / count


def predict_scores(model: SegModel, rgb: torch.Tensor, x: torch.Tensor, mode: str = "whole",
                   crop: Optional[Sequence[int]] = None, stride_ratio: float = 2.0 / 3.0,
                   scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """(B, 3, H, W) normalised inputs -> (B, K, H, W) float32 softmax scores summed over scales and flips.

    Each scale resizes both inputs bilinearly (align_corners False), predicts with
    ``mode`` ("whole" or "sliding" with ``crop`` (H, W)), resizes the logits back, and adds
    their softmax; with ``flip`` the horizontally flipped input is added too. argmax of the
    sum is the prediction (the sum, not the mean, as only the argmax matters).
    """
    if mode not in ("whole", "sliding"):
        raise ValueError(f"mode must be 'whole' or 'sliding', got {mode!r}")
    if mode == "sliding" and crop is None:
        raise ValueError("sliding-window prediction needs crop=(H, W)")
    _, _, h, w = rgb.shape

    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if mode == "sliding":
            return sliding_window_logits(model, a, b, crop, stride_ratio)
        return model(a, b)

    scores: Optional[torch.Tensor] = None
    for scale in scales:
        if scale == 1.0:
            a, b = rgb, x
        else:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            a = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        views = [(a, b, False)] + ([(a.flip(-1), b.flip(-1), True)] if flip else [])
        for va, vb, flipped in views:
            logits = forward(va, vb).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            scores = probs if scores is None else scores + probs
    return scores


@dataclass
class EvalSettings:
    """How to predict each image (see predict_scores); mirrors the ``eval`` config section."""

    mode: str = "whole"
    crop_size: Optional[Sequence[int]] = None
    stride_ratio: float = 2.0 / 3.0
    scales: Sequence[float] = (1.0,)
    flip: bool = False

    @classmethod
    def from_section(cls, section: Any, fallback_crop: Optional[Sequence[int]] = None) -> EvalSettings:
        return cls(mode=section.mode, crop_size=section.crop_size or fallback_crop,
                   stride_ratio=section.stride_ratio, scales=tuple(section.scales), flip=section.flip)


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated dataset batch -> (rgb (B,3,H,W) float, x (B,3,H,W) float, label (B,H,W) int64)."""
    if isinstance(batch, dict):
        return batch["rgb"], batch["modal"], batch["label"]
    rgb, x, label = batch[:3]
    return rgb, x, label


def blank_modality_like(x: torch.Tensor) -> torch.Tensor:
    """The network input of an all-zero (dead) thermal/depth image: normalised 0 per channel, like ``x``."""
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((0.0 - mean) / std).expand_as(x).contiguous()


@torch.inference_mode()
def evaluate_dataset(model: torch.nn.Module, batches: Iterable[Any], num_classes: int,
                     settings: Optional[EvalSettings] = None, device: torch.device | str = "cpu",
                     class_names: Optional[Sequence[str]] = None, blank_modality: bool = False,
                     on_prediction: Optional[Callable[[np.ndarray, str], None]] = None,
                     progress: bool = False, all_reduce: bool = False) -> SegmentationMetrics:
    """Metrics of ``model`` over ``batches`` (a DataLoader of dataset samples).

    blank_modality: replace the thermal/depth input by a blank (all-zero) image, to
        measure how much the model relies on it.
    on_prediction: called with each (H, W) uint8 predicted mask and its sample name (the
        batch's "name" entry, else the running index as 5 digits), e.g. to save colourised predictions.
    all_reduce: sum the confusion matrix over torch.distributed processes.
    """
    settings = settings if settings is not None else EvalSettings()
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    index = 0
    iterator = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, desc="evaluate", leave=False, dynamic_ncols=True)
    try:
        for batch in iterator:
            rgb, x, label = unpack_batch(batch)
            rgb, x, label = rgb.to(device), x.to(device), label.to(device)
            if blank_modality:
                x = blank_modality_like(x)
            scores = predict_scores(model, rgb, x, settings.mode, settings.crop_size, settings.stride_ratio,
                                    settings.scales, settings.flip)
            pred = scores.argmax(dim=1)
            cm.update(pred, label)
            if on_prediction is not None:
                names = batch.get("name") if isinstance(batch, dict) else None
                for j, mask in enumerate(pred.to(torch.uint8).cpu().numpy()):
                    on_prediction(mask, str(names[j]) if names is not None else f"{index:05d}")
                    index += 1
    finally:
        model.train(was_training)
    if all_reduce:
        cm.all_reduce()
    return cm.compute(class_names)


def load_model_for_evaluation(checkpoint: str, cfg: Any, dataset_spec: Any, device: torch.device):
    """(model in eval mode, CheckpointMeta) through the one loader of every tool (checkpoints.load_model).

    Ours as it is; a published Sigma checkpoint with its architecture inferred from its keys and its
    classes from ``dataset_spec`` (the evaluation dataset's DatasetSpec). Raises ValueError (a
    CheckpointError) when the class counts or the modalities of checkpoint and dataset differ.
    """
    from ..checkpoints import load_model

    backend = None if cfg.model.scan_backend == "auto" else cfg.model.scan_backend
    model, meta = load_model(checkpoint, dataset=dataset_spec, device=device, scan_backend=backend)
    num_classes = len(dataset_spec.classes)
    if meta.num_classes != num_classes:
        raise ValueError(f"{checkpoint} predicts {meta.num_classes} classes but the dataset has {num_classes}")
    # a thermal model scored on depth images: numbers that mean nothing. The benchmark depth presets read their
    # 8-bit depth with a thermal-style 0..255 scaling (spec.scaling), which their trained checkpoints record
    if meta.modality not in (dataset_spec.modality, dataset_spec.scaling.modality):
        raise ValueError(f"{checkpoint} is a {meta.modality} model but the dataset's modality is "
                         f"{dataset_spec.modality}: evaluate a {dataset_spec.modality} checkpoint (none: the bundled "
                         f"{dataset_spec.modality} demo model)")
    return model, meta


def run_evaluation(checkpoint: str, cfg: Any, out_dir: Path, device: str = "auto", blank_modality: bool = False,
                   save_predictions: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``cfg.data`` (split ``cfg.data.val_split``) with ``cfg.eval``; write the report.

    Returns the report dict (also written as out_dir/report.json, with report.md and PNG charts).
    """
    import time

    import cv2
    from torch.utils.data import DataLoader

    from ..files import atomic_write_image
    from .builders import base_dataset, dataset_info, evaluation_dataset
    from .reports import check_report_folder, published_miou, write_evaluation_report

    started = time.perf_counter()
    dev = resolve_device(device)
    dataset = evaluation_dataset(cfg)  # ValueError when the split is empty
    info = dataset_info(dataset)
    spec = base_dataset(dataset).spec
    model, meta = load_model_for_evaluation(checkpoint, cfg, spec, dev)
    for note in meta.notes:
        print(note)
    class_names = list(info.class_names)
    palette = np.asarray(meta.palette, dtype=np.uint8)
    settings = EvalSettings.from_section(cfg.eval, cfg.data.crop_size)
    on_prediction = None
    out_dir = Path(out_dir)
    check_report_folder(out_dir, str(checkpoint))  # before the evaluation, not after it
    if save_predictions:
        pred_dir = out_dir / "predictions"
        pred_dir.mkdir(parents=True, exist_ok=True)

        def on_prediction(mask: np.ndarray, name: str) -> None:
            atomic_write_image(pred_dir / f"{name}.png", cv2.cvtColor(palette[mask], cv2.COLOR_RGB2BGR))

    from .config import usable_workers

    loader = DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False,
                        num_workers=usable_workers(cfg.data.num_workers))
    metrics = evaluate_dataset(model, loader, len(class_names), settings, dev, class_names,
                               blank_modality=blank_modality, on_prediction=on_prediction, progress=True)
    variant = meta.config.variant
    report_info = {
        "checkpoint": str(checkpoint),
        "checkpoint_path": str(Path(checkpoint).resolve()),  # whose report this is, wherever it was run from
        "model": meta.config.name,
        "dataset": {"preset": cfg.data.preset, "root": cfg.data.root, "split": cfg.data.val_split},
        "images": len(dataset),
        "settings": {"mode": settings.mode, "crop_size": settings.crop_size, "stride_ratio": settings.stride_ratio,
                     "scales": list(settings.scales), "flip": settings.flip, "blank_modality": blank_modality},
        "device": str(dev),
        "seconds": round(time.perf_counter() - started, 2),
    }
    published = published_miou(cfg.data.preset, variant) if not blank_modality else None
    write_evaluation_report(out_dir, metrics, report_info, published)
    return {**report_info, "metrics": metrics.to_dict(), **({"published": published} if published else {})}
