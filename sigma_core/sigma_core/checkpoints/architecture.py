"""The Sigma architecture a state dict holds, from its keys and shapes alone."""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch

from ..config import VARIANTS, SigmaConfig
from .errors import CheckpointError

_VARIANT_LABELS = {"nano": "Sigma-nano", "tiny": "Sigma-T", "small": "Sigma-S", "base": "Sigma-B"}
_ARCHITECTURE_FIELDS = ("depths", "dims", "decoder_depths", "d_state", "fusion_d_state", "decoder_d_state",
                        "ssm_ratio")
_ENCODER_BLOCK = re.compile(r"^backbone\.vssm\.layers\.(\d+)\.blocks\.(\d+)\.")
_DECODER_BLOCK = re.compile(r"^decode_head\.layers_up\.([123])\.blocks\.(\d+)\.")


def describe_config(cfg: SigmaConfig) -> str:
    """One line naming a network's variant and sizes, e.g. "Sigma-S (encoder depths 2-2-27-2, width 96, ...)"."""
    def dash(values: Sequence[int]) -> str:
        return "-".join(str(v) for v in values)

    label = _VARIANT_LABELS.get(cfg.variant, "a custom Sigma") if cfg.variant else "a custom Sigma"
    ratio = f", ssm_ratio {cfg.ssm_ratio:g}" if cfg.ssm_ratio != 2.0 else ""
    return (f"{label} (encoder depths {dash(cfg.depths)}, width {cfg.dims}; decoder depths {dash(cfg.decoder_depths)}; "
            f"d_state {cfg.d_state}, fusion {cfg.fusion_d_state}, decoder {cfg.decoder_d_state}{ratio}; "
            f"{cfg.num_classes} classes)")


def _count_blocks(state: Mapping[str, torch.Tensor], pattern: re.Pattern, stages: Sequence[int]) -> list[int]:
    found: dict[int, set[int]] = {}
    for key in state:
        m = pattern.match(key)
        if m:
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    counts = []
    for stage in stages:
        blocks = found.get(stage, set())
        if blocks != set(range(len(blocks))) or not blocks:
            raise CheckpointError(f"stage {stage} has blocks {sorted(blocks)}; expected 0..n-1 with n >= 1")
        counts.append(len(blocks))
    return counts


def infer_sigma_config(state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> SigmaConfig:
    """The SigmaConfig whose model has exactly the keys and shapes of ``state``, from those alone.

    state: a Sigma state dict with the published key names ("module." already stripped, see state_dict_of).
    Reads the encoder's depths (blocks per stage) and width (``patch_embed.0`` output channels), the
    d_state of the encoder, fusion and decoder scans, ssm_ratio, the decoder's depths and width
    (published: the encoder's width) and the class count (``decode_head.output``); a size that matches
    a named variant gets that name. Any depths/width the published code can build are accepted.
    Raises CheckpointError naming the key that is missing or does not fit when no such config exists.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{source}: key {key!r} is missing, so it is not a complete Sigma state dict")
        return tuple(state[key].shape)

    try:
        dims = shape("backbone.vssm.patch_embed.0.weight")[0]
        depths = _count_blocks(state, _ENCODER_BLOCK, range(4))
        decoder_depths = _count_blocks(state, _DECODER_BLOCK, (1, 2, 3))
    except CheckpointError as err:
        raise CheckpointError(f"{source}: cannot infer the Sigma architecture: {err}") from None
    a_logs = shape("backbone.vssm.layers.0.blocks.0.op.A_logs")  # (4 * d_inner, d_state)
    decoder_width = shape("decode_head.norm_up.weight")[0]
    if decoder_width != dims:
        raise CheckpointError(f"{source}: decoder width {decoder_width} differs from the encoder width {dims}; "
                              "the published Sigma (and sigma_core) ties them")
    sizes: dict[str, Any] = {
        "depths": tuple(depths), "dims": dims, "decoder_depths": tuple(decoder_depths), "d_state": a_logs[1],
        "fusion_d_state": shape("backbone.cross_mamba.0.op.CMA_ssm.A_log_1")[1],
        "decoder_d_state": shape("decode_head.layers_up.1.blocks.0.op.A_logs")[1],
        "ssm_ratio": a_logs[0] / 4 / dims,
        "num_classes": shape("decode_head.output.weight")[0],
    }
    variant = next((name for name, v in VARIANTS.items()
                    if all(tuple(v[k]) == sizes[k] if isinstance(v[k], tuple) else v[k] == sizes[k]
                           for k in ("depths", "dims", "decoder_depths"))
                    and (sizes["d_state"], sizes["fusion_d_state"], sizes["decoder_d_state"]) == (16, 4, 4)
                    and sizes["ssm_ratio"] == 2.0), None)
    try:
        if variant is not None:
            cfg = SigmaConfig(variant=variant, num_classes=sizes["num_classes"])
        else:
            cfg = SigmaConfig(**sizes)
    except ValueError as err:
        raise CheckpointError(f"{source}: the sizes its keys give are not a Sigma sigma_core builds: {err}") from None
    _check_keys_fit(cfg, state, source)
    return cfg


def _check_keys_fit(cfg: SigmaConfig, state: Mapping[str, torch.Tensor], source: str) -> None:
    from ..models.sigma import build_sigma

    expected = {k: tuple(v.shape) for k, v in build_sigma(cfg, device="meta").state_dict().items()}
    problems = [f"{k} missing" for k in expected if k not in state]
    problems += [f"{k} unexpected" for k in state if k not in expected]
    problems += [f"{k} {tuple(state[k].shape)} instead of {shape}" for k, shape in expected.items()
                 if k in state and tuple(state[k].shape) != shape]
    if problems:
        more = f" ({len(problems)} in all)" if len(problems) > 4 else ""
        raise CheckpointError(f"{source}: its keys do not fit {describe_config(cfg)}, the network its sizes name: "
                              + "; ".join(problems[:4]) + more)
