"""RGB-X segmentation datasets in the published folder layout, with presets for the public benchmarks.

A dataset folder holds an RGB folder, a modality folder, a label folder and
split lists (one frame name per line). :class:`DatasetSpec` says which folder
and extension is which, how labels are shifted and how the modality is scaled;
presets describe MFNet, PST900, NYU Depth V2 and SUN RGB-D as published (MFNet
and PST900 also in their original release layout, found by looking at the
folder), and ``custom`` reads the ``dataset.yaml`` written by extraction and the
synthetic world. :class:`RGBXDataset` returns network-ready samples and checks
every label it reads (see :mod:`sigma_core.data.labels`); bad files and label
values raise :class:`~sigma_core.data.errors.DataError` naming the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np
import yaml

try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # a deployment without torch (an .onnx model): listing and reading pairs still works
    _TorchDataset = object

from ..files import atomic_write_text, read_yaml_mapping
from .errors import DataError
from .image_encoding import DEFAULT_MAX_PIXELS, ImageTooLargeError, check_file_size, jpeg_is_truncated
from .labels import check_class_names, check_label_values, read_label_image, shift_labels
from .modality import ModalityScaling, depth_to_metres, depth_units_key
from .transforms import IGNORE_INDEX, to_network

DATASET_YAML = "dataset.yaml"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")

_NYU40 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes", "ceiling", "books",
    "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard", "person", "night stand",
    "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)


@dataclass(frozen=True)
class DatasetSpec:
    """Where the files of a dataset are and how to read them.

    label_shift: subtracted from stored label values; stored values below it become 255
        (ignored). 1 for NYU/SUN (stored 1-based, 0 = unlabelled), 0 otherwise.
    splits: split name -> candidate list files (the first that exists is used); a candidate
        "a.txt + b.txt" joins several lists (MFNet's published training set is train + val);
        a split that is not listed is read from ``<split>.txt``.
    split_folders: each split is a sub-folder (``<root>/<split>/<rgb_dir>/...``) and holds the
        frames of its RGB folder, in name order (PST900 as released); no list files.
    modal_channel: read the modality from this channel of its file (as OpenCV orders them),
        e.g. 3 for MFNet's original 4-channel PNGs (R, G, B, thermal), where modal_dir is rgb_dir.
    scaling: how raw modality images map to [0, 1]; the benchmarks store 8-bit images, read
        over the full 0..255 range as the published loader does.
    palette: RGB colour per class; colour label images are mapped through it when every
        colour matches exactly (grey and indexed PNGs hold the ids themselves).
    depth_units: how integer depth files store depth (see :func:`~sigma_core.data.modality.depth_to_metres`:
        "mm" default, "0.1mm"/"nyu", "0.2mm"/"tum", "sunrgbd"); a depth dataset whose unit is not
        millimetres is read as metres before ``scaling``, so the model sees metres whatever the files hold.
    """

    name: str
    classes: Optional[tuple[str, ...]]
    modality: str = "thermal"
    scaling: ModalityScaling = field(default_factory=ModalityScaling)
    palette: Optional[tuple[tuple[int, int, int], ...]] = None
    label_shift: int = 0
    rgb_dir: str = "RGB"
    modal_dir: str = "Modal"
    label_dir: Optional[str] = "Label"
    rgb_ext: str = ".png"
    modal_ext: str = ".png"
    label_ext: str = ".png"
    splits: dict = field(default_factory=lambda: {"train": ("train.txt",), "test": ("test.txt",)})
    image_size: Optional[tuple[int, int]] = None  # (height, width)
    eval_scales: tuple[float, ...] = (1.0,)
    eval_flip: bool = False
    split_folders: bool = False
    modal_channel: Optional[int] = None
    depth_units: str = "mm"
    extra: dict = field(default_factory=dict)  # other dataset.yaml keys (source, counts, encodings, ...)

    @property
    def num_classes(self) -> Optional[int]:
        return len(self.classes) if self.classes is not None else None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DatasetSpec:
        """Read a dataset.yaml (as written by ``sigma-extract`` / ``sigma-synth``)."""
        path = Path(path)
        try:
            d = read_yaml_mapping(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: a custom dataset folder needs a {DATASET_YAML}") from None
        if not d:
            raise ValueError(f"{path} is empty; it needs the dataset's keys (classes, modality, ...), "
                             "as sigma-extract writes them")
        return cls.from_dict(d, source=str(path))

    @classmethod
    def from_dict(cls, d: dict, source: str = DATASET_YAML) -> DatasetSpec:
        known = {"name", "classes", "modality", "scaling", "palette", "label_shift", "rgb_dir", "modal_dir",
                 "label_dir", "rgb_ext", "modal_ext", "label_ext", "splits", "image_size", "eval", "split_folders",
                 "modal_channel", "depth_units"}
        modality = d.get("modality", "thermal")
        scaling = ModalityScaling.from_dict({"modality": modality, **(d.get("scaling") or {})})
        classes = d.get("classes")
        palette = d.get("palette")
        if classes is not None and palette is not None and len(palette) != len(classes):
            raise ValueError(f"{source}: palette has {len(palette)} colours for {len(classes)} classes")
        if classes is not None:
            check_class_names(classes, f"{source}: classes")
        splits = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in (d.get("splits") or {}).items()}
        ev = d.get("eval") or {}
        size = d.get("image_size")
        return cls(
            name=str(d.get("name", "custom")),
            classes=tuple(classes) if classes is not None else None,
            modality=modality,
            scaling=scaling,
            palette=tuple(tuple(int(v) for v in c) for c in palette) if palette is not None else None,
            label_shift=int(d.get("label_shift", 0)),
            rgb_dir=d.get("rgb_dir", "RGB"),
            modal_dir=d.get("modal_dir", "Modal"),
            label_dir=d.get("label_dir", "Label"),
            rgb_ext=d.get("rgb_ext", ".png"),
            modal_ext=d.get("modal_ext", ".png"),
            label_ext=d.get("label_ext", ".png"),
            splits=splits or {"train": ("train.txt",), "test": ("test.txt",)},
            image_size=tuple(size) if size is not None else None,
            eval_scales=tuple(float(s) for s in ev.get("scales", (1.0,))),
            eval_flip=bool(ev.get("flip", False)),
            split_folders=bool(d.get("split_folders", False)),
            modal_channel=int(d["modal_channel"]) if d.get("modal_channel") is not None else None,
            depth_units=_depth_units(d, source),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict:
        """The dataset.yaml form (inverse of from_dict)."""
        d: dict[str, Any] = {
            "name": self.name,
            "classes": list(self.classes) if self.classes is not None else None,
            "palette": [list(c) for c in self.palette] if self.palette is not None else None,
            "modality": self.modality,
            "scaling": self.scaling.to_dict(),
            "label_shift": self.label_shift,
            "rgb_dir": self.rgb_dir,
            "modal_dir": self.modal_dir,
            "label_dir": self.label_dir,
            "rgb_ext": self.rgb_ext,
            "modal_ext": self.modal_ext,
            "label_ext": self.label_ext,
            "splits": {k: list(v) if len(v) > 1 else v[0] for k, v in self.splits.items()},
            "image_size": list(self.image_size) if self.image_size is not None else None,
            "eval": {"scales": list(self.eval_scales), "flip": self.eval_flip},
        }
        if self.split_folders:
            d["split_folders"] = True
        if self.modal_channel is not None:
            d["modal_channel"] = self.modal_channel
        if self.depth_units != "mm":
            d["depth_units"] = self.depth_units
        d.update(self.extra)
        return d

    def write_yaml(self, root: str | os.PathLike) -> Path:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        return atomic_write_text(Path(root) / DATASET_YAML, text)


_BENCH_SCALING = ModalityScaling("thermal")  # 8-bit images over 0..255, as the published loader reads them

PRESETS: dict[str, DatasetSpec] = {
    "mfnet": DatasetSpec(
        name="MFNet",
        classes=("unlabeled", "car", "person", "bike", "curve", "car stop", "guardrail", "color cone", "bump"),
        palette=((0, 0, 0), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 192), (128, 128, 0), (64, 64, 128),
                 (192, 128, 128), (192, 64, 0)),
        modality="thermal", scaling=_BENCH_SCALING,
        splits={"train": ("train2.txt", "train.txt"), "test": ("test.txt",), "val": ("val.txt",)},
        image_size=(480, 640),
    ),
    "pst900": DatasetSpec(
        name="PST900",
        classes=("Background", "Extinguisher", "Backpack", "Hand-Drill", "Survivor"),
        palette=((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)),  # RGB, as its toolkit colours
        modality="thermal", scaling=_BENCH_SCALING,
        rgb_dir="rgb_resize", modal_dir="thermal_resize", label_dir="labels_resize",
        image_size=(720, 1280),
    ),
    "nyudepthv2": DatasetSpec(
        name="NYUDepthv2",
        classes=_NYU40,
        modality="depth", scaling=_BENCH_SCALING, label_shift=1,
        modal_dir="Depth", rgb_ext=".jpg",
        splits={"train": ("train2.txt", "train.txt"), "test": ("test2.txt", "test.txt")},
        image_size=(480, 640), eval_scales=(0.75, 1.0, 1.25), eval_flip=True,
    ),
    "sunrgbd": DatasetSpec(
        name="SUNRGBD",
        classes=_NYU40[:37],
        modality="depth", scaling=_BENCH_SCALING, label_shift=1,
        rgb_dir="RGB_resize", modal_dir="Depth_resize", label_dir="labels_resize", rgb_ext=".jpg",
        splits={"train": ("train2.txt", "train.txt"), "test": ("test2.txt", "test.txt")},
        image_size=(480, 640), eval_scales=(0.75, 1.0, 1.25), eval_flip=True,
    ),
}
# The original releases, as downloaded, used when the folder has their layout instead of the one above.
_RELEASE_LAYOUTS: dict[str, DatasetSpec] = {
    # MFNet (Ha et al. 2017): images/ holds 4-channel PNGs R, G, B, thermal; labels/; train/val/test(_day/_night).txt.
    # Sigma's train2.txt is train + val (1176 frames).
    "mfnet": replace(PRESETS["mfnet"], rgb_dir="images", modal_dir="images", modal_channel=3, label_dir="labels",
                     splits={"train": ("train2.txt", "train.txt + val.txt"), "test": ("test.txt",),
                             "val": ("val.txt",)}),
    # PST900 (Shivakumar et al. 2020): train/ and test/, each with rgb/, thermal/ (8-bit), labels/ (and depth/).
    "pst900": replace(PRESETS["pst900"], rgb_dir="rgb", modal_dir="thermal", label_dir="labels",
                      split_folders=True, splits={}),
}
_ALIASES = {"nyu": "nyudepthv2", "nyuv2": "nyudepthv2", "nyudv2": "nyudepthv2", "sun": "sunrgbd", "pst": "pst900"}


def preset_key(name: str) -> str:
    """A preset name as users spell it ("NYU-Depth-v2", "nyudv2", "PST") -> its key in PRESETS ("nyudepthv2",
    "pst900"); other names come back lower-cased without "-" and "_" (not a known preset)."""
    key = name.lower().replace("-", "").replace("_", "")
    return _ALIASES.get(key, key)


def _depth_units(d: dict, source: str) -> str:
    try:
        return depth_units_key(d.get("depth_units", "mm"))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _has_layout(root: Path, spec: DatasetSpec) -> bool:
    if spec.split_folders:
        return any((root / split / spec.rgb_dir).is_dir() for split in ("train", "test"))
    return (root / spec.rgb_dir).is_dir()


def resolve_spec(root: str | os.PathLike, preset: Optional[str] = None) -> DatasetSpec:
    """The spec of a dataset folder: a named preset, or (``None``/``custom``) the folder's dataset.yaml.

    For MFNet and PST900 the original release layout is used where the folder has it and lacks
    the published converted one (``RGB/``, ``rgb_resize/``).
    """
    if preset is None or preset.lower() == "custom":
        return DatasetSpec.from_yaml(Path(root) / DATASET_YAML)
    key = preset_key(preset)
    if key not in PRESETS:
        raise ValueError(f"unknown dataset preset {preset!r}; choose one of {', '.join(PRESETS)} or custom")
    release = _RELEASE_LAYOUTS.get(key)
    root = Path(root)
    if release is not None and not _has_layout(root, PRESETS[key]) and _has_layout(root, release):
        return release
    return PRESETS[key]


def _frame_name(line: str) -> str:
    """A split-list line -> frame name: first field, folder and known image extension removed."""
    first = line.split()[0]
    base = first.replace("\\", "/").rsplit("/", 1)[-1]
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTS else base


def read_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """cv2.imread (or np.load for .npy) that raises DataError naming the file instead of returning None, and for a
    file declaring more than ``max_pixels`` pixels (checked from its header before decoding)."""
    if not path.is_file():
        raise DataError(f"missing file {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    try:  # a decompression bomb is refused from its header (a 0.75 MB PNG can declare 16000x16000 pixels)
        check_file_size(data, f"image {path}", max_pixels)
    except ValueError as exc:
        said = str(exc) if isinstance(exc, ImageTooLargeError) else f"cannot decode image {path}: {exc}"
        raise DataError(f"{said}; replace the file (in a dataset: or remove its name from the split list)") from None
    img = cv2.imdecode(data, flags) if data.size else None
    if img is None or jpeg_is_truncated(data):  # libjpeg fills a truncated JPEG's missing rows grey, silently
        raise DataError(f"cannot decode image {path} (empty, corrupt, truncated or not an image); "
                        "replace the file or remove its name from the split list")
    return img


class RGBXDataset(_TorchDataset):
    """Samples ``{"rgb": (3, H, W) float32, "modal": (3, H, W) float32, "label": (H, W) int64, "name": str}``.

    rgb/modal are ImageNet-normalised (the modality first scaled to [0, 1] by the spec's
    ModalityScaling, then replicated to 3 channels); labels use 255 for ignored pixels.
    ``transform`` (e.g. :class:`~sigma_core.data.transforms.TrainAugmentation`) receives
    (rgb uint8 (H, W, 3), modal float32 (H, W), label int64 (H, W), rng) with ``rng`` seeded
    from (seed, epoch, index): call :meth:`set_epoch` each epoch for fresh augmentations.
    Folders without labels (label_dir null) give all-255 labels.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        preset: Optional[str] = None,
        transform: Optional[Callable] = None,
        seed: int = 0,
        spec: Optional[DatasetSpec] = None,
        split_file: Optional[str | os.PathLike] = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        self.spec = spec if spec is not None else resolve_spec(self.root, preset)
        self.split = split
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        if split_file is None and self.spec.split_folders:
            self.names = self._folder_names(split)
            return
        lists = [Path(split_file)] if split_file is not None else self._list_files(split)
        self.names = []
        for list_path in lists:
            try:
                lines = list_path.read_text(encoding="utf-8-sig").splitlines()  # -sig: drop a Windows BOM
            except OSError as exc:
                raise FileNotFoundError(f"cannot read split list {list_path}: {exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise DataError(f"split list {list_path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                "it must list one frame name per line") from None
            self.names += [_frame_name(s) for s in lines if s.strip() and not s.lstrip().startswith("#")]

    def _list_files(self, split: str) -> list[Path]:
        candidates = self.spec.splits.get(split, (f"{split}.txt",))
        for c in candidates:
            parts = [self.root / p.strip() for p in c.split("+")]
            if all(p.is_file() for p in parts):
                return parts
        raise FileNotFoundError(
            f"no list file for split {split!r} in {self.root}: looked for {', '.join(candidates)}"
        )

    def _folder_names(self, split: str) -> list[str]:
        folder = self.root / split / self.spec.rgb_dir
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {folder} for split {split!r} (this layout keeps each split in "
                                    f"<root>/<split>/{self.spec.rgb_dir})")
        return sorted(p.stem for p in folder.iterdir() if p.suffix == self.spec.rgb_ext)

    # --- metadata used by training and evaluation
    @property
    def classes(self) -> Optional[tuple[str, ...]]:
        return self.spec.classes

    @property
    def num_classes(self) -> Optional[int]:
        return self.spec.num_classes

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names)

    def paths(self, index: int) -> tuple[Path, Path, Optional[Path]]:
        """(rgb, modal, label or None) file paths of one sample."""
        s, n = self.spec, self.names[index]
        base = self.root / self.split if s.split_folders else self.root
        label = base / s.label_dir / f"{n}{s.label_ext}" if s.label_dir else None
        return base / s.rgb_dir / f"{n}{s.rgb_ext}", base / s.modal_dir / f"{n}{s.modal_ext}", label

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unaugmented arrays: (H, W, 3) uint8 RGB, (H, W) float32 modality in [0, 1], (H, W) int64 labels.

        Raises DataError naming the file for a missing or undecodable file, a label value that is
        not a class id (0..K-1 after label_shift) or 255, a colour label, or differing sizes.
        """
        rgb_path, modal_path, label_path = self.paths(index)
        bgr = read_image(rgb_path)
        if bgr.dtype != np.uint8:
            raise DataError(f"{rgb_path}: RGB images must be 8-bit, got {bgr.dtype}")
        if bgr.ndim == 2:
            rgb = np.repeat(bgr[..., None], 3, axis=2)
        else:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB if bgr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        modal, _ = self.spec.scaling.to_unit(self._modal_raw(modal_path))
        if label_path is not None:
            stored = read_label_image(label_path, self.spec.palette)
            label = shift_labels(stored, self.spec.label_shift)
            check_label_values(label, self.spec.num_classes, str(label_path), self._label_fix(), self.spec.label_shift)
        else:
            label = np.full(rgb.shape[:2], IGNORE_INDEX, np.int64)
        if not (rgb.shape[:2] == modal.shape == label.shape):
            raise DataError(
                f"sizes differ for frame {self.names[index]!r}: {rgb_path.name} {rgb.shape[:2]}, "
                f"{modal_path.name} {modal.shape}, label {label.shape}"
            )
        return rgb, modal, label

    def raw_modal(self, index: int) -> np.ndarray:
        """The modality of one sample before scaling, as the checkpoint's ModalityScaling reads it (integer depth
        stored in another unit than millimetres comes back in metres); DataError naming a bad file."""
        return self._modal_raw(self.paths(index)[1])

    def _modal_raw(self, path: Path) -> np.ndarray:
        """The modality file as the scaling expects it: its channel (modal_channel), integer depth in metres."""
        raw = read_image(path)
        ch = self.spec.modal_channel
        if ch is not None:
            if raw.ndim != 3 or raw.shape[2] <= ch:
                raise DataError(f"{path}: expected the modality in channel {ch} of a multi-channel image "
                                f"(as the {self.spec.name} release stores it), got shape {raw.shape}")
            raw = raw[..., ch]
        if (self.spec.scaling.modality == "depth" and self.spec.depth_units != "mm"
                and np.issubdtype(raw.dtype, np.integer)):
            raw = depth_to_metres(raw[..., 0] if raw.ndim == 3 else raw, self.spec.depth_units)
        return raw

    def _label_fix(self) -> str:
        if self.spec.name not in {p.name for p in PRESETS.values()}:
            return (f"list every class in {self.root / DATASET_YAML} ('classes'), or set its label_shift "
                    "if the files count classes from 1 with 0 = unlabelled")
        return (f"is {self.root} really a {self.spec.name} dataset? Use the preset that matches the files "
                "(label_shift and class list), or a dataset.yaml with the classes (preset custom)")

    def __getitem__(self, index: int) -> dict:
        rgb, modal, label = self.load(index)
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            rgb_n, modal_n, label_n = self.transform(rgb, modal, label, rng)
        else:
            rgb_n, modal_n, label_n = to_network(rgb, modal, label)
        import torch  # a training sample is a tensor; load() above serves the torch-free tools

        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb_n)),
            "modal": torch.from_numpy(np.ascontiguousarray(modal_n)),
            "label": torch.from_numpy(np.ascontiguousarray(label_n, dtype=np.int64)),
            "name": self.names[index],
        }

