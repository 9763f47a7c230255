"""The Sigma network: shared VMamba encoder + per-stage fusion + Mamba decoder, and build_sigma.

State-dict keys match the published model: `backbone.vssm.*`, `backbone.cross_mamba.i.*`,
`backbone.channel_attn_mamba.i.*`, `decode_head.*`. Variant sizes live in sigma_core.config.VARIANTS.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VARIANTS, SigmaConfig
from ..tracing import being_traced
from .decoder import MambaDecoder
from .fusion import ConcatMambaFusion, CrossMambaFusion
from .stage_threads import hand_over, hooks_or_training_on, may_run_apart, run_apart
from .vmamba import VSSEncoder


class SigmaBackbone(nn.Module):
    """Siamese encoder + fusion. rgb, x: (B, 3, H, W) -> 4 fused maps (B, C*2**i, H_i, W_i), channels-first."""

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

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        rgb_maps, x_maps = self.encode(rgb, x)
        return [self.fuse(rgb_maps, x_maps, stage) for stage in range(len(rgb_maps))]

    def encode(self, rgb: torch.Tensor, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both modalities' encoder maps: (rgb's, x's), 4 maps (B, H_i, W_i, C*2**i) each, channels-last views."""
        # One pass over the shared weights for both modalities (same result as two passes).
        both = self.encode_one(torch.cat([rgb, x], dim=0))
        batch = rgb.shape[0]
        return [feat[:batch] for feat in both], [feat[batch:] for feat in both]

    def encode_one(self, image: torch.Tensor) -> list[torch.Tensor]:
        """One modality's encoder maps: image (B, 3, H, W) -> 4 maps (B, H_i, W_i, C*2**i), channels-last views."""
        return [feat.permute(0, 2, 3, 1) for feat in self.vssm(image)]

    def fuse(self, rgb_maps: list[torch.Tensor], x_maps: list[torch.Tensor], stage: int) -> torch.Tensor:
        """Fused map ``stage`` (B, C*2**stage, H_i, W_i) from the encoder's maps, as a channels-first view."""
        f_rgb, f_x = self.cross_mamba[stage](rgb_maps[stage], x_maps[stage])
        # A channels-first view: the decoder reads it channels-last (a contiguous copy would be transposed back).
        return self.channel_attn_mamba[stage](f_rgb, f_x).permute(0, 3, 1, 2)


def _stage0_positions(image: torch.Tensor) -> int:
    """Positions of the encoder's stage-0 map for image (B, 3, H, W): (H // 4) * (W // 4) (the 4x4 patch embedding)."""
    return (image.shape[2] // 4) * (image.shape[3] // 4)


# The forwards that Sigma._forward_apart's steps stand for (a forward patched later must run: see _parts_as_built).
_BACKBONE_FORWARD, _DECODER_FORWARD = SigmaBackbone.forward, MambaDecoder.forward


class Sigma(nn.Module):
    """Sigma RGB-X segmentation network.

    forward(rgb, x): rgb, x (B, 3, H, W) float, each ImageNet-normalised (a single-channel
    modality repeated to 3 channels) -> logits (B, num_classes, H, W), bilinearly resized to the input.

    In CPU inference on 2 threads, a model of up to 64 dims with one block a decoder stage (nano) runs the fusion
    stages and the decoder's first two stages as two parts on two threads for inputs of 180x240 pixels or more
    (``_forward_apart``, models/stage_threads.py; from 480x640 the encoder too): the same ops, results within float
    rounding.
    """

    def __init__(self, cfg: SigmaConfig):
        super().__init__()
        self.config = cfg
        self.backbone = SigmaBackbone(cfg)
        self.decode_head = MambaDecoder(cfg.dims, cfg.num_classes, depths=cfg.decoder_depths,
                                        d_state=cfg.decoder_d_state, ssm_ratio=cfg.ssm_ratio,
                                        drop_path_rate=cfg.decoder_drop_path_rate)
        self.set_scan_backend(cfg.scan_backend)
        # Where two parts on two threads were measured to pay (2 cores, 480x640, fp32, 2-thread forward in turn
        # against apart, same runs, models of nano's depths): dims 32 (nano) 1.76-1.84x -> 1.86-1.97x one thread
        # (see _forward_apart); with the fusion and decoder stages apart only, dims 48 306.0 -> 298.8 ms, 64 422.9 ->
        # 413.4 ms, 96 700.2 -> 699.1 ms (wider maps split well over threads inside each op). With 4 blocks a decoder
        # stage the caller's part outweighs the helper's: Sigma-T 1462.8 -> 1602.6 ms.
        self.stages_apart = cfg.dims <= 64 and all(depth == 1 for depth in cfg.decoder_depths)

    def forward(self, rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_inputs(rgb, x)
        if self._apart_now(rgb, x):
            logits = self._forward_apart(rgb, x)
        else:
            logits = self.decode_head(self.backbone(rgb, x))
        if not being_traced() and logits.shape[2:] == rgb.shape[2:]:
            return logits  # a same-size bilinear resize is an exact copy (3-6 ms at 480x640); traced, sizes are symbols
        return F.interpolate(logits, size=rgb.shape[2:], mode="bilinear", align_corners=False)

    def _apart_now(self, rgb: torch.Tensor, x: torch.Tensor) -> bool:
        """Whether this forward runs _forward_apart; rgb, x (B, 3, H, W), encoder map 0 is (H // 4, W // 4).

        Only at exactly 2 threads, the one count measured: with more, the caller's idle OpenMP workers spin for a
        while on the cores the helper's team needs. Only for inputs of 180x240 pixels or more (a stage-0 map of 2700
        positions), where the parts outweigh handing them over (nano, fp32, in turn against apart, same runs:
        120x160 -2.4 ms, 150x200 -1.7 ms, 180x240 +1.3 to +1.7 ms, 240x320 +2.8 to +3.0 ms, 360x480 +4 to +6 ms,
        480x640 +5.5 to +18 ms a forward). Not in training mode (random draws would interleave between the threads),
        and not with forward hooks on the backbone, the decoder or any of their modules: the parts do not call the
        backbone and the decoder as modules, and a hook would see the stages on two threads."""
        # The size last: traced with symbolic sizes (torch.export), comparing them would record a guard.
        return (self.stages_apart and torch.get_num_threads() == 2 and may_run_apart(rgb, x)
                and self._parts_as_built() and not hooks_or_training_on(self.backbone, self.decode_head)
                and _stage0_positions(rgb) >= 2700)

    def _parts_as_built(self) -> bool:
        """Whether the backbone and decoder are ours, as built: the parts call their steps (encode, fuse, expand,
        stage, logits), not their forward, so a replaced module, a subclass, a forward set on the instance or the
        class (or a compiled module) must run in turn, through its forward."""
        return (type(self.backbone) is SigmaBackbone and type(self.decode_head) is MambaDecoder
                and SigmaBackbone.forward is _BACKBONE_FORWARD and MambaDecoder.forward is _DECODER_FORWARD
                and "forward" not in vars(self.backbone) and "forward" not in vars(self.decode_head)
                and len(self.backbone.cross_mamba) == 4)

    def _forward_apart(self, rgb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The decoder's logits (B, K, 4*H_1, 4*W_1) with the encoder, the fusion stages and decoder stages 0-1 run as
        two parts at once (models/stage_threads.py).

        The encoder: for inputs of 480x640 pixels or more, one modality on each thread (nano, 2-thread encoder,
        batch of 2 against apart, same runs, min of 11: 480x640 85.8 -> 83.1 ms; whole forward 175.3 -> 169.8,
        175.4 -> 172.9 (bf16), 176.3 -> 171.5 ms); below, both as one batch on both threads (360x480 47.9 -> 49.3
        ms, 240x320 21.6 -> 25.0 ms apart: their Python, under one lock, outweighs the small ops).

        Then fused map i is needed by decoder stage 2 - i only (map 3 by its first step), so the helper runs fusion
        stages 2 and 0 and the caller fusion stages 3 and 1 with the decoder's steps up to stage 1, taking map 2 as
        the helper hands it over; decoder stage 2 and the logits then run on both threads. Per part on one thread
        (nano, 480x640): 55.7 against 60.4 ms, the helper's map 2 ready before the caller needs it. Against fusion
        stage 0 beside stages 1-3 with the decoder after (same runs, min of 7): 177.8 -> 170.4 ms fp32, 177.3 ->
        170.7 ms bf16, where the in-turn forward took 184.9 and 179.8 ms. Where stages on both threads fail, the
        helper's error is raised (in turn, the earlier stage's would be).
        """
        if _stage0_positions(rgb) >= 19200:
            encode = self.backbone.encode_one
            x_maps, rgb_maps = run_apart(lambda: encode(x), lambda: encode(rgb))
        else:
            rgb_maps, x_maps = self.backbone.encode(rgb, x)
        fuse, decoder = self.backbone.fuse, self.decode_head
        fused2: Future = Future()

        def helper_part() -> torch.Tensor:
            hand_over(lambda: fuse(rgb_maps, x_maps, 2), fused2)
            return fuse(rgb_maps, x_maps, 0)

        def own_part() -> torch.Tensor:
            running = decoder.expand(fuse(rgb_maps, x_maps, 3))
            fused1 = fuse(rgb_maps, x_maps, 1)
            running = decoder.stage(0, running, fused2.result())
            return decoder.stage(1, running, fused1)

        fused0, running = run_apart(helper_part, own_part, handed=fused2)
        return decoder.logits(decoder.stage(2, running, fused0))

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
