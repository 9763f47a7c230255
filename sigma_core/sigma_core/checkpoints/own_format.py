"""Our self-describing checkpoint: weights plus config, classes, palette, scaling, normalisation, input size."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..config import SigmaConfig
from ..data.modality import ModalityScaling
from ..data.normalize import IMAGENET_MEAN, IMAGENET_STD
from ..files import atomic_torch_save
from ..model_io import check_description
from .errors import CheckpointError, NotOurCheckpointError, PathLike
from .limits import DEFAULT_MAX_PARAMETERS, check_config_size
from .reading import read_checkpoint

FORMAT = "sigma_core.checkpoint"
FORMAT_VERSION = 1


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
    notes / warnings: what load_model inferred (a published file's architecture, its dataset) / ignored
    (a dataset given for our own checkpoint), for the tools to print or log; published: the metadata
    came from a dataset, not from the file. None of these three is saved.
    """

    config: SigmaConfig
    class_names: list[str]
    palette: list[list[int]]
    scaling: ModalityScaling
    normalization: dict[str, list[float]] = field(default_factory=default_normalization)
    input_size: Optional[tuple[int, int]] = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: Optional[str] = None
    notes: list[str] = field(default_factory=list)  # what load_model inferred (not saved)
    warnings: list[str] = field(default_factory=list)  # what load_model ignored (not saved)
    published: bool = False  # built by load_model from a published file and a dataset (not saved)

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
            f"{source} is not a sigma_core checkpoint (no format={FORMAT!r}); a published Sigma checkpoint loads "
            "with load_model(path, dataset=...) or converts with sigma-import; for VMamba weights build the model "
            "with build_sigma and use load_weights"
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
                    scan_backend: Optional[str] = None,
                    max_parameters: int = DEFAULT_MAX_PARAMETERS) -> tuple[nn.Module, CheckpointMeta]:
    """Our checkpoint -> (model in eval mode, float32, on ``device``; its CheckpointMeta).

    scan_backend: overrides the config's selective-scan backend (e.g. "cpu", "triton").
    max_parameters: a file whose archive, tensors or recorded config imply a larger network is refused
    (CheckpointError naming the implied size) before the network is built.
    """
    obj = read_checkpoint(path, max_parameters)
    return _build_and_load(obj, read_meta(obj, str(path)), scan_backend, device, max_parameters)


def _build_and_load(obj: Mapping[str, Any], meta: CheckpointMeta, scan_backend: Optional[str],
                    device: Union[str, torch.device],
                    max_parameters: int = DEFAULT_MAX_PARAMETERS) -> tuple[nn.Module, CheckpointMeta]:
    from ..models.sigma import build_sigma
    from .weights import load_weights  # weights reads FORMAT from here: imported when used

    if scan_backend is not None:
        meta.config = SigmaConfig.from_dict({**meta.config.to_dict(), "scan_backend": scan_backend})
    check_config_size(meta.config, meta.source or "<checkpoint>", max_parameters)  # before building it
    model = build_sigma(meta.config)
    load_weights(model, obj, strict=True, source=meta.source, max_parameters=max_parameters)
    return model.to(device).eval(), meta


def _validate_meta(meta: CheckpointMeta, modality: str, source: str) -> None:
    try:  # the rules every model file (sigma-export's ONNX files too) follows
        check_description(meta.config.num_classes, meta.class_names, meta.palette, meta.normalization,
                          meta.input_size, source)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if meta.scaling.modality != modality:
        raise CheckpointError(f"{source}: modality {modality!r} but scaling is for {meta.scaling.modality!r}")
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
