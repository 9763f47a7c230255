"""The Sigma network: shared VMamba encoder + per-stage fusion + Mamba decoder, and build_sigma.

State-dict keys match the published model: `backbone.vssm.*`, `backbone.cross_mamba.i.*`,
`backbone.channel_attn_mamba.i.*`, `decode_head.*`. Variant sizes live in sigma_core.config.VARIANTS.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VARIANTS, SigmaConfig
from ..tracing import being_traced
from .decoder import MambaDecoder
from .fusion import ConcatMambaFusion, CrossMambaFusion
from .stage_threads import hooks_on, may_run_apart, run_apart
from .vmamba import VSSEncoder


class SigmaBackbone(nn.Module):
    """Siamese encoder + fusion. rgb, x: (B, 3, H, W) -> 4 fused maps (B, C*2**i, H_i, W_i), channels-first.

    In CPU inference on 2 threads, a model with dims <= 48 runs fusion stage 0 on a helper thread while the caller
    runs stages 1-3 for inputs of 240x320 pixels or more (models/stage_threads.py): the same ops, on two threads
    at once.
    """

    def __init__(self, cfg: SigmaConfig):
        super().__init__()
        self.vssm = VSSEncoder(cfg.depths, cfg.dims, d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio,
                               drop_path_rate=cfg.drop_path_rate)
        widths = cfg.stage_dims
        self.cross_mamba = nn.ModuleList(
            CrossMambaFusion(w, d_state=cfg.fusion_d_state, ssm_ratio=cfg.ssm_ratio) for w in widths
        )
        self.channel_attn_mamba = nn.ModuleList(
            ConcatMambaFusion(w, d_state=cfg.fusion_d_state, ssm_ratio=cfg.ssm_ratio) for w in widths
        )
        # Fusion stage 0 on a helper thread beside stages 1-3 (CPU inference on 2 threads; see stage_threads) where
        # the maps have few channels. Measured on 2 cores, 2-thread forward against 1 thread, 480x640: dims 32
        # (nano) 1.79x -> 1.85x, 48 1.83x -> 1.84x, 64 1.79x -> 1.78x, 96 (tiny) 1.95x -> 1.91x: wider maps
        # already split well over threads inside each op, and the helper's part then waits on the memory bus.
        # Only at exactly 2 threads, the one count measured: with more, the caller's idle OpenMP workers spin for
        # a while on the cores the helper's team needs. And only for inputs of 240x320 pixels or more (a stage-0
        # map of 4800 positions), where the parts outweigh handing one over: nano, same runs, in turn against
        # apart, 120x160 -1.5 ms, 180x240 -0.7 ms, 240x320 -0.1 to +1.6 ms, 360x480 +0.1 to +0.7 ms, 480x640 +3.4
        # to +8.5 ms a forward.
        self.fuse_apart = cfg.dims <= 48

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        batch = rgb.shape[0]
        # One pass over the shared weights for both modalities (same result as two passes).
        both = [feat.permute(0, 2, 3, 1) for feat in self.vssm(torch.cat([rgb, x], dim=0))]

        def fuse(i: int) -> torch.Tensor:
            f_rgb, f_x = self.cross_mamba[i](both[i][:batch], both[i][batch:])
            # A channels-first view: the decoder reads it channels-last (a contiguous copy would be transposed back).
            return self.channel_attn_mamba[i](f_rgb, f_x).permute(0, 3, 1, 2)

        if self._fuse_apart_now(both[0], rgb):
            # The stages are independent, and stage 0 costs about what the others do together (see stage_threads).
            first, rest = run_apart(lambda: fuse(0), lambda: [fuse(i) for i in range(1, len(both))])
            return [first, *rest]
        return [fuse(i) for i in range(len(both))]

    def _fuse_apart_now(self, stage0: torch.Tensor, rgb: torch.Tensor) -> bool:
        """Whether this forward runs fusion stage 0 beside stages 1-3 (see __init__); stage0 (2B, H_0, W_0, C)."""
        return (self.fuse_apart and len(self.cross_mamba) > 1 and stage0.shape[1] * stage0.shape[2] >= 4800
                and torch.get_num_threads() == 2 and may_run_apart(rgb)
                and not hooks_on(self.cross_mamba, self.channel_attn_mamba))


class Sigma(nn.Module):
    """Sigma RGB-X segmentation network.

    forward(rgb, x): rgb, x (B, 3, H, W) float, each ImageNet-normalised (a single-channel
    modality repeated to 3 channels) -> logits (B, num_classes, H, W), bilinearly resized to the input.
    """

    def __init__(self, cfg: SigmaConfig):
        super().__init__()
        self.config = cfg
        self.backbone = SigmaBackbone(cfg)
        self.decode_head = MambaDecoder(cfg.dims, cfg.num_classes, depths=cfg.decoder_depths,
                                        d_state=cfg.decoder_d_state, ssm_ratio=cfg.ssm_ratio,
                                        drop_path_rate=cfg.decoder_drop_path_rate)
        self.set_scan_backend(cfg.scan_backend)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_inputs(rgb, x)
        logits = self.decode_head(self.backbone(rgb, x))
        if not being_traced() and logits.shape[2:] == rgb.shape[2:]:
            return logits  # a same-size bilinear resize is an exact copy (3-6 ms at 480x640); traced, sizes are symbols
        return F.interpolate(logits, size=rgb.shape[2:], mode="bilinear", align_corners=False)

    def forward_features(self, rgb: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        """The 4 fused encoder maps, (B, C*2**i, H_i, W_i)."""
        check_inputs(rgb, x)
        return self.backbone(rgb, x)

    def set_scan_backend(self, backend: str) -> None:
        """Route every selective scan of the network to ``backend`` ("auto", "reference", "cpu", ...)."""
        if backend != self.config.scan_backend:
            self.config = replace(self.config, scan_backend=backend)  # validates the name
        for module in self.modules():
            if module is not self and hasattr(module, "scan_backend"):
                module.scan_backend = backend

    @property
    def scan_backend(self) -> str:
        """The configured backend name ("auto" unless set); see ops.resolve_backend for the one used."""
        return self.config.scan_backend


def check_inputs(rgb: torch.Tensor, x: torch.Tensor) -> None:
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"Sigma expects rgb as (B, 3, H, W), got shape {tuple(rgb.shape)}")
    if x.shape != rgb.shape:
        raise ValueError(
            f"Sigma expects x with rgb's shape {tuple(rgb.shape)} (repeat a 1-channel modality to 3 channels), "
            f"got {tuple(x.shape)}"
        )
    if rgb.shape[2] < 4 or rgb.shape[3] < 4:
        raise ValueError(f"Sigma needs images of at least 4x4 pixels, got {tuple(rgb.shape[2:])}")


def build_sigma(cfg: Union[SigmaConfig, str, None] = None, device: Optional[Union[str, torch.device]] = None,
                **overrides) -> Sigma:
    """Build a Sigma network (randomly initialised; load weights with sigma_core.load_weights).

    cfg: a SigmaConfig, or a variant name ("nano", "tiny", "small", "base"); overrides are SigmaConfig
    fields (e.g. num_classes=40). device: where to allocate ("meta" builds without memory).
    """
    if cfg is None or isinstance(cfg, str):
        cfg = SigmaConfig(variant=cfg or "tiny", **overrides)
    elif overrides:
        cfg = SigmaConfig.from_dict({**cfg.to_dict(), **overrides})
    if device is None:
        return Sigma(cfg)
    with torch.device(device):
        return Sigma(cfg)


def variant_names() -> list[str]:
    return list(VARIANTS)
