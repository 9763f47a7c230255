"""Label images: reading class ids from the PNG variants datasets use, the label shift, and the range check.

One place for what a label may hold, used where labels enter: the dataset
reader (training, evaluation), bag extraction and the replay evaluators.

- Grey PNGs (8 or 16 bit) hold class ids directly (MFNet, NYU, PST900, ours); 1/2/4-bit grey PNGs
  (binary masks) hold them too, undoing the decoders' scaling to 0..255.
- Indexed ("P" mode) PNGs, the usual output of annotation tools and VOC-style
  datasets, hold class ids as palette indices: they are read as indices, not
  as their colours (OpenCV would return colours).
- A colour (RGB) label is only accepted when every pixel's colour is one of
  the dataset's palette colours exactly; it then maps to that palette index
  (also when those colours are all grey, as PST900's black and white).
  Otherwise a 3-channel image whose channels are equal is read as grey.
- Class ids are 0..K-1 for a K-class dataset; 255 marks ignored pixels.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from .errors import DataError
from .image_encoding import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    check_file_size,
    check_pixels,
    compressed_kind,
    compressed_size,
    image_to_array,
)
from .transforms import IGNORE_INDEX

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_INDEXED = 3  # IHDR colour type of palette images
_JPEG_MAGIC = b"\xff\xd8"
_PNG_GREY = 0  # IHDR colour type of grey images (1, 2, 4, 8 or 16 bits)


def png_header(head: bytes) -> Optional[tuple[int, int]]:
    """(bit depth, IHDR colour type) of PNG data from its first 26 bytes; None if it is not a PNG."""
    if len(head) < 26 or head[:8] != _PNG_MAGIC or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _file_png_header(path: str | os.PathLike) -> Optional[tuple[int, int]]:
    try:
        with open(path, "rb") as f:
            return png_header(f.read(26))
    except OSError:
        return None


def is_indexed_png(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a palette-mode PNG (IHDR colour type 3), from its first 26 bytes."""
    header = _file_png_header(path)
    return header is not None and header[1] == _PNG_INDEXED


def unscale_low_bit_grey(decoded: np.ndarray, header: Optional[tuple[int, int]]) -> np.ndarray:
    """Undo the decoders' scaling of 1/2/4-bit grey PNG samples to 0..255 (OpenCV and Pillow both give
    1 -> 255 for a 1-bit mask, 1 -> 85 for 2 bits): a label's samples are class ids, not brightness.
    ``header``: :func:`png_header` of the file; other images come back unchanged."""
    if header is None or header[1] != _PNG_GREY or header[0] >= 8 or decoded.dtype != np.uint8:
        return decoded
    return decoded // (255 // ((1 << header[0]) - 1))  # exact: the decoders multiply by 255 / (2^bits - 1)


def _read_indexed_png(source, where: str) -> np.ndarray:
    """Palette indices of an indexed PNG (a path or a binary file object; ``where`` names it in errors)."""
    from PIL import Image

    try:
        with Image.open(source) as img:
            img.load()
            if img.mode != "P":
                raise DataError(f"{where}: expected a palette (P mode) PNG, Pillow reads it as {img.mode}")
            return np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError ... for broken files
        raise DataError(f"cannot decode label image {where} ({exc}); re-export or remove the file") from None


def _palette_indices(colour_rgb: np.ndarray, palette: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) RGB -> ((H, W) uint8 palette index, (H, W) bool: the colour is in the palette)."""
    pal = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    c = colour_rgb.astype(np.int64)
    codes = (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    order = np.argsort(pal_codes, kind="stable")
    pos = np.searchsorted(pal_codes[order], codes).clip(0, len(pal_codes) - 1)
    return order[pos].astype(np.uint8), pal_codes[order][pos] == codes


def colours_to_ids(colour_rgb: np.ndarray, palette: Sequence[Sequence[int]], where: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB label -> (H, W) uint8 palette indices; DataError if a colour is not in the palette."""
    ids, found = _palette_indices(colour_rgb, palette)
    if not found.all():
        bad = np.unique(colour_rgb[~found].reshape(-1, 3), axis=0)
        shown = ", ".join(f"RGB{tuple(int(v) for v in c)}" for c in bad[:4])
        raise DataError(
            f"{where} is a colour image whose colours are not all in the dataset's palette "
            f"({int((~found).sum())} pixels, e.g. {shown}): labels must hold class ids (grey or indexed PNG); "
            "convert it, or give the palette whose colours it uses"
        )
    return ids


def label_from_array(stored: np.ndarray, where: str, palette: Optional[Sequence[Sequence[int]]] = None,
                     colour_order: str = "bgr") -> np.ndarray:
    """A decoded label image -> (H, W) class ids (uint8/uint16 as stored).

    Grey stays as is. A 3/4-channel image whose colours are all ``palette`` colours (RGB triples) maps
    through it, even when they are all grey (PST900's black and white: a frame of background and survivors
    only); otherwise one with equal channels is grey; other colour images are a DataError.
    ``colour_order``: channel order of ``stored`` ("bgr" as OpenCV decodes, or "rgb").
    """
    if stored.ndim == 2:
        return stored
    if stored.ndim != 3 or stored.shape[2] not in (1, 3, 4):
        raise DataError(f"{where}: a label image must be (H, W) class ids, got shape {stored.shape}")
    if stored.shape[2] == 1:
        return np.ascontiguousarray(stored[..., 0])
    colour = stored[..., :3]
    rgb = colour[..., ::-1] if colour_order == "bgr" else colour
    if palette is not None and stored.dtype == np.uint8:
        ids, found = _palette_indices(rgb, palette)
        if found.all():
            return ids
    if np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2]):
        return np.ascontiguousarray(stored[..., 0])
    if palette is None or stored.dtype != np.uint8:  # a palette holds 8-bit colours
        raise DataError(
            f"{where} is a {'' if stored.dtype == np.uint8 else f'{stored.dtype} '}colour image, not class ids: "
            "labels must be grey or indexed PNGs holding class ids (0..K-1, 255 = ignore); convert it, or give the "
            "dataset a palette to map its 8-bit colours through"
        )
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
    if path.suffix != ".npy":
        _check_label_file_size(path)
    header = _file_png_header(path)
    if header is not None and header[1] == _PNG_INDEXED:
        return _read_indexed_png(path, str(path))
    if path.suffix == ".npy":
        try:
            stored = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read label {path}: {exc}") from None
    else:
        data = np.fromfile(path, np.uint8)
        if data[:2].tobytes() == _JPEG_MAGIC:
            raise DataError(f"{path} is a JPEG: lossy compression changes class ids along every edge, so it cannot "
                            "hold a label; export the labels as PNG")
        stored = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if stored is None:
            raise DataError(f"cannot decode label image {path} (empty, corrupt or not an image); "
                            "re-export it or remove its name from the split list")
        stored = unscale_low_bit_grey(stored, header)
    if not np.issubdtype(stored.dtype, np.integer):
        raise DataError(f"{path}: labels must be integer class ids, the file holds {stored.dtype}")
    return label_from_array(stored, str(path), palette)


def _check_label_file_size(path: Path) -> None:
    """DataError for a label file declaring more pixels than the decoders' limit (read from its header)."""
    try:
        check_file_size(np.fromfile(path, np.uint8), f"label image {path}")
    except ImageTooLargeError as exc:
        raise DataError(f"{exc}; re-export it or remove its name from the split list") from None
    except ValueError as exc:
        raise DataError(f"cannot decode label image {path} ({exc}); re-export it or remove its name from the split "
                        "list") from None
    except OSError as exc:
        raise DataError(f"cannot read label {path}: {exc.strerror}") from None


def label_from_message(msg, where: str) -> np.ndarray:
    """A label ``sensor_msgs`` Image or CompressedImage (rclpy or rosbags) -> (H, W) class ids, uint8 or uint16.

    Read as the label files are (:func:`read_label_image`): an indexed PNG gives its indices, a 1/2/4-bit
    grey PNG its values, a 3/4-channel image with equal channels is grey. DataError naming ``where`` for a
    colour or float image (a colour's first channel is not a class id), a JPEG (lossy: it blurs class ids
    at every edge) and data that cannot be decoded.
    """
    try:
        if hasattr(msg, "encoding"):
            stored = image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
            encoding = msg.encoding
        else:
            stored, encoding = _decode_compressed_label(msg.format, bytes(memoryview(msg.data)), where)
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {where}: {exc}") from None
    if not np.issubdtype(stored.dtype, np.integer):
        raise DataError(f"{where} is {encoding}: labels must be mono8 (or mono16) class ids")
    try:
        return label_from_array(np.asarray(stored), where)
    except DataError:
        raise DataError(f"{where} is {encoding} {stored.shape}, a colour image: its values are not class ids; "
                        "publish labels as mono8 class ids (0..K-1, 255 = ignore) or an indexed png "
                        "CompressedImage") from None


def _decode_compressed_label(fmt: str, data: bytes, where: str) -> tuple[np.ndarray, str]:
    kind = compressed_kind(fmt)
    if kind != "png":
        raise DataError(f"{where} is a {fmt!r} CompressedImage: a label must be lossless (png CompressedImage or "
                        "a mono8 Image); JPEG changes class ids along every edge")
    if data:  # a label is as large as its image: bombs are refused unread
        _, width, height = compressed_size(data)
        check_pixels(width, height, DEFAULT_MAX_PIXELS, where)
    header = png_header(data[:26])
    if header is not None and header[1] == _PNG_INDEXED:
        return _read_indexed_png(io.BytesIO(data), where), "indexed png"
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if stored is None:
        raise DataError(f"cannot decode {where} ({fmt!r}, {len(data)} bytes): corrupt or truncated data")
    return unscale_low_bit_grey(stored, header), "png"


def check_class_names(names: Sequence[Any], source: str) -> None:
    """ValueError naming ``source`` and the repeated names with their class ids, if any name is given twice, or a name
    is not text (a number is taken as text; a list or mapping is a misplaced YAML level).

    Two classes of one name cannot be told apart in a report, a ClassMap or a class-name lookup; it is
    almost always a copy-and-paste slip in a classes list.
    """
    for i, name in enumerate(names):  # a list or mapping where a name belongs is a misplaced YAML level
        if not isinstance(name, (str, int, float)):
            raise ValueError(f"{source}: class names must be text, but id {i} is a {type(name).__name__} "
                             f"({len(name) if hasattr(name, '__len__') else 1} items): one name per list entry")
    first: dict[str, int] = {}
    repeated = []
    for i, name in enumerate(str(n) for n in names):
        if name in first:
            repeated.append(f"{name!r} (ids {first[name]} and {i})")
        first.setdefault(name, i)
    if repeated:
        raise ValueError(f"{source}: class names must differ; repeated: {', '.join(repeated)}")


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
