"""Sigma's channel-aware Mamba decoder (published `decode_head`): PatchExpand, CVSS blocks, final x4 upsampling.

Channels-last (B, H, W, C) inside; takes the 4 fused encoder maps channels-first and
returns logits (B, K, 4*H_1, 4*W_1) channels-first (the wrapper resizes them to the input).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.upsample import upsample2x_channels_last
from ..tracing import being_traced
from .vmamba import SS2D, DropPath, LayerNorm


def resize_channels_last(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners False) of a (B, H, W, C) map to (B, size[0], size[1], C)."""
    if not being_traced() and tuple(x.shape[1:3]) == tuple(size):
        return x  # (traced for export the resize stays: sizes are symbols there, and equal sizes resize exactly)
    return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


class PatchExpand(nn.Module):
    """(B, H, W, 8C) -> (B, 2H, 2W, 4C): Linear(8C -> 16C), channels read as (row offset, column offset, 4C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        x = self.expand(x)
        out_dim = x.shape[-1] // 4
        x = x.reshape(batch, height, width, 2, 2, out_dim).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(batch, 2 * height, 2 * width, out_dim))


class ChannelAttention(nn.Module):
    """x * sigmoid(fc(avgpool x) + fc(maxpool x)), fc = 1x1 conv C -> C//squeeze -> C with SiLU. (B, C, H, W)."""

    def __init__(self, dim: int, squeeze: int = 30):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv2d(dim, dim // squeeze, 1, bias=False), nn.SiLU(), nn.Conv2d(dim // squeeze, dim, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.fc(F.adaptive_avg_pool2d(x, 1)) + self.fc(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(attn)


class ChannelAttentionBlock(nn.Module):
    """conv3x3 (C -> C//3) -> GELU -> conv3x3 (-> C) -> channel attention. (B, C, H, W) -> same."""

    def __init__(self, dim: int, compress: int = 3, squeeze: int = 30):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(dim, dim // compress, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(dim // compress, dim, 3, padding=1),
            ChannelAttention(dim, squeeze),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class CVSSBlock(nn.Module):
    """Channel-aware VSS block: y = x*scale1 + SS2D(norm1(x)); out = CAB(norm2(y)) + y*scale2. (B, H, W, C)."""

    def __init__(self, dim: int, d_state: int = 4, ssm_ratio: float = 2.0, drop_path: float = 0.0):
        super().__init__()
        self.scale1 = nn.Parameter(torch.ones(dim))
        self.scale2 = nn.Parameter(torch.ones(dim))
        self.norm1 = LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.conv_blk = ChannelAttentionBlock(dim)
        self.norm2 = LayerNorm(dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale1 + self.drop_path(self.op(self.norm1(x)))
        branch = self.conv_blk(self.norm2(y).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return branch + y * self.scale2


class UpsampleHalve(nn.Module):
    """Between decoder stages: Linear(C -> C/2) then bilinear x2 then LayerNorm. (B, H, W, C) -> (B, 2H, 2W, C/2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim // 2, bias=False)
        self.norm = LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(upsample2x_channels_last(self.linear(x)))


class DecoderStage(nn.Module):
    def __init__(self, dim: int, depth: int, d_state: int, ssm_ratio: float, drop_paths: list[float],
                 upsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            CVSSBlock(dim, d_state=d_state, ssm_ratio=ssm_ratio, drop_path=drop_paths[i]) for i in range(depth)
        )
        self.upsample = UpsampleHalve(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.upsample(x) if self.upsample is not None else x


class FinalUpsample(nn.Module):
    """x4 to the patch-embedding resolution: (Linear + bilinear x2) twice, then LayerNorm. (B, H, W, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim, bias=False)
        self.linear2 = nn.Linear(dim, dim, bias=False)
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample2x_channels_last(self.linear1(x))
        x = upsample2x_channels_last(self.linear2(x))
        return self.norm(x)


class MambaDecoder(nn.Module):
    """Channel-aware Mamba decoder. 4 fused maps (B, C*2**i, H_i, W_i) -> logits (B, K, 4*H_1, 4*W_1).

    layers_up.0 is the PatchExpand of the deepest map; layers_up.1/2/3 run at widths 4C, 2C, C with the
    fused maps 2, 1, 0 as skips (running map resized to the skip's size, then added).
    """

    def __init__(self, dims: int, num_classes: int, depths: tuple[int, ...] = (4, 4, 4), d_state: int = 4,
                 ssm_ratio: float = 2.0, drop_path_rate: float = 0.1):
        super().__init__()
        # Stochastic-depth rates spaced as published: over a 4-entry depth list ordered from the shallowest
        # stage (4th entry unused), so the first decoder stage (the deepest features) gets the highest rates.
        spaced = [depths[2], depths[1], depths[0], depths[0]]
        rates = torch.linspace(0, drop_path_rate, sum(spaced), device="cpu").tolist()
        self.layers_up = nn.ModuleList([PatchExpand(8 * dims)])
        for i, depth in enumerate(depths):
            start = sum(spaced[:2 - i])
            self.layers_up.append(DecoderStage(dims * 2 ** (2 - i), depth, d_state, ssm_ratio,
                                               rates[start:start + depth], upsample=i < len(depths) - 1))
        self.norm_up = LayerNorm(dims)
        self.up = FinalUpsample(dims)
        self.output = nn.Conv2d(dims, num_classes, kernel_size=1, bias=False)
        self.apply(_init_dense)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.expand(features[3])
        for level in range(len(self.layers_up) - 1):
            x = self.stage(level, x, features[2 - level])
        return self.logits(x)

    # The steps of forward, for a caller that runs them as their inputs become ready (Sigma on two threads).
    def expand(self, deepest: torch.Tensor) -> torch.Tensor:
        """The deepest fused map (B, 8C, H_3, W_3), channels-first -> the running map (B, 2H_3, 2W_3, 4C)."""
        return self.layers_up[0](deepest.permute(0, 2, 3, 1))

    def stage(self, level: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Decoder stage ``level`` (0-2) on the running map x (B, H, W, C') resized to the skip's size plus the skip,
        fused map 2 - level (B, C', H_s, W_s) channels-first. Returns (B, 2H_s, 2W_s, C'/2), level 2
        (B, H_s, W_s, C')."""
        skip = skip.permute(0, 2, 3, 1)
        return self.layers_up[level + 1](resize_channels_last(x, tuple(skip.shape[1:3])) + skip)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (B, H_1, W_1, C) -> logits (B, K, 4*H_1, 4*W_1)."""
        x = self.up(self.norm_up(x))
        # The 1x1 output convolution as a matmul on the channels-last map (the convolution took the slow im2col path
        # for this layout); logits come out as a channels-first view of channels-last memory.
        return F.linear(x, self.output.weight.flatten(1)).permute(0, 3, 1, 2)


def _init_dense(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
