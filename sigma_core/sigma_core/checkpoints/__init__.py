"""Weights in and out: published Sigma checkpoints, VMamba ImageNet checkpoints, and our own checkpoints.

- :func:`load_model` is the one loader of every tool that runs a model (Segmenter, node,
  sigma-evaluate, sigma-import, replay evaluation, demo): our checkpoint as it is, or a
  published Sigma checkpoint whose architecture is inferred from its keys and shapes
  (:func:`infer_sigma_config`) and whose classes, palette, modality scaling and input size
  come from a dataset (:func:`resolve_dataset`: a preset, a dataset.yaml or a class list).
- :func:`load_weights` puts any of the three into a built model and reports what it did;
  a file holding another variant than the model is refused, naming the variant it holds.
- :func:`save_checkpoint` / :func:`load_checkpoint` write and read our self-describing
  checkpoint: weights plus the config, class names, palette, modality and its scaling,
  input normalisation and input size, so a file alone is enough to run a model.

Every file is read with ``torch.load(weights_only=True)``: a downloaded checkpoint can
never run code. Our checkpoints therefore hold only tensors and plain data. A file whose
zip archive fails its CRC-32 check, or whose weights hold NaN/inf, is refused.

The package, one module per job:
- :mod:`.reading`: reading a file (absent, empty, LFS pointer, not a checkpoint, holding code);
- :mod:`.limits`: size and archive checks made before anything is read or built;
- :mod:`.weights`: :func:`load_weights` into a built model, shared by the three kinds below;
- :mod:`.published`: published Sigma files plus a dataset, and :func:`load_model` for any file;
- :mod:`.architecture`: the Sigma architecture a state dict's keys and shapes hold;
- :mod:`.vmamba`: VMamba ImageNet weights (old names, the encoder size they hold);
- :mod:`.own_format`: our self-describing checkpoint.
"""
from .architecture import describe_config, infer_sigma_config
from .errors import CheckpointError, DatasetNeededError, LfsPointerError, NotOurCheckpointError, PathLike
from .limits import (
    DEFAULT_MAX_PARAMETERS,
    PICKLE_MAGIC,
    ZIP_MAGIC,
    check_archive,
    check_config_size,
    check_state_size,
)
from .own_format import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointMeta,
    default_normalization,
    default_palette,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from .published import DatasetLike, dataset_choices, load_model, meta_from_dataset, resolve_dataset
from .reading import LFS_MAGIC, read_checkpoint
from .vmamba import ENCODER_PREFIX
from .weights import LoadReport, check_finite, load_weights, state_dict_of

__all__ = [
    "CheckpointError", "CheckpointMeta", "DEFAULT_MAX_PARAMETERS", "check_config_size", "check_state_size",
    "DatasetLike", "DatasetNeededError", "ENCODER_PREFIX", "FORMAT",
    "FORMAT_VERSION", "LFS_MAGIC", "LfsPointerError", "LoadReport", "NotOurCheckpointError", "PICKLE_MAGIC",
    "PathLike", "ZIP_MAGIC", "check_archive", "check_finite", "dataset_choices", "default_normalization",
    "default_palette", "describe_config", "infer_sigma_config", "load_checkpoint", "load_model", "load_weights",
    "meta_from_dataset", "read_checkpoint", "read_meta", "resolve_dataset", "save_checkpoint", "state_dict_of",
]
