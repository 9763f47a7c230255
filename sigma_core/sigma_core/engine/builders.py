"""What the ``data`` and ``model`` config sections build: datasets, what a checkpoint records of them, the network.

Shared by training, evaluation and the demo-model script, so that none of them imports another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import Subset

from ..config import SigmaConfig


@dataclass(frozen=True)
class DatasetInfo:
    """What a checkpoint records about the data: class names, palette, modality scaling."""

    class_names: tuple[str, ...]
    palette: list[list[int]]
    scaling: Any  # sigma_core.data.modality.ModalityScaling


def base_dataset(ds):
    """The RGBXDataset behind ``ds`` (itself, or the dataset of a Subset)."""
    return ds.dataset if isinstance(ds, Subset) else ds


def training_crop(data: Any, image_size: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """The (H, W) training crop: ``data.crop_size`` clipped to the dataset's recorded image size.

    A crop larger than the images only pads them (the published 480x640 crop on 120x160 frames trains on
    94 % padding at 16 times the memory), so each side is at most the recorded image side.
    """
    if data.crop_size is None:
        return None
    crop = (int(data.crop_size[0]), int(data.crop_size[1]))
    if image_size is None:
        return crop
    return (min(crop[0], int(image_size[0])), min(crop[1], int(image_size[1])))


def make_dataset(data: Any, split: str, train: bool, seed: int = 0):
    """An RGBXDataset for the ``data`` config section: training augmentations when ``train``.

    Raises ValueError when data.root is unset or the dataset names no classes; FileNotFoundError
    when the folder or the split list is missing (from RGBXDataset).
    """
    from ..data.dataset import RGBXDataset
    from ..data.transforms import TrainAugmentation

    if not data.root:
        raise ValueError("data.root is not set: give the dataset folder, e.g. data.root=datasets/MFNet")
    dataset = RGBXDataset(data.root, split=split, preset=data.preset, seed=seed)
    if dataset.spec.classes is None:
        raise ValueError(f"{data.root}: the dataset names no classes; add 'classes: [...]' to its dataset.yaml")
    if train:
        dataset.transform = TrainAugmentation(crop_size=training_crop(data, dataset.spec.image_size),
                                              scales=tuple(data.scales), flip=data.flip)
    return dataset


def dataset_info(ds) -> DatasetInfo:
    """DatasetInfo of an RGBXDataset (or a Subset of one)."""
    from ..checkpoints import default_palette

    spec = base_dataset(ds).spec
    palette = [list(c) for c in spec.palette] if spec.palette is not None else default_palette(len(spec.classes))
    return DatasetInfo(tuple(spec.classes), palette, spec.scaling)


def evaluation_dataset(cfg: Any, split: Optional[str] = None):
    """The ``split`` (default data.val_split) without augmentations, limited to eval.limit samples.

    Raises ValueError when the split holds no images: metrics of nothing are not 0 but undefined.
    """
    split = split or cfg.data.val_split
    dataset = make_dataset(cfg.data, split, train=False)
    if len(dataset) == 0:
        raise ValueError(f"{cfg.data.root}: split {split!r} holds no images, so there is nothing to evaluate on; "
                         "give a split with images (data.val_split=..., --split) or re-extract with --test-fraction")
    if cfg.eval.limit is not None:
        dataset = Subset(dataset, range(min(cfg.eval.limit, len(dataset))))
    return dataset


def model_config(cfg: Any, num_classes: int) -> SigmaConfig:
    """The SigmaConfig of the ``model`` section with the dataset's class count (validated by SigmaConfig)."""
    m = cfg.model
    kwargs: dict[str, Any] = {"variant": m.variant, "num_classes": num_classes, "scan_backend": m.scan_backend}
    for name in ("depths", "dims", "decoder_depths", "drop_path_rate"):
        value = getattr(m, name)
        if value is not None:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return SigmaConfig(**kwargs)


def build_model(cfg: Any, num_classes: int) -> torch.nn.Module:
    """A freshly initialised Sigma for the ``model`` section."""
    from ..models.sigma import build_sigma

    return build_sigma(model_config(cfg, num_classes))


def initialise_from(model: torch.nn.Module, path: str) -> Any:
    """Load a VMamba ImageNet or Sigma checkpoint; a class head of another size keeps its initialisation."""
    from ..checkpoints import load_weights

    return load_weights(model, path, allow_new_classes=True)
