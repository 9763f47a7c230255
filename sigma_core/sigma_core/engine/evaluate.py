"""Test-time prediction of full-image class scores: whole image or sliding window, multi-scale, flip.

These functions take any ``model(rgb, x) -> logits`` with normalised (B, 3, H, W)
float inputs and return averaged softmax scores (B, K, H, W) at the input size.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

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
