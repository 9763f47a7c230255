"""Image pairs from files for sigma-predict: one pair, two folders, a dataset folder, or videos.

Every source yields :class:`FramePair` objects in order: the RGB image as decoded (OpenCV's BGR/BGRA/grey with
its encoding name, for ``sigma_core.segmentation_step.segment_pair``) and the raw modality as stored (8/16-bit or
float; a dataset's integer depth in another unit than millimetres is read as metres, as training reads it).
Sources know their frame count before the first frame and what they leave out (unpaired files, the longer
video's tail), so the caller can say so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from .dataset import DATASET_YAML, IMAGE_EXTS, RGBXDataset, read_image
from .image_encoding import DEFAULT_MAX_PIXELS, check_pixels
from .modality import depth_to_metres, depth_units_key

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass(frozen=True)
class FramePair:
    """name: output file stem; rgb: (H, W, C) uint8 as decoded; rgb_encoding: bgr8, bgra8 or mono8;
    modal: (H', W') or (H', W', C) raw modality (uint8/uint16/float32). problem: why the pair could not be read
    (a corrupt, empty or oversized file; then rgb and modal are None): one bad file leaves out one frame, said
    with its reason, instead of ending a run over thousands."""

    name: str
    rgb: Optional[np.ndarray]
    rgb_encoding: str
    modal: Optional[np.ndarray]
    problem: Optional[str] = None


@dataclass(frozen=True)
class PairSource:
    """An ordered collection of pairs: ``len()`` frames, read lazily; ``skipped`` says what was left out and why;
    ``modal_path`` where the modality comes from (its name may say what camera it is)."""

    description: str
    count: int
    frames: Callable[[], Iterator[FramePair]]
    skipped: list[str] = field(default_factory=list)
    modal_path: str = ""

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[FramePair]:
        return self.frames()


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTS


def _encoding_of(img: np.ndarray, path: Path) -> str:
    if img.dtype != np.uint8:
        raise ValueError(f"{path}: an RGB image must be 8-bit, got {img.dtype}")
    if img.ndim == 2:
        return "mono8"
    return {3: "bgr8", 4: "bgra8"}.get(img.shape[2]) or "mono8"


def read_rgb(path: Path) -> tuple[np.ndarray, str]:
    """An RGB image file -> (array as OpenCV decodes it, its encoding); ValueError naming a bad file."""
    img = read_image(path)
    return img, _encoding_of(img, path)


def _read_pair(name: str, rgb: Path, modal: Path, read_modal: Callable[[], np.ndarray]) -> FramePair:
    """The pair ``name`` read from files, or a FramePair carrying the reason it cannot be read."""
    try:
        image, encoding = read_rgb(rgb)
        return FramePair(name, image, encoding, read_modal())
    except ValueError as e:  # DataError, ImageTooLargeError: the file is named in the message
        return FramePair(name, None, "", None, problem=str(e))


def _image_files(folder: Path, skipped: Optional[list[str]] = None) -> dict[str, Path]:
    """Image files by name without extension; a second file of the same name (0001.jpg beside 0001.png) is left
    out, and said in ``skipped``."""
    files: dict[str, Path] = {}
    twins: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in files:
                twins.append(p)
            else:
                files[p.stem] = p
    if twins and skipped is not None:
        skipped.append(f"{len(twins)} files in {folder} share their name with another and were not used (e.g. "
                       f"{twins[0].name}; {files[twins[0].stem].name} was): pairs are matched by name without "
                       "extension")
    return files


def image_pair(rgb: Path, modal: Path) -> PairSource:
    def frames() -> Iterator[FramePair]:
        yield _read_pair(rgb.stem, rgb, modal, lambda: read_image(modal))

    return PairSource(f"image pair {rgb} + {modal}", 1, frames, modal_path=str(modal))


def folder_pairs(rgb_dir: Path, modal_dir: Path) -> PairSource:
    """Two folders, paired by file name without extension (``0001.jpg`` with ``0001.png``)."""
    skipped: list[str] = []
    rgbs, modals = _image_files(rgb_dir, skipped), _image_files(modal_dir, skipped)
    names = [n for n in rgbs if n in modals]
    if len(rgbs) > len(names):
        skipped.append(f"{len(rgbs) - len(names)} RGB images without a modality image of the same name in "
                       f"{modal_dir} (e.g. {next(n for n in rgbs if n not in modals)})")
    if len(modals) > len(names):
        skipped.append(f"{len(modals) - len(names)} modality images without an RGB image of the same name in "
                       f"{rgb_dir} (e.g. {next(n for n in modals if n not in rgbs)})")
    if not names:
        raise ValueError(f"no file name is in both {rgb_dir} ({len(rgbs)} images) and {modal_dir} "
                         f"({len(modals)} images): pairs are matched by name without extension")

    def frames() -> Iterator[FramePair]:
        for n in names:
            yield _read_pair(n, rgbs[n], modals[n], lambda n=n: read_image(modals[n]))

    return PairSource(f"folders {rgb_dir} + {modal_dir}", count=len(names), skipped=skipped, frames=frames,
                      modal_path=str(modal_dir))


def dataset_pairs(root: Path, split: Optional[str], preset: Optional[str]) -> PairSource:
    """A dataset folder (dataset.yaml, or a benchmark with ``preset``): one split's frames, or (split None) every
    frame of its RGB folder that has a modality file."""
    if split is not None:
        ds = RGBXDataset(root, split=split, preset=preset)
        indices = list(range(len(ds)))
        what = f"split {split}"
    else:
        ds = RGBXDataset(root, split="all", preset=preset, split_file=os.devnull)  # names: every pair below
        spec = ds.spec
        if spec.split_folders:
            raise ValueError(f"{root} keeps each split in its own folder: pass --split (e.g. test)")
        ds.names = sorted(p.stem for p in (root / spec.rgb_dir).glob(f"*{spec.rgb_ext}")
                          if (root / spec.modal_dir / f"{p.stem}{spec.modal_ext}").is_file())
        indices = list(range(len(ds)))
        what = "all frames"
    if not indices:
        raise ValueError(f"no frames in {root} ({what})")

    def frames() -> Iterator[FramePair]:
        for i in indices:
            rgb_path, modal_path, _ = ds.paths(i)
            yield _read_pair(ds.names[i], rgb_path, modal_path, lambda i=i: ds.raw_modal(i))

    # no modal_path: a benchmark's folder name (NYU's Depth/) says depth for 8-bit images its checkpoints read
    # with a 0..255 scaling; the files' encoding still speaks for itself
    return PairSource(f"dataset {root} ({ds.spec.name}, {what})", count=len(indices), frames=frames)


def with_depth_units(source: PairSource, units: str) -> PairSource:
    """``source`` with its integer depth images converted from ``units`` (see
    :func:`~sigma_core.data.modality.depth_to_metres`: "mm", "0.1mm" for NYU Depth V2, "0.2mm" for TUM, ...) to
    float32 metres, as a dataset's ``depth_units`` and the node's ``depth.units`` do; float depth (metres already)
    passes unchanged. ValueError listing the units for an unknown one."""
    key = depth_units_key(units)

    def frames() -> Iterator[FramePair]:
        for pair in source.frames():
            if pair.modal is not None and pair.modal.dtype.kind in "ui":
                depth = pair.modal[..., 0] if pair.modal.ndim == 3 else pair.modal
                pair = replace(pair, modal=depth_to_metres(depth, key))
            yield pair

    return replace(source, description=f"{source.description} (depth in {key})", frames=frames)


def _video_frames(path: Path) -> tuple[int, Iterator[np.ndarray]]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path} (not a video, or a codec OpenCV lacks)")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:  # from the container's header, before a frame of that size is decoded
        check_pixels(width, height, DEFAULT_MAX_PIXELS, f"video {path}")
    except ValueError:
        cap.release()
        raise

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield frame
        finally:
            cap.release()

    return count, frames()


def video_pairs(rgb: Path, modal: Path) -> PairSource:
    """An RGB video with a modality video (frame i with frame i) or a modality image folder (its images in name
    order). A video's modality is 8-bit: a colour-mapped modality video is read through its first channel."""
    rgb_count, _ = _video_frames(rgb)
    skipped: list[str] = []
    if modal.is_dir():
        modal_files = list(_image_files(modal, skipped).values())
        modal_count = len(modal_files)
    else:
        modal_count, _ = _video_frames(modal)
    count = min(rgb_count, modal_count)
    if rgb_count != modal_count:
        longer = rgb if rgb_count > modal_count else modal
        skipped.append(f"the last {abs(rgb_count - modal_count)} frames of {longer} ({rgb_count} RGB frames, "
                       f"{modal_count} modality frames): pairs are frame i with frame i")
    if count == 0:
        raise ValueError(f"no frames to pair: {rgb} has {rgb_count}, {modal} has {modal_count}")

    def frames() -> Iterator[FramePair]:
        _, rgb_frames = _video_frames(rgb)
        if modal.is_dir():
            modal_frames = iter(modal_files)
        else:
            modal_frames = (f[..., 0] if f.ndim == 3 else f for f in _video_frames(modal)[1])
        for i, (image, raw) in enumerate(zip(rgb_frames, modal_frames)):
            if i >= count:
                return
            name = f"frame_{i:06d}"
            if isinstance(raw, Path):
                try:
                    raw = read_image(raw)
                except ValueError as e:
                    yield FramePair(name, None, "", None, problem=str(e))
                    continue
            yield FramePair(name, image, _encoding_of(image, rgb), raw)

    return PairSource(f"video {rgb} + {'image folder' if modal.is_dir() else 'video'} {modal}", count=count,
                      skipped=skipped, frames=frames, modal_path=str(modal))


def open_pairs(rgb: Path, modal: Optional[Path], split: Optional[str] = None,
               preset: Optional[str] = None) -> PairSource:
    """What the user named -> its pairs: ``rgb`` and ``modal`` two images, two folders, a video and a video or
    folder; ``rgb`` alone a dataset folder (dataset.yaml, or a benchmark with ``preset``).

    Raises ValueError (FileNotFoundError for a missing path) naming what does not fit.
    """
    for p in (rgb, modal):
        if p is not None and not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
    if modal is None:
        if not rgb.is_dir():
            raise ValueError(f"{rgb}: give an RGB and a modality path, or one dataset folder")
        if preset is None and not (rgb / DATASET_YAML).is_file():
            raise ValueError(f"{rgb} has no {DATASET_YAML}: give --preset (mfnet, pst900, nyudepthv2, sunrgbd) for "
                             "a benchmark folder, or an RGB folder and a modality folder")
        return dataset_pairs(rgb, split, preset)
    if is_video(rgb):
        if not (is_video(modal) or modal.is_dir()):
            raise ValueError(f"{rgb} is a video: the modality must be a video or an image folder, got {modal}")
        return video_pairs(rgb, modal)
    if rgb.resolve() == modal.resolve():  # a typo: every RGB image would be paired with itself as the modality
        raise ValueError(f"the RGB and the modality path are the same ({rgb}): give the modality's own image, "
                         "folder or video")
    if rgb.is_dir() and modal.is_dir():
        return folder_pairs(rgb, modal)
    if rgb.is_file() and modal.is_file():
        return image_pair(rgb, modal)
    raise ValueError(f"{rgb} and {modal}: give two images, two folders, or a video with a video or image folder")


__all__ = ["FramePair", "PairSource", "VIDEO_EXTS", "dataset_pairs", "folder_pairs", "image_pair", "is_video",
           "open_pairs", "read_rgb", "video_pairs"]
