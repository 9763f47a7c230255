"""VMamba ImageNet weights: old key names renamed, the classifier dropped, the encoder size they hold."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping, Optional

import torch

from ..config import VARIANTS
from .architecture import _count_blocks
from .errors import CheckpointError

if TYPE_CHECKING:
    from .weights import LoadReport

ENCODER_PREFIX = "backbone.vssm."


# Older VMamba releases name some modules differently; the published loader renames them like this.
_VMAMBA_RENAMES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def _vmamba_to_sigma_keys(state: dict[str, torch.Tensor], report: LoadReport) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _VMAMBA_RENAMES:
            new = pattern.sub(repl, new)
        if new != key:
            report.renamed[key] = new
        if new.startswith("classifier."):
            report.dropped.append(key)  # the ImageNet head has no place in a segmentation model
            continue
        out[ENCODER_PREFIX + new] = value
    return out


def _vmamba_sizes(state: Mapping[str, torch.Tensor]) -> Optional[tuple[tuple[int, ...], int, int]]:
    """(depths, width, d_state) of a VMamba encoder state dict with ``backbone.vssm.`` keys; None if incomplete."""
    try:
        dims = tuple(state[ENCODER_PREFIX + "patch_embed.0.weight"].shape)[0]
        depths = tuple(_count_blocks({k[len("backbone.vssm."):] if k.startswith(ENCODER_PREFIX) else k: v
                                      for k, v in state.items()},
                                     re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\."), range(4)))
        d_state = tuple(state[ENCODER_PREFIX + "layers.0.blocks.0.op.A_logs"].shape)[1]
    except (KeyError, CheckpointError, IndexError):
        return None
    return depths, dims, d_state


def _vmamba_label(depths: tuple[int, ...], dims: int) -> str:
    for name in ("tiny", "small", "base"):
        if (tuple(VARIANTS[name]["depths"]), VARIANTS[name]["dims"]) == (depths, dims):
            return f"VMamba-{name[0].upper()} ImageNet weights (vssm_{name}: depths {'-'.join(map(str, depths))}, " \
                   f"width {dims})"
    return f"VMamba ImageNet weights of depths {'-'.join(map(str, depths))}, width {dims}"
