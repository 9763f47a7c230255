"""Training/evaluation configuration: YAML files, named presets and `key=value` overrides.

A config is a nested mapping with the sections below; every key has a default
(the published Sigma recipe), a YAML file or preset overrides some of them, and
command-line ``section.key=value`` overrides come last. Unknown keys are an
error that names the key and lists the known ones, so a typo never trains with
a silently ignored setting.

Presets are YAML files in ``sigma_core/configs/`` (``mfnet``, ``pst900``,
``nyudv2``, ``sunrgbd``, ``custom``, ``synthetic_demo``); ``--config`` takes
a preset name or a path.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from ..files import read_yaml_mapping
from ..yaml_loading import load_yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelSection:
    """The network: any SigmaConfig field but num_classes (that comes from the dataset).

    init: a VMamba ImageNet checkpoint (encoder only) or a Sigma checkpoint (published or
        ours) to start from; a classifier head with another class count is dropped.
    """

    variant: Optional[str] = "tiny"
    depths: Optional[list[int]] = None
    dims: Optional[int] = None
    decoder_depths: Optional[list[int]] = None
    drop_path_rate: Optional[float] = None
    scan_backend: str = "auto"
    init: Optional[str] = None


@dataclass
class DataSection:
    """The dataset (see sigma_core.data): a preset over the published layout, or "custom" (a dataset.yaml).

    crop_size: (H, W) random crop in training; None trains on whole images (they must share a size).
    scales: random rescale factors drawn per training sample (published {0.5 ... 1.75}).
    modality_dropout: blank the second modality of this share of training samples (not in the
        published recipe), so the model also copes with a dead thermal/depth camera.
    """

    preset: str = "custom"
    root: Optional[str] = None
    train_split: str = "train"
    val_split: Optional[str] = "test"  # null: train without validation; best.pt is then the last epoch
    crop_size: Optional[list[int]] = field(default_factory=lambda: [480, 640])
    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    flip: bool = True
    batch_size: int = 8  # per process; the published recipe is 8 in total on its GPUs
    num_workers: int = 4
    limit: Optional[int] = None  # use only the first N training samples (quick experiments)
    modality_dropout: float = 0.0  # probability that a training sample's thermal/depth input is blanked (zeros)


@dataclass
class OptimSection:
    """AdamW, as published."""

    lr: float = 6e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: Optional[float] = None  # max gradient norm; None = no clipping (published)


@dataclass
class ScheduleSection:
    """Linear warm-up from ``warmup_start`` * lr, then poly decay (1 - t)^power to 0, per iteration."""

    epochs: int = 500
    warmup_epochs: int = 10
    warmup_start: float = 1e-6
    power: float = 0.9


@dataclass
class EvalSection:
    """How the model is evaluated (during training and by sigma-evaluate).

    mode: "whole" (one pass per image) or "sliding" (windows of crop_size with stride
        stride_ratio * crop, averaged; only where the image is larger than the crop).
    scales, flip: multi-scale / horizontal-flip test-time augmentation (softmax averaged).
    """

    mode: str = "whole"
    crop_size: Optional[list[int]] = None
    stride_ratio: float = 2.0 / 3.0
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    batch_size: int = 1
    limit: Optional[int] = None  # evaluate only the first N samples


@dataclass
class TrainSection:
    """Run control. ``resume``: a checkpoint path, or "auto" (the newest in out_dir, if any)."""

    out_dir: str = "runs/sigma"
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N (under torchrun: the local rank's GPU)
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: str = "float16"  # float16 (with a grad scaler) or bfloat16
    deterministic: bool = False  # deterministic algorithms (slower; exact reruns on CPU)
    resume: Optional[str] = None
    eval_every: int = 10  # epochs; 0 = only after the last epoch
    save_every: int = 1  # epochs between resumable checkpoints
    keep_last: int = 3  # resumable checkpoints kept (plus best.pt)
    log_every: int = 10  # iterations between TensorBoard/CSV scalars
    tensorboard: bool = True
    progress: bool = True  # tqdm bar (rank 0)
    threads: Optional[int] = None  # torch CPU threads; None = torch's default


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "schedule": ScheduleSection,
    "eval": EvalSection,
    "train": TrainSection,
}


@dataclass
class TrainConfig:
    """The whole configuration; ``TrainConfig.load(...)`` builds one from YAML, presets and overrides."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Nested dict -> TrainConfig; unknown sections/keys and wrong types raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of sections {sorted(SECTIONS)}, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ValueError(f"{source}: unknown section(s) {unknown}; known sections are {sorted(SECTIONS)}")
        sections = {}
        for name, section_cls in SECTIONS.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise ValueError(f"{source}: section {name!r} must be a mapping, got {values!r}")
            known = {f.name: f for f in dataclasses.fields(section_cls)}
            bad = sorted(set(values) - set(known))
            if bad:
                raise ValueError(f"{source}: unknown key(s) {[f'{name}.{b}' for b in bad]}; "
                                 f"known keys in {name!r}: {sorted(known)}")
            sections[name] = section_cls(**{k: _coerce(f"{name}.{k}", known[k], v, source) for k, v in values.items()})
        cfg = cls(**sections)
        sched = cfg.schedule
        if sched.epochs >= 1 and sched.warmup_epochs > sched.epochs:  # a short run of a preset (warm-up 5-10)
            print(f"note: schedule.warmup_epochs {sched.warmup_epochs} is more than schedule.epochs {sched.epochs}: "
                  f"warming up over all {sched.epochs} epoch(s) instead", file=sys.stderr)
            sched.warmup_epochs = sched.epochs
        cfg.validate(source)
        return cfg

    @classmethod
    def load(cls, config: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> TrainConfig:
        """Defaults <- preset name or YAML path (optional) <- ``section.key=value`` overrides."""
        data: dict[str, Any] = {}
        source = "defaults"
        if config is not None:
            path = resolve_config_path(config)
            data = read_yaml_mapping(path)
            source = str(path)
        data = apply_overrides(data, overrides)
        return cls.from_dict(data, source if not overrides else f"{source} with overrides")

    def validate(self, source: str = "config") -> None:
        def bad(key: str, msg: str) -> ValueError:
            return ValueError(f"{source}: {key} {msg}")

        if self.data.batch_size < 1:
            raise bad("data.batch_size", f"must be >= 1, got {self.data.batch_size}")
        if self.data.crop_size is not None and (len(self.data.crop_size) != 2 or min(self.data.crop_size) < 1):
            raise bad("data.crop_size", f"must be [H, W] or null, got {self.data.crop_size}")
        if not 0.0 <= self.data.modality_dropout <= 1.0:
            raise bad("data.modality_dropout", f"must be a probability in [0, 1], got {self.data.modality_dropout}")
        if not self.data.scales or min(self.data.scales) <= 0:
            raise bad("data.scales", f"must be a non-empty list of positive factors, got {self.data.scales}")
        if self.optim.lr <= 0 or self.optim.weight_decay < 0:
            raise bad("optim", f"needs lr > 0 and weight_decay >= 0, got lr={self.optim.lr} "
                               f"weight_decay={self.optim.weight_decay}")
        if self.schedule.epochs < 1 or not 0 <= self.schedule.warmup_epochs <= self.schedule.epochs:
            raise bad("schedule", f"needs epochs >= 1 and 0 <= warmup_epochs <= epochs, got epochs="
                                  f"{self.schedule.epochs} warmup_epochs={self.schedule.warmup_epochs}")
        if self.eval.mode not in ("whole", "sliding"):
            raise bad("eval.mode", f"must be 'whole' or 'sliding', got {self.eval.mode!r}")
        if self.eval.mode == "sliding" and not self.eval.crop_size and not self.data.crop_size:
            raise bad("eval.crop_size", "is needed for sliding-window evaluation (or set data.crop_size)")
        if not 0 < self.eval.stride_ratio <= 1:
            raise bad("eval.stride_ratio", f"must be in (0, 1], got {self.eval.stride_ratio}")
        if not self.eval.scales or min(self.eval.scales) <= 0:
            raise bad("eval.scales", f"must be a non-empty list of positive factors, got {self.eval.scales}")
        if self.train.amp_dtype not in ("float16", "bfloat16"):
            raise bad("train.amp_dtype", f"must be 'float16' or 'bfloat16', got {self.train.amp_dtype!r}")
        if self.train.keep_last < 1 or self.train.save_every < 1 or self.train.eval_every < 0:
            raise bad("train", "needs keep_last >= 1, save_every >= 1 and eval_every >= 0")


CONFIG_OF_DATASET = {"nyudepthv2": "nyudv2"}  # dataset preset key -> its training preset file, where they differ


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config_path(config: Union[str, Path]) -> Path:
    """A preset name (e.g. "mfnet") or a YAML file path -> existing path; else ValueError listing presets."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        return path
    preset = PRESET_DIR / f"{config}.yaml"
    if not preset.is_file():  # the dataset names and aliases every tool takes (nyudepthv2, NYU, sun, PST, ...)
        from ..data.dataset import preset_key

        key = preset_key(str(config))
        preset = PRESET_DIR / f"{CONFIG_OF_DATASET.get(key, key)}.yaml"
    if not preset.is_file():
        raise ValueError(f"unknown config {str(config)!r}: not a file and not a preset; presets: {list_presets()} "
                         "(dataset names such as nyudepthv2 or sun work too)")
    return preset


def parse_value(text: str) -> Any:
    """A command-line value as YAML (numbers, booleans, null, [lists]); "6e-5" is a float, not a string."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 6e-5 (no dot) as a string
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``section.key=value`` set (dotted keys, values parsed as YAML)."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-4)")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = parse_value(text)
    return out


def _as_list_example(value: Any, f: dataclasses.Field) -> str:
    """``value`` ("120,160", "120 160", "120x160", 120) as the bracketed list it was probably meant to be."""
    parts = [p for p in re.split(r"[\s,x;:]+", str(value).strip("()[]{} ")) if p]
    if parts and all(re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", p, re.I) for p in parts):
        if len(parts) == 1 and f.name.endswith("_size"):  # sizes are [H, W]: one number means a square
            parts = parts * 2
        return f"[{','.join(parts)}]"
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return f"[{','.join(str(v) for v in default)}]" if isinstance(default, list) else "[1,2]"


def _coerce(key: str, f: dataclasses.Field, value: Any, source: str) -> Any:
    """Check a YAML value against the field's annotated type (ints accepted for floats)."""
    annotation = str(f.type)
    if value is None:
        if "Optional" not in annotation:
            raise ValueError(f"{source}: {key} must not be null")
        return None
    if "list" in annotation:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: {key} must be a list, got {value!r}; write it in brackets, e.g. "
                             f"{key}={_as_list_example(value, f)}")
        inner_float = "float" in annotation
        try:
            return [float(v) if inner_float else int(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {key} must be a list of numbers, got {value!r}") from None
    base = annotation.replace("Optional[", "").rstrip("]")
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{source}: {key} must be a string, got {value!r}")
        return str(value)
    return value


# What an override may change when a run is resumed: how long it runs, how often it validates, saves and logs,
# where its data now lives, and how it is shown. Anything else (model, data, optimiser, schedule shape) would make
# the resumed run another experiment than the one its checkpoints and logs record.
SAFE_ON_RESUME = frozenset({
    "schedule.epochs", "data.root", "data.num_workers", "eval.limit", "eval.batch_size",
    "train.resume", "train.out_dir", "train.device", "train.eval_every", "train.save_every", "train.keep_last",
    "train.log_every", "train.tensorboard", "train.progress", "train.threads",
})
RUN_CONFIG = "config.yaml"


def usable_workers(requested: int) -> int:
    """DataLoader worker processes for ``requested``: at most the CPUs this process may use (more only compete
    with the training process, and PyTorch warns about them at every loader start)."""
    from ..model_io import usable_cpus  # here: model_io imports OpenCV, which a configuration does not need

    return max(0, min(int(requested), usable_cpus()))


def _flat(data: dict[str, Any]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in data.items() for key, value in values.items()}


def run_folder_of(resume: str, out_dir: Optional[str]) -> Optional[Path]:
    """The run folder a ``--resume`` value points at: the folder itself, a checkpoint's folder, or with "auto"
    ``out_dir`` (None: "auto" without an out_dir, or a folder without config.yaml)."""
    if resume == "auto":
        folder = Path(out_dir) if out_dir else None
    else:
        path = Path(resume)
        folder = path if path.is_dir() else path.parent
    return folder if folder is not None and (folder / RUN_CONFIG).is_file() else None


def resume_config(run_dir: Path, resume: str, overrides: Sequence[str]) -> TrainConfig:
    """The configuration that continues the run in ``run_dir``: its own config.yaml, with ``overrides`` applied
    where they are safe (SAFE_ON_RESUME: more epochs, a moved dataset, logging); ``train.out_dir`` is
    ``run_dir`` and ``train.resume`` is ``resume`` ("auto" for a folder: its newest complete checkpoint).

    Raises ValueError naming every override that would change the experiment (its saved and given values).
    """
    saved_path = run_dir / RUN_CONFIG
    try:
        content = load_yaml(saved_path.read_text())
    except yaml.YAMLError:
        content = TrainConfig.load(saved_path)  # raises the loader's message, naming where the parser stopped
    if not isinstance(content, dict) or not {"model", "data", "schedule"} <= set(content):
        # an empty or foreign file would resume with the built-in defaults: not this run's configuration
        raise ValueError(f"{saved_path} holds no sigma-train configuration (empty, or not the file sigma-train "
                         "wrote): restore it from the run, or start a new run in another train.out_dir")
    moved = [o.split("=", 1)[1] for o in overrides if o.startswith("train.out_dir=")]
    if moved and Path(moved[-1]).resolve() != run_dir.resolve():
        raise ValueError(f"train.out_dir={moved[-1]}: a resumed run writes to its own folder {run_dir}; to branch "
                         f"it, copy {run_dir} to {moved[-1]} and resume that copy")
    saved = TrainConfig.load(saved_path)
    wanted = TrainConfig.load(saved_path, overrides)
    if wanted.schedule.epochs < saved.schedule.epochs:  # before the warm-up it clamps is named as the change
        raise ValueError(f"schedule.epochs={wanted.schedule.epochs} is fewer than the run's {saved.schedule.epochs}: "
                         "resuming may only add epochs")
    before, after = _flat(saved.to_dict()), _flat(wanted.to_dict())
    refused = [f"{key} (the run has {before[key]!r}, given {after[key]!r})" for key in after
               if after[key] != before[key] and key not in SAFE_ON_RESUME]
    if refused:
        raise ValueError(f"cannot change on resume: {'; '.join(refused)}. These define the run in {run_dir}; "
                         f"resuming may change only {', '.join(sorted(SAFE_ON_RESUME - {'train.resume'}))}. "
                         "Start a new run (another train.out_dir) to change the others")
    wanted.train.out_dir = str(run_dir)
    wanted.train.resume = "auto" if Path(resume).is_dir() or resume == "auto" else resume
    return wanted
