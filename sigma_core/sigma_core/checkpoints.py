"""Weights in and out: published Sigma checkpoints, VMamba ImageNet checkpoints, and our own checkpoints.

- :func:`load_weights` puts any of the three into a built model and reports what it did.
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read our self-describing
  checkpoint: weights plus the config, class names, palette, modality and its scaling,
  input normalisation and input size, so a file alone is enough to run a model.

Every file is read with ``torch.load(weights_only=True)``: a downloaded checkpoint can
never run code. Our checkpoints therefore hold only tensors and plain data.
"""
from __future__ import annotations

import colorsys
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .config import SigmaConfig
from .data.modality import ModalityScaling
from .data.normalize import IMAGENET_MEAN, IMAGENET_STD
from .files import atomic_torch_save

FORMAT = "sigma_core.checkpoint"
FORMAT_VERSION = 1
ENCODER_PREFIX = "backbone.vssm."
LFS_MAGIC = b"version https://git-lfs"

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file/key and what to do."""


class LfsPointerError(CheckpointError):
    """The file is a Git LFS pointer, not the checkpoint it points to."""


class NotOurCheckpointError(CheckpointError):
    """The file holds weights but not our format (e.g. a published Sigma or VMamba checkpoint)."""


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


# --- reading files -------------------------------------------------------------------------------------


def read_checkpoint(path: PathLike) -> Any:
    """torch.load(path, weights_only=True) on CPU, with clear errors for absent files and LFS pointers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(LFS_MAGIC):
        text = head.decode("ascii", "replace")
        size = re.search(r"size (\d+)", text)
        real = f" (the real file has {int(size.group(1)):,} bytes)" if size else ""
        raise LfsPointerError(
            f"{path} is a Git LFS pointer file of {path.stat().st_size} bytes, not the checkpoint itself{real}: "
            "the repository was cloned without Git LFS. Fetch the real file with `git lfs install && git lfs pull` "
            "in that repository, or download the file itself (e.g. from the project's release or model page)."
        )
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (legacy: a pickle)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint but {_file_kind(head)}: give a .pt/.pth file "
                              "written by torch.save, e.g. best.pt from sigma-train or a published Sigma .pth")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message suggests weights_only=False; we never do that, so say what is in the way instead.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" such as {found.group(1)}" if found else ""
        raise CheckpointError(
            f"{path}: it holds Python objects{what} besides tensors and plain data, and sigma_core loads "
            "checkpoints only with torch.load(weights_only=True) so that a file can never run code. Re-save "
            "just its state dict (torch.save(model.state_dict(), ...)) where you trust the file."
        ) from err
    except Exception as err:  # noqa: BLE001 - any other read failure gets the file name attached
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {err}. Is it a PyTorch checkpoint "
            "(torch.save), complete and not truncated?"
        ) from err


def _file_kind(head: bytes) -> str:
    """What the first bytes of a file say it is, for error messages."""
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF image"),
                        (b"MM\x00*", "a TIFF image"), (b"SQLite format 3", "an SQLite database (a ROS 2 bag?)"),
                        (b"\x89MCAP", "an MCAP file (a ROS 2 bag?)"), (b"#ROSBAG", "a ROS 1 bag")):
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "neither a zip archive nor a pickle"


def state_dict_of(obj: Any, source: str = "<state dict>") -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint object and its kind ("sigma_core", "sigma", "vmamba_imagenet").

    Accepts our format, {"model": sd}, {"state_dict": sd}, or a bare state dict; strips "module." prefixes.
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
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
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


# --- loading weights into a model ------------------------------------------------------------------------


def load_weights(
    model: nn.Module,
    src: Union[PathLike, Mapping[str, Any]],
    strict: bool = False,
    allow_new_classes: bool = False,
) -> LoadReport:
    """Copy the weights of ``src`` into ``model`` (a Sigma from build_sigma) and report what happened.

    src: a path or an already loaded object: a published Sigma checkpoint (state dict under "model" or
        bare, with or without a DistributedDataParallel "module." prefix), a VMamba ImageNet checkpoint
        (goes into the encoder only: classifier dropped, old key names renamed), or our own checkpoint.
    strict: raise CheckpointError if anything is missing or unexpected.
    allow_new_classes: drop (instead of raising on) a class head whose size differs (fine-tuning to
        another class count); the head keeps its initialisation and is listed in report.dropped.
    Shape mismatches raise CheckpointError naming every mismatched key and both shapes. Tensors are cast
    to the model's dtypes (a half-precision checkpoint loads into a float32 model).
    """
    if isinstance(src, Mapping):
        source, obj = "<state dict>", src
    else:
        source, obj = str(src), read_checkpoint(src)
    state, kind = state_dict_of(obj, source)
    report = LoadReport(source=source, kind=kind)
    if kind == "vmamba_imagenet":
        state = _vmamba_to_sigma_keys(state, report)
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


# --- our own checkpoint --------------------------------------------------------------------------------


def default_normalization() -> dict[str, list[float]]:
    """ImageNet mean/std for 0..1 values, applied to RGB and to the 3-channel-replicated modality alike."""
    return {"mean": [float(v) for v in IMAGENET_MEAN], "std": [float(v) for v in IMAGENET_STD]}


def default_palette(num_classes: int) -> list[list[int]]:
    """num_classes distinct, saturated [r, g, b] colours (0..255); class 0 is black (often 'unlabeled')."""
    colours = [[0, 0, 0]]
    golden = 0.618033988749895  # hue steps by the golden ratio stay apart for any count
    for i in range(1, num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * golden) % 1.0, 0.75 if i % 2 else 1.0, 1.0 if i % 3 else 0.8)
        colours.append([round(r * 255), round(g * 255), round(b * 255)])
    return colours[:num_classes]


@dataclass
class CheckpointMeta:
    """Everything a checkpoint says about its model besides the weights.

    config: the network; class_names: one per class id; palette: one [r, g, b] (0..255) per class;
    scaling: raw thermal/depth -> [0, 1] (its ``modality`` is "thermal" or "depth"); normalization:
    {"mean": [3], "std": [3]} for 0..1 inputs, both modalities; input_size: (H, W) the network runs at,
    or None for each image's own size; extra: free plain data (training run, metrics, ...).
    """

    config: SigmaConfig
    class_names: list[str]
    palette: list[list[int]]
    scaling: ModalityScaling
    normalization: dict[str, list[float]] = field(default_factory=default_normalization)
    input_size: Optional[tuple[int, int]] = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None

    @property
    def modality(self) -> str:
        return self.scaling.modality

    @property
    def num_classes(self) -> int:
        return self.config.num_classes


def save_checkpoint(
    path: PathLike,
    model: nn.Module,
    cfg: Optional[SigmaConfig] = None,
    class_names: Optional[Sequence[str]] = None,
    modality: str = "thermal",
    palette: Optional[Sequence[Sequence[int]]] = None,
    normalization: Optional[Mapping[str, Sequence[float]]] = None,
    extra: Optional[Mapping[str, Any]] = None,
    scaling: Optional[ModalityScaling] = None,
    input_size: Optional[Sequence[int]] = None,
    half: bool = False,
) -> Path:
    """Write our self-describing checkpoint atomically (temporary file, then os.replace). Returns the path.

    cfg: defaults to model.config. class_names: default "class_0" ... palette: default default_palette().
    scaling: defaults to ModalityScaling(modality); its modality must equal ``modality``.
    normalization: {"mean": [3], "std": [3]}, default ImageNet. input_size: (H, W) or None (native size).
    extra: plain data only (str, numbers, bool, None, lists, dicts), so the file loads with weights_only.
    half: store floating-point weights as float16 (half the size; load_checkpoint returns float32).
    """
    cfg = cfg if cfg is not None else getattr(model, "config", None)
    if not isinstance(cfg, SigmaConfig):
        raise ValueError("save_checkpoint needs the model's SigmaConfig (cfg=...)")
    k = cfg.num_classes
    class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
    palette = [list(map(int, c)) for c in palette] if palette is not None else default_palette(k)
    scaling = scaling if scaling is not None else ModalityScaling(modality=modality)
    normalization = {key: [float(v) for v in vals] for key, vals in (normalization or default_normalization()).items()}
    meta = CheckpointMeta(cfg, class_names, palette, scaling, normalization,
                          tuple(int(v) for v in input_size) if input_size is not None else None, dict(extra or {}))
    _validate_meta(meta, modality, source=str(path))
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu")
        state[key] = value.half() if half and value.is_floating_point() else value.clone()
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "state_dict": state,
        "class_names": meta.class_names,
        "palette": meta.palette,
        "scaling": scaling.to_dict(),
        "normalization": meta.normalization,
        "input_size": list(meta.input_size) if meta.input_size is not None else None,
        "extra": meta.extra,
    }
    return atomic_torch_save(payload, path)


def read_meta(obj: Mapping[str, Any], source: str = "<checkpoint>") -> CheckpointMeta:
    """CheckpointMeta from a loaded checkpoint object of our format."""
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise NotOurCheckpointError(
            f"{source} is not a sigma_core checkpoint (no format={FORMAT!r}); for published Sigma or VMamba "
            "weights build the model with build_sigma and use load_weights, then save_checkpoint"
        )
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{source} has checkpoint format {obj['format_version']}, newer than this sigma_core "
                              f"reads ({FORMAT_VERSION}); update sigma_core")
    try:
        cfg = SigmaConfig.from_dict(obj["config"])
        scaling = ModalityScaling.from_dict(obj["scaling"])
        size = obj.get("input_size")
        meta = CheckpointMeta(
            config=cfg,
            class_names=list(obj["class_names"]),
            palette=[list(c) for c in obj["palette"]],
            scaling=scaling,
            normalization=dict(obj.get("normalization") or default_normalization()),
            input_size=tuple(size) if size is not None else None,
            extra=dict(obj.get("extra") or {}),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid sigma_core checkpoint metadata: {err}") from err
    _validate_meta(meta, scaling.modality, source)
    return meta


def load_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu",
                    scan_backend: Optional[str] = None) -> tuple[nn.Module, CheckpointMeta]:
    """Our checkpoint -> (model in eval mode, float32, on ``device``; its CheckpointMeta).

    scan_backend: overrides the config's selective-scan backend (e.g. "cpu", "triton").
    """
    from .models.sigma import build_sigma

    obj = read_checkpoint(path)
    meta = read_meta(obj, str(path))
    if scan_backend is not None:
        meta.config = SigmaConfig.from_dict({**meta.config.to_dict(), "scan_backend": scan_backend})
    model = build_sigma(meta.config)
    load_weights(model, obj, strict=True)
    return model.to(device).eval(), meta


def _validate_meta(meta: CheckpointMeta, modality: str, source: str) -> None:
    k = meta.config.num_classes
    if len(meta.class_names) != k:
        raise CheckpointError(f"{source}: {len(meta.class_names)} class names for a model with {k} classes")
    if len(meta.palette) != k or any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in meta.palette):
        raise CheckpointError(f"{source}: palette must be {k} [r, g, b] colours with values 0..255")
    if meta.scaling.modality != modality:
        raise CheckpointError(f"{source}: modality {modality!r} but scaling is for {meta.scaling.modality!r}")
    norm = meta.normalization
    if set(norm) != {"mean", "std"} or len(norm["mean"]) != 3 or len(norm["std"]) != 3 or min(norm["std"]) <= 0:
        raise CheckpointError(f"{source}: normalization must be {{'mean': [3 floats], 'std': [3 floats > 0]}}, "
                              f"got {norm}")
    if meta.input_size is not None and (len(meta.input_size) != 2 or min(meta.input_size) < 4):
        raise CheckpointError(f"{source}: input_size must be (H, W) with both >= 4, or None; got {meta.input_size}")
    _check_plain(meta.extra, f"{source}: extra")


def _check_plain(value: Any, where: str) -> None:
    """Only plain data survives torch.load(weights_only=True); refuse the rest when saving."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: dict keys must be str, got {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"{where}: {type(value).__name__} is not plain data (str, number, bool, None, list, dict)")
