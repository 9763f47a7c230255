"""A published Sigma checkpoint plus the dataset it was trained on, and load_model, which takes any checkpoint."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..config import SigmaConfig
from ..data.labels import check_class_names
from ..data.modality import ModalityScaling
from ..yaml_loading import load_yaml
from .architecture import describe_config, infer_sigma_config
from .errors import CheckpointError, DatasetNeededError, PathLike
from .limits import DEFAULT_MAX_PARAMETERS, check_state_size
from .own_format import FORMAT, CheckpointMeta, _build_and_load, _validate_meta, default_palette, read_meta
from .reading import read_checkpoint
from .weights import load_weights, state_dict_of

DatasetLike = Union[str, os.PathLike, "DatasetSpec"]  # noqa: F821 - sigma_core.data.dataset.DatasetSpec


def dataset_choices() -> str:
    """The dataset presets and file kinds ``dataset`` accepts, for messages."""
    from ..data.dataset import PRESETS

    return f"a preset ({', '.join(PRESETS)}), a dataset.yaml (or its folder) or a class-list file (one name a line)"


def resolve_dataset(dataset: DatasetLike) -> Any:
    """A dataset as users name it -> its sigma_core.data.dataset.DatasetSpec.

    dataset: a preset name as users spell it ("mfnet", "PST900", "nyudv2", "NYU-Depth-v2", "sunrgbd"), a
        dataset.yaml (as written by sigma-extract / sigma-synth) or the folder holding one, a class-list
        file (a .txt with one class name per line, blank lines and # comments skipped, or a YAML list:
        thermal modality, 8-bit full-range scaling, default palette), or a DatasetSpec (returned as is).
    Raises CheckpointError when it is none of these or names no classes.
    """
    from ..data.dataset import DATASET_YAML, PRESETS, DatasetSpec, preset_key
    from ..files import read_yaml_mapping

    # As typed in a launch file or YAML: " mfnet", "NYU Depth V2" name the presets too.
    named = preset_key(dataset.strip().replace(" ", "")) if isinstance(dataset, str) else None
    if isinstance(dataset, DatasetSpec):
        spec = dataset
    elif named in PRESETS:
        spec = PRESETS[named]
    else:
        path = Path(dataset)
        if path.is_dir():
            path = path / DATASET_YAML
        if not path.is_file():
            raise CheckpointError(f"dataset {str(dataset)!r} is neither a known preset nor an existing file; "
                                  f"give {dataset_choices()}")
        import yaml

        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                loaded = load_yaml(path.read_text())
                spec = (DatasetSpec.from_dict(read_yaml_mapping(path), source=str(path)) if isinstance(loaded, dict)
                        else _class_list_spec(path, loaded))
            else:
                lines = [line.strip() for line in path.read_text().splitlines()]
                spec = _class_list_spec(path, [line for line in lines if line and not line.startswith("#")])
        except yaml.YAMLError as err:  # not a ValueError: named here, or it ends as a parser traceback
            raise CheckpointError(f"dataset file {path} is not valid YAML; fix it where the parser stopped: "
                                  f"{' '.join(str(err).split())}") from None
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
            raise CheckpointError(f"dataset file {path} cannot be read: {err}") from err
    if not spec.classes:
        raise CheckpointError(f"dataset {spec.name!r} names no classes; add `classes:` to its dataset.yaml")
    return spec


def _class_list_spec(path: Path, names: Any) -> Any:
    from ..data.dataset import DatasetSpec

    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise ValueError("a class list is one class name per line (or a YAML list of names)")
    check_class_names(names, str(path))
    return DatasetSpec(name=path.stem, classes=tuple(str(n) for n in names))


def meta_from_dataset(cfg: SigmaConfig, dataset: DatasetLike, source: str) -> CheckpointMeta:
    """CheckpointMeta of a published checkpoint from what a dataset says (classes, palette, scaling, size).

    Raises CheckpointError when the class counts of the file (cfg) and the dataset differ, naming both.
    """
    spec = resolve_dataset(dataset)
    classes = list(spec.classes)
    if len(classes) != cfg.num_classes:
        raise CheckpointError(
            f"{source} predicts {cfg.num_classes} classes but dataset {spec.name!r} has {len(classes)}: "
            "give the dataset the checkpoint was trained on")
    palette = [list(c) for c in spec.palette] if spec.palette is not None else default_palette(len(classes))
    scaling, notes = spec.scaling, []
    if scaling.modality != spec.modality:
        # The NYU Depth V2 / SUN RGB-D presets read the benchmarks' 8-bit depth images over 0..255; a robot's
        # depth topic is metres (32FC1) or millimetres (16UC1), so the model gets depth scaling, default range.
        scaling = ModalityScaling(modality=spec.modality)
        notes.append(f"dataset {spec.name!r} stores {spec.modality} as 8-bit images; robot {spec.modality} is mapped "
                     f"to 0..1 over 0..{scaling.max_range:g} m (node parameter depth.max_range): check that this "
                     "matches how the training data was encoded")
    meta = CheckpointMeta(config=cfg, class_names=classes, palette=palette, scaling=scaling,
                          input_size=tuple(spec.image_size) if spec.image_size is not None else None,
                          extra={"imported_from": source, "dataset": spec.name}, source=source, notes=notes,
                          published=True)
    _validate_meta(meta, scaling.modality, source)
    return meta


def load_model(path: PathLike, dataset: Optional[DatasetLike] = None, device: Union[str, torch.device] = "cpu",
               scan_backend: Optional[str] = None,
               max_parameters: int = DEFAULT_MAX_PARAMETERS) -> tuple[nn.Module, CheckpointMeta]:
    """Any Sigma checkpoint -> (model in eval mode, float32, on ``device``; its CheckpointMeta).

    The one loader behind Segmenter, the node, sigma-evaluate, sigma-import and the replay tools.
    - Our checkpoint: loaded as load_checkpoint does; ``dataset`` is ignored (the file names its own
      classes), which meta.warnings says.
    - A published Sigma checkpoint (state dict bare or under "model", "module." prefixes stripped,
      other entries such as optimizer/epoch ignored): the architecture is inferred from its keys and
      shapes (infer_sigma_config); classes, palette, modality scaling and input size come from
      ``dataset`` (see resolve_dataset), ImageNet normalisation as published. meta.notes says what was
      inferred.
    scan_backend: overrides the config's selective-scan backend.
    max_parameters: a file whose archive members, tensor shapes or recorded config imply a larger
    network is refused, naming the implied size, before anything that large is read or built.
    Raises DatasetNeededError for a published file without ``dataset`` (naming the presets),
    CheckpointError for a class-count mismatch (both numbers), a VMamba ImageNet backbone (no
    segmentation head), damaged files and NaN/inf weights (see read_checkpoint, load_weights).
    """
    from ..models.sigma import build_sigma

    source = str(path)
    obj = read_checkpoint(path, max_parameters)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        model, meta = _build_and_load(obj, read_meta(obj, source), scan_backend, device, max_parameters)
        if dataset is not None:
            meta.warnings.append(f"dataset {str(getattr(dataset, 'name', dataset))!r} ignored: {source} is a "
                                 "sigma_core checkpoint and names its own classes, palette and scaling")
        return model, meta
    state, kind = state_dict_of(obj, source)
    check_state_size(state, source, max_parameters)
    if kind == "vmamba_imagenet":
        raise CheckpointError(
            f"{source} is a VMamba ImageNet backbone (encoder only, no segmentation head), so it cannot segment; "
            "start a training run from it (sigma-train ... model.init=FILE)")
    cfg = infer_sigma_config(state, source)
    if dataset is None:
        raise DatasetNeededError(
            f"{source} is a published Sigma checkpoint ({describe_config(cfg)}); it holds no class names, palette "
            f"or input handling, so name the dataset it was trained on: {dataset_choices()} "
            "(node: -p dataset:=mfnet; tools: --dataset mfnet)")
    if scan_backend is not None:
        cfg = SigmaConfig.from_dict({**cfg.to_dict(), "scan_backend": scan_backend})
    meta = meta_from_dataset(cfg, dataset, source)
    meta.notes.insert(0, f"{source}: published Sigma checkpoint, architecture inferred from its keys: "
                      f"{describe_config(cfg)}; classes, palette, scaling and input size from dataset "
                      f"{meta.extra['dataset']!r}")
    model = build_sigma(cfg)  # its size is the state's, checked above: infer_sigma_config checked every shape
    load_weights(model, state, strict=True, source=source, max_parameters=max_parameters)
    return model.to(device).eval(), meta
