"""Label images: reading class ids from the PNG variants datasets use, the label shift, and the range check.

One place for what a label may hold, used where labels enter: the dataset
reader (training, evaluation), bag extraction and the replay evaluators.

- Grey PNGs (8 or 16 bit) hold class ids directly (MFNet, NYU, PST900, ours).
- Indexed ("P" mode) PNGs, the usual output of annotation tools and VOC-style
  datasets, hold class ids as palette indices: they are read as indices, not
  as their colours (OpenCV would return colours).
- A colour (RGB) label is only accepted when every pixel's colour is one of
  the dataset's palette colours exactly; it then maps to that palette index.
  A 3-channel image whose channels are equal is read as grey.
- Class ids are 0..K-1 for a K-class dataset; 255 marks ignored pixels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from .errors import DataError
from .transforms import IGNORE_INDEX

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_INDEXED = 3  # IHDR colour type of palette images


def is_indexed_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a palette-mode PNG (IHDR colour type 3), from its first 26 bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return len(head) == 26 and head[:8] == _PNG_MAGIC and head[12:16] == b"IHDR" and head[25] == _PNG_INDEXED


def _read_indexed_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "P":
                raise DataError(f"{path}: expected a palette (P mode) PNG, Pillow reads it as {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError ... for broken files
        raise DataError(f"cannot decode label image {path} ({exc}); re-export or remove the file") from None


def colours_to_ids(colour_rgb: np.ndarray, palette: Sequence[Sequence[int]], where: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB label -> (H, W) uint8 palette indices; DataError if a colour is not in the palette."""
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    c = colour_rgb.astype(np.int64)
    codes = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_codes, kind="stable")
    pos = np.searchsorted(pal_codes[order], codes).clip(0, len(pal_codes) - 1)
    found = pal_codes[order][pos] == codes
    if not found.all():
        bad = np.unique(colour_rgb[~found].reshape(-1, 3), axis=0)
        shown = ", ".join(f"RGB{tuple(int(v) for v in c)}" for c in bad[:4])
        raise DataError(
            f"{where} is a colour image whose colours are not all in the dataset's palette "
            f"({int((~found).sum())} pixels, e.g. {shown}): labels must hold class ids (grey or indexed PNG); "
            "convert it, or give the palette whose colours it uses"
        )
    return order[pos].astype(np.uint8)


def label_from_array(stored: np.ndarray, where: str, palette: Optional[Sequence[Sequence[int]]] = None,
                     colour_order: str = "bgr") -> np.ndarray:
    """A decoded label image -> (H, W) class ids (uint8/uint16 as stored).

    Grey stays as is; 3/4-channel images with equal channels are grey; other colour images are
    mapped through ``palette`` (RGB triples) when every colour matches exactly, else DataError.
    ``colour_order``: channel order of ``stored`` ("bgr" as OpenCV decodes, or "rgb").
    """
    if stored.ndim == 2:
        return stored
    if stored.ndim != 3 or stored.shape[2] not in (1, 3, 4):
        raise DataError(f"{where}: a label image must be (H, W) class ids, got shape {stored.shape}")
    colour = stored[..., :3]
    if stored.shape[2] == 1 or (np.array_equal(colour[..., 0], colour[..., 1])
                                and np.array_equal(colour[..., 0], colour[..., 2])):
        return np.ascontiguousarray(stored[..., 0])
    if palette is None:
        raise DataError(
            f"{where} is a colour image, not class ids: labels must be grey or indexed PNGs holding class ids "
            "(0..K-1, 255 = ignore); convert it, or give the dataset a palette to map its colours through"
        )
    rgb = colour[..., ::-1] if colour_order == "bgr" else colour
    return colours_to_ids(rgb, palette, where)


def read_label_image(path: str | os.PathLike, palette: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """A label file -> (H, W) class ids (uint8, or uint16 for 16-bit PNGs), read as its indices.

    Indexed PNGs give their palette indices; see :func:`label_from_array` for colour files.
    Raises DataError naming the file when it is missing, empty, undecodable or a colour image
    that does not match ``palette``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing label file {path}")
    if is_indexed_png(path):
        return _read_indexed_png(path)
    if path.suffix == ".npy":
        try:
            stored = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read label {path}: {exc}") from None
    else:
        stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if stored is None:
            raise DataError(f"cannot decode label image {path} (empty, corrupt or not an image); "
                            "re-export it or remove its name from the split list")
    if not np.issubdtype(stored.dtype, np.integer):
        raise DataError(f"{path}: labels must be integer class ids, the file holds {stored.dtype}")
    return label_from_array(stored, str(path), palette)


def shift_labels(stored: np.ndarray, shift: int) -> np.ndarray:
    """Stored label image -> (H, W) int64 class ids; with a shift, stored values below it become 255."""
    label = stored.astype(np.int64)
    if shift:
        unlabelled = (label < shift) | (label == IGNORE_INDEX)
        label = label - shift
        label[unlabelled] = IGNORE_INDEX
    return label


def out_of_range_values(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Sorted distinct values of ``label`` that are neither a class id (0..K-1) nor 255 (ignore)."""
    bad = ((label < 0) | (label >= num_classes)) & (label != IGNORE_INDEX)  # no sort of the whole image
    return np.unique(label[bad]) if bad.any() else np.empty(0, label.dtype)


def check_label_values(label: np.ndarray, num_classes: Optional[int], where: str, fix: str,
                       shift: int = 0) -> None:
    """DataError naming ``where``, the first bad value and the class count if ``label`` holds a value that is not
    a class id 0..K-1 or 255; ``shift`` (the dataset's label_shift) is added back to show the stored value;
    ``fix`` says what to change (the class list, label_shift, ...)."""
    if num_classes is None:
        return
    bad = out_of_range_values(label, num_classes)
    if bad.size == 0:
        return
    values = ", ".join(str(int(v) + shift) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
    allowed = f"{shift}..{num_classes - 1 + shift} or 255 (ignore)"
    if shift:
        allowed += f", with label_shift {shift} (stored values below {shift} are ignored)"
    raise DataError(
        f"{where} holds label value {values}, but the dataset has {num_classes} classes: stored values must be "
        f"{allowed}; {fix}"
    )
