"""Scan-order ops: how 2-D feature maps become the sequences the selective scan runs over, and back.

Two layouts are used by Sigma:

- the 4-direction cross scan of VMamba's SS2D: a (B, D, H, W) map becomes 4
  sequences of length L = H*W, stacked as (B, 4, D, L) in this order:
  k=0 row-major (index h*W + w), k=1 column-major (w*H + h), k=2 = k=0 reversed,
  k=3 = k=1 reversed. ``cross_merge`` maps each scan output back to row-major
  order and sums the four.
- the multimodal concatenated scan of the Concat Mamba fusion block: the RGB
  and X maps, each (B, D, H, W), are flattened row-major and concatenated
  along the sequence (RGB first, length 2L), and stacked with the reverse of
  that sequence: (B, 2, D, 2L). ``concat_merge`` flips k=1 back, sums, and
  splits into the RGB half and the X half.

The ops are plain differentiable tensor reshapes (autograd works through them).
``cross_scan_order`` / ``concat_scan_order`` give the same layouts as tables of positions, for kernels that
read the directions by index instead of from these copies (``scan_numba.selective_scan_ordered_numba``).
"""
from __future__ import annotations

import functools

import torch

from ..tracing import being_traced


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) map -> (B, 4, D, H*W) sequences in the 4 scan directions."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects a (B, D, H, W) map, got shape {tuple(x.shape)}")
    batch, dim, height, width = x.shape
    if being_traced():  # traced for export: no in-place writes (they become slow scatters in ONNX)
        xs = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
        return torch.cat([xs, xs.flip(-1)], dim=1)
    xs = x.new_empty(batch, 4, dim, height * width)  # filled in place: one pass over memory per direction
    xs[:, 0] = x.flatten(2)
    xs[:, 1].view(batch, dim, width, height).copy_(x.transpose(2, 3))
    xs[:, 2:] = xs[:, :2].flip(-1)
    return xs


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, D, L) outputs of the 4 directions -> (B, D, L) sum in row-major order, L = height*width."""
    if ys.dim() != 4 or ys.shape[1] != 4 or ys.shape[3] != height * width:
        raise ValueError(f"cross_merge expects (B, 4, D, {height}*{width}), got shape {tuple(ys.shape)}")
    batch, _, dim, length = ys.shape
    ys = ys[:, :2] + ys[:, 2:].flip(-1)  # undo the reversal of k=2, 3
    col_to_row = ys[:, 1].reshape(batch, dim, width, height).transpose(2, 3).reshape(batch, dim, length)
    return ys[:, 0] + col_to_row


def concat_scan(x_rgb: torch.Tensor, x_other: torch.Tensor) -> torch.Tensor:
    """Two (B, D, H, W) maps -> (B, 2, D, 2*H*W): [RGB then X] row-major, and the same reversed."""
    if x_rgb.dim() != 4 or x_rgb.shape != x_other.shape:
        raise ValueError(
            f"concat_scan expects two (B, D, H, W) maps of the same shape, got {tuple(x_rgb.shape)} "
            f"and {tuple(x_other.shape)}"
        )
    seq = torch.cat([x_rgb.flatten(2), x_other.flatten(2)], dim=-1)
    return torch.stack([seq, seq.flip(-1)], dim=1)


def concat_merge(ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, D, 2L) outputs of concat_scan's two directions -> (RGB half, X half), each (B, D, L)."""
    if ys.dim() != 4 or ys.shape[1] != 2 or ys.shape[3] % 2:
        raise ValueError(f"concat_merge expects (B, 2, D, 2L), got shape {tuple(ys.shape)}")
    y = ys[:, 0] + ys[:, 1].flip(-1)
    half = ys.shape[3] // 2
    return y[..., :half], y[..., half:]


@functools.lru_cache(maxsize=64)
def cross_scan_order(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(4, L) int64, L = height*width: step t of direction k reads row-major position order[k, t] (as cross_scan).

    Cached per size and device: treat the result as read-only.
    """
    with torch.inference_mode(False):  # a cached inference tensor could not be used under autograd later
        rows = torch.arange(height * width, device=device)
        cols = rows.view(height, width).t().flatten()  # step w*H + h reads position h*W + w
        return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


@functools.lru_cache(maxsize=64)
def concat_scan_order(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2, 2L) int64: the two directions of concat_scan over the RGB-then-X sequence of 2 * length positions.

    Cached per size and device: treat the result as read-only.
    """
    with torch.inference_mode(False):  # a cached inference tensor could not be used under autograd later
        seq = torch.arange(2 * length, device=device)
        return torch.stack([seq, seq.flip(0)])
