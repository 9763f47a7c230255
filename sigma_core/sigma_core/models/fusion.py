"""Sigma's two fusion blocks, applied at each encoder stage: Cross Mamba (CroMB) and Concat Mamba (ConMB).

Both take and return channels-last maps (B, H, W, C); names follow the published
code (`backbone.cross_mamba.i.op.*`, `backbone.channel_attn_mamba.i.op.*`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cross_scan import concat_scan_order
from .vmamba import (
    EXPORT_BACKEND,
    LayerNorm,
    declare_scan_parameters,
    init_ssm_,
    no_weight_decay,
    scan_directions,
    scan_map_directions,
    scan_map_directions_export,
)


class CrossSelectiveSSM(nn.Module):
    """The two single-direction scans of CroMB, with C swapped between modalities (published `CMA_ssm`).

    Suffix 1 belongs to RGB, 2 to X. Inputs (B, d_inner, L) each; outputs (B, L, d_inner) each, normalised.
    """

    def __init__(self, d_inner: int, d_state: int, dt_rank: int):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.scan_backend = "auto"
        self.A_log_1 = nn.Parameter(torch.empty(d_inner, d_state))
        self.A_log_2 = nn.Parameter(torch.empty(d_inner, d_state))
        self.D_1 = nn.Parameter(torch.empty(d_inner))
        self.D_2 = nn.Parameter(torch.empty(d_inner))
        no_weight_decay(self.A_log_1, self.A_log_2, self.D_1, self.D_2)
        self.x_proj_1 = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.x_proj_2 = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj_1 = nn.Linear(dt_rank, d_inner, bias=True)
        self.dt_proj_2 = nn.Linear(dt_rank, d_inner, bias=True)
        self.out_norm_1 = LayerNorm(d_inner)
        self.out_norm_2 = LayerNorm(d_inner)
        for i in (1, 2):
            x_proj, dt_proj = getattr(self, f"x_proj_{i}"), getattr(self, f"dt_proj_{i}")
            init_ssm_(x_proj.weight[None], dt_proj.weight[None], dt_proj.bias[None],
                      getattr(self, f"A_log_{i}"), getattr(self, f"D_{i}"))

    def forward(self, x_rgb: torch.Tensor, x_other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Both scans run as one grouped scan (G = 2); swap_c makes each read the other's C. The two channels-last
        # maps are stacked channels-last too, (B, L, 2, D) in memory: whole rows copied, and no transposed copy of
        # them for the projections or the scan.
        ys = scan_directions(
            torch.stack([x_rgb.transpose(1, 2), x_other.transpose(1, 2)], dim=2).permute(0, 2, 3, 1),
            torch.stack([self.x_proj_1.weight, self.x_proj_2.weight]),
            torch.stack([self.dt_proj_1.weight, self.dt_proj_2.weight]),
            torch.stack([self.dt_proj_1.bias, self.dt_proj_2.bias]),
            torch.cat([self.A_log_1, self.A_log_2]),
            torch.cat([self.D_1, self.D_2]),
            backend=self.scan_backend,
            swap_c=True,
        )
        return self.out_norm_1(ys[:, 0].transpose(1, 2)), self.out_norm_2(ys[:, 1].transpose(1, 2))


class CrossMambaOp(nn.Module):
    """CroMB body: per-modality in_proj, one shared depthwise conv + SiLU, cross scan, per-modality out_proj."""

    def __init__(self, dim: int, d_state: int = 4, ssm_ratio: float = 2.0, d_conv: int = 3):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        self.d_inner = d_inner
        self.in_proj = nn.Linear(dim, d_inner, bias=False)
        self.in_proj_modalx = nn.Linear(dim, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.out_proj_rgb = nn.Linear(d_inner, dim, bias=False)
        self.out_proj_e = nn.Linear(d_inner, dim, bias=False)
        self.CMA_ssm = CrossSelectiveSSM(d_inner, d_state, math.ceil(dim / 16))

    def forward(self, rgb: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, height, width, _ = rgb.shape
        x = torch.cat([self.in_proj(rgb), self.in_proj_modalx(other)], dim=0)  # the conv is shared: one call
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2))).flatten(2)
        y_rgb, y_other = self.CMA_ssm(x[:batch], x[batch:])
        shape = (batch, height, width, self.d_inner)
        return self.out_proj_rgb(y_rgb.reshape(shape)), self.out_proj_e(y_other.reshape(shape))


class CrossMambaFusion(nn.Module):
    """Cross Mamba block: each modality + its cross-scanned update. Two (B, H, W, C) -> two (B, H, W, C)."""

    def __init__(self, dim: int, d_state: int = 4, ssm_ratio: float = 2.0):
        super().__init__()
        self.op = CrossMambaOp(dim, d_state=d_state, ssm_ratio=ssm_ratio)

    def forward(self, rgb: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d_rgb, d_other = self.op(rgb, other)
        return rgb + d_rgb, other + d_other


class ConcatMambaOp(nn.Module):
    """ConMB body: scan of the RGB-then-X concatenated sequence (both ways), crossed channel gates, out_proj."""

    directions = 2

    def __init__(self, dim: int, d_state: int = 4, ssm_ratio: float = 2.0, d_conv: int = 3):
        super().__init__()
        d_inner = int(ssm_ratio * dim)
        rank = math.ceil(dim / 16)
        k = self.directions
        self.d_inner = d_inner
        self.scan_backend = "auto"
        declare_scan_parameters(self, k, d_inner, rank, d_state)
        self.in_proj = nn.Linear(dim, d_inner, bias=False)
        self.in_proj_modalx = nn.Linear(dim, d_inner, bias=False)
        padding = (d_conv - 1) // 2
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=padding, groups=d_inner, bias=True)
        self.conv2d_modalx = nn.Conv2d(d_inner, d_inner, d_conv, padding=padding, groups=d_inner, bias=True)
        self.out_norm1 = LayerNorm(d_inner)
        self.out_norm2 = LayerNorm(d_inner)
        self.out_proj = nn.Linear(2 * d_inner, dim, bias=False)
        squeeze = d_inner // 16
        self.fc1 = nn.Sequential(nn.Linear(d_inner, squeeze, bias=False), nn.SiLU(),
                                 nn.Linear(squeeze, d_inner, bias=False))
        self.fc2 = nn.Sequential(nn.Linear(d_inner, squeeze, bias=False), nn.SiLU(),
                                 nn.Linear(squeeze, d_inner, bias=False))
        init_ssm_(self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds)

    def forward(self, rgb: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = rgb.shape
        a, b = self.in_proj(rgb), self.in_proj_modalx(other)
        # Squeeze-excitation gates from each modality's projection, applied crosswise below.
        gate_from_rgb = torch.sigmoid(self.fc1(a.mean(dim=(1, 2))))[:, None, None, :]
        gate_from_other = torch.sigmoid(self.fc2(b.mean(dim=(1, 2))))[:, None, None, :]
        a = F.silu(self.conv2d(a.permute(0, 3, 1, 2)))
        b = F.silu(self.conv2d_modalx(b.permute(0, 3, 1, 2)))
        length = height * width
        if self.scan_backend == EXPORT_BACKEND:  # no size-keyed table in the graph: the sequence as a one-row map
            sequence = torch.cat([a.flatten(2), b.flatten(2)], dim=-1)[:, :, None]  # (B, d_inner, 1, 2L): RGB, X
            y = scan_map_directions_export(sequence, self.directions, self.x_proj_weight, self.dt_projs_weight,
                                           self.dt_projs_bias, self.A_logs, self.Ds)[:, 0]
        else:
            # RGB then X positions, concatenated channels-last: the convs' outputs are channels-last in memory, so
            # this copies whole rows (a (B, C, 2L) concat of their flattened maps copied element by element, 3x slower).
            both = torch.cat([a.permute(0, 2, 3, 1).reshape(batch, length, -1),
                              b.permute(0, 2, 3, 1).reshape(batch, length, -1)], dim=1).transpose(1, 2)
            y = scan_map_directions(
                both, concat_scan_order(length, a.device), self.x_proj_weight, self.dt_projs_weight,
                self.dt_projs_bias, self.A_logs, self.Ds, backend=self.scan_backend,
            ).transpose(1, 2)
        shape = (batch, height, width, self.d_inner)  # y: (B, 2L, d_inner), RGB then X
        y_rgb = self.out_norm1(y[:, :length].reshape(shape)) * gate_from_other
        y_other = self.out_norm2(y[:, length:].reshape(shape)) * gate_from_rgb
        return self.out_proj(torch.cat([y_rgb, y_other], dim=-1))


class ConcatMambaFusion(nn.Module):
    """Concat Mamba block: rgb + other + ConMB(rgb, other). Two (B, H, W, C) -> one fused (B, H, W, C)."""

    def __init__(self, dim: int, d_state: int = 4, ssm_ratio: float = 2.0):
        super().__init__()
        self.op = ConcatMambaOp(dim, d_state=d_state, ssm_ratio=ssm_ratio)

    def forward(self, rgb: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return rgb + other + self.op(rgb, other)
