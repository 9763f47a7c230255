"""Putting weights of any of the three kinds (published Sigma, VMamba ImageNet, ours) into a built model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..config import SigmaConfig
from .architecture import _ARCHITECTURE_FIELDS, describe_config, infer_sigma_config
from .errors import ArchitectureMismatchError, CheckpointError, PathLike
from .limits import DEFAULT_MAX_PARAMETERS, check_state_size
from .own_format import FORMAT
from .reading import read_checkpoint
from .vmamba import ENCODER_PREFIX, _vmamba_label, _vmamba_sizes, _vmamba_to_sigma_keys


@dataclass
class LoadReport:
    """What load_weights did. Keys are the model's state-dict keys.

    kind: "sigma" (published or bare Sigma state dict), "sigma_core" (ours) or "vmamba_imagenet".
    loaded: keys copied from the checkpoint. missing: model keys the checkpoint lacks (for a VMamba
    checkpoint only encoder keys count, e.g. ``backbone.vssm.outnorm0.weight``). unexpected: checkpoint
    keys the model has no place for. dropped: checkpoint keys left out on purpose (the ImageNet classifier,
    or a class head of another size with allow_new_classes). renamed: old VMamba names -> new names.
    """

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

        parts = [f"{self.source}: {self.kind} checkpoint, {len(self.loaded)} tensors loaded"]
        for name in ("missing", "unexpected", "dropped"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name}: {head(keys)}")
        return "; ".join(parts)


_WRAPPER_PREFIXES = ("module.", "model.")  # DistributedDataParallel / DataParallel (nested too); Lightning


def _without_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys without the prefixes training wrappers add: ``module.`` (DDP, ``module.module.`` when wrapped
    twice) and Lightning's ``model.`` (its LightningModule's attribute); a prefix is stripped while every key
    has it, so Sigma's own key names are never cut."""
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def state_dict_of(obj: Any, source: str = "<state dict>") -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint object and its kind ("sigma_core", "sigma", "vmamba_imagenet").

    Accepts our format, {"model": sd}, {"state_dict": sd}, or a bare state dict; strips the prefixes training
    wrappers add ("module.", "module.module.", Lightning's "model.").
    """
    kind = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        kind, obj = "sigma_core", obj["state_dict"]
    elif isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source}: found no state dict (expected tensors by name, bare or under 'model' / 'state_dict')"
        )
    state = _without_wrapper_prefixes(dict(obj))
    if kind is None:
        is_sigma = any(k.startswith(("backbone.", "decode_head.")) for k in state)
        is_vmamba = any(k.startswith(("layers.", "patch_embed.")) for k in state)
        if not is_sigma and not is_vmamba:
            raise CheckpointError(
                f"{source}: keys look neither like Sigma (backbone.*, decode_head.*) nor like VMamba "
                f"(patch_embed.*, layers.*); first keys: {list(state)[:5]}"
            )
        kind = "sigma" if is_sigma else "vmamba_imagenet"
    return state, kind


def _how_to_build(cfg: SigmaConfig) -> str:
    if cfg.variant is not None:
        return f"model.variant={cfg.variant} for sigma-train, build_sigma({cfg.variant!r}) in Python"
    return (f"model.variant=null model.depths=[{', '.join(map(str, cfg.depths))}] model.dims={cfg.dims} "
            f"model.decoder_depths=[{', '.join(map(str, cfg.decoder_depths))}] for sigma-train")


def _check_same_architecture(model: nn.Module, state: dict[str, torch.Tensor], kind: str, obj: Any,
                             source: str) -> None:
    """Refuse a file that holds another variant/size than ``model``, naming what the file holds."""
    built = getattr(model, "config", None)
    if not isinstance(built, SigmaConfig):
        return
    if kind == "vmamba_imagenet":
        sizes = _vmamba_sizes(state)
        if sizes is not None and sizes != (tuple(built.depths), built.dims, built.d_state):
            raise CheckpointError(
                f"{source} holds {_vmamba_label(sizes[0], sizes[1])}, d_state {sizes[2]}, but the model's encoder "
                f"is that of {describe_config(built)}: use the VMamba checkpoint of the model's size, or build "
                f"the model to fit the file")
        return
    try:
        held = SigmaConfig.from_dict(obj["config"]) if kind == "sigma_core" else infer_sigma_config(state, source)
    except (CheckpointError, KeyError, TypeError, ValueError):
        return  # incomplete or unusual: the key-by-key shape check below reports what does not fit
    fields_ = [f for f in _ARCHITECTURE_FIELDS if getattr(held, f) != getattr(built, f)]
    if fields_:
        raise ArchitectureMismatchError(
            f"{source} holds {describe_config(held)}, but the model is {describe_config(built)} "
            f"({', '.join(fields_)} differ): build the model as the file's ({_how_to_build(held)}), "
            "or use a file of the model's variant", describe_config(held), describe_config(built), tuple(fields_))


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError if any floating-point tensor of ``state`` holds NaN or inf (naming them)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        head = ", ".join(bad[:4]) + (f", ... ({len(bad)} tensors in all)" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{source}: weights hold NaN or infinite values ({head}): the file is damaged or was saved from a "
            "diverged training run, and would give meaningless masks. Use another copy or an earlier checkpoint.")

def load_weights(
    model: nn.Module,
    src: Union[PathLike, Mapping[str, Any]],
    strict: bool = False,
    allow_new_classes: bool = False,
    source: Optional[str] = None,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
) -> LoadReport:
    """Copy the weights of ``src`` into ``model`` (a Sigma from build_sigma) and report what happened.

    src: a path or an already loaded object: a published Sigma checkpoint (state dict under "model" or
        bare, with or without a DistributedDataParallel "module." prefix), a VMamba ImageNet checkpoint
        (goes into the encoder only: classifier dropped, old key names renamed), or our own checkpoint.
    strict: raise CheckpointError if anything is missing or unexpected.
    allow_new_classes: drop (instead of raising on) a class head whose size differs (fine-tuning to
        another class count); the head keeps its initialisation and is listed in report.dropped.
    source: the name messages use for an already loaded ``src`` (default "<state dict>").
    max_parameters: refuse (CheckpointError naming the implied size) a file whose tensors' shapes imply more
        parameters, before any of them is read (see sigma_core.checkpoints.limits).
    Raises CheckpointError for: a file holding another variant or size than the model (naming what it
    holds, e.g. Sigma-S weights into a Sigma-T; VMamba ImageNet weights of another size likewise), NaN/inf
    weights, other shape mismatches (naming every mismatched key and both shapes). Tensors are cast to
    the model's dtypes (a half-precision checkpoint loads into a float32 model).
    """
    if isinstance(src, Mapping):
        source, obj = source or "<state dict>", src
    else:
        source, obj = str(src), read_checkpoint(src, max_parameters)
    state, kind = state_dict_of(obj, source)
    check_state_size(state, source, max_parameters)
    report = LoadReport(source=source, kind=kind)
    if kind == "vmamba_imagenet":
        state = _vmamba_to_sigma_keys(state, report)
    _check_same_architecture(model, state, kind, obj, source)
    check_finite(state, source)
    target = model.state_dict()
    head_keys = {"decode_head.output.weight", "decode_head.output.bias"}
    mismatched = []
    to_load = {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            if allow_new_classes and key in head_keys:
                report.dropped.append(key)
            else:
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
        else:
            to_load[key] = value
    if mismatched:
        cfg = getattr(model, "config", None)
        built = f" (model built as {cfg.name}, {cfg.num_classes} classes)" if cfg is not None else ""
        raise CheckpointError(
            f"{source} does not fit the model{built}: {len(mismatched)} shape mismatches: " + "; ".join(mismatched)
            + ". Build the model with the checkpoint's variant/dims/depths and num_classes "
            "(or pass allow_new_classes=True to re-initialise only the class head)."
        )
    scope = ENCODER_PREFIX if kind == "vmamba_imagenet" else ""
    report.missing = [k for k in target if k.startswith(scope) and k not in to_load]
    report.loaded = list(to_load)
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f"strict loading failed: {report}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        params.update(model.named_buffers())
        for key, value in to_load.items():
            params[key].copy_(value)
    return report
