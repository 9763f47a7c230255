"""2x bilinear upsampling of channels-last maps (the decoder's), on every thread torch may use.

torch's channels-last bilinear kernel splits its work by batch row only (torch 2.13), so at batch 1 it runs on one
thread whatever ``torch.set_num_threads`` says; the native library (``scan_native.cpp``, built for the scan) holds
a kernel that splits the output rows instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..native_kernel import KINDS, BackendUnavailable, library, run_upsample2x
from ..tracing import being_traced
from .native_memory import readable_in_place

_KINDS = {torch.float32: KINDS["float32"], torch.bfloat16: KINDS["bfloat16"]}


def upsample2x_channels_last(x: torch.Tensor) -> torch.Tensor:
    """F.interpolate(scale 2, mode="bilinear", align_corners=False) of a channels-last map.

    x: (B, H, W, C) float -> (B, 2H, 2W, C) of x's dtype. On the CPU, for float32 or bfloat16 maps with channel
    stride 1 that need no gradient, the native kernel runs it on ``torch.get_num_threads()`` threads into a
    contiguous map: the same weights and products as torch's kernel, summed in the order of its vector blocks, so
    bfloat16 matches it bit for bit on ordinary maps and float32 within an ulp (where the four neighbours differ in
    magnitude by 2**15 or more, the last bit of a channel past the last full vector block can differ). Everywhere
    else (a GPU, float16 or float64, autograd, tracing for export, tensors native code may not read in place: see
    ops.native_memory, no C++ compiler here) it is torch's F.interpolate, whose result keeps its memory format.
    """
    batch, height, width, channels = x.shape
    if _native_runs(x):
        out = torch.empty((batch, 2 * height, 2 * width, channels), dtype=x.dtype, device="cpu")
        run_upsample2x(library(), x=(x.data_ptr(), x.stride()), out=out.data_ptr(), batch=batch, height=height,
                       width=width, channels=channels, kind=_KINDS[x.dtype], threads=torch.get_num_threads())
        return out
    resized = F.interpolate(x.permute(0, 3, 1, 2), size=(2 * height, 2 * width), mode="bilinear",
                            align_corners=False)
    return resized.permute(0, 2, 3, 1)


def _native_runs(x: torch.Tensor) -> bool:
    if not readable_in_place(x) or x.dtype not in _KINDS or x.numel() == 0 or x.stride(3) != 1:
        return False
    if being_traced() or (torch.is_grad_enabled() and x.requires_grad):
        return False
    try:
        library()
    except BackendUnavailable:  # said once where the scan backend is chosen; torch's kernel gives the same maps
        return False
    return True
