"""sensor_msgs/Image and CompressedImage fields <-> numpy arrays, without ROS.

One place for the conversion, used by bag extraction (``rosbags`` messages)
and by the node (rclpy messages): both hand over plain fields
(encoding, height, width, step, data, is_bigendian), so neither cv_bridge nor
any ROS import is needed here.

Array conventions: single-channel encodings give ``(H, W)`` arrays, multi-channel
ones ``(H, W, C)``; dtypes are uint8 (``*8``), uint16 (``mono16``/``16UC1``) and
float32 (``32FC1``, metres for depth). Colour arrays keep the channel order of
their encoding (``bgr8`` stays BGR); use :func:`to_rgb8` to get RGB.

Every decoder checks the size an input declares (the Image fields, a PNG/JPEG/TIFF header, an
RVL header) against ``max_pixels`` before it allocates anything of that size, and raises
:class:`ImageTooLargeError` above it: a 1 MB PNG can declare 16000x16000 pixels (a decompression
bomb) and would otherwise take gigabytes to decode.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np

# pixels: the default limit of every decoder. 4096x4096 holds 4K UHD (3840x2160) and 12 MP (4000x3000)
# cameras; decoded as 4-channel 16-bit that is 128 MB, so a frame at the limit stays affordable.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageTooLargeError(ValueError):
    """An image declares more pixels than the decoder's limit; refused before anything of that size is allocated."""


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """ImageTooLargeError naming ``what``, its declared size and the limit if width x height > max_pixels."""
    pixels = int(width) * int(height)
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"{what} declares {int(width)}x{int(height)} = {pixels:,} pixels, above the limit of {max_pixels:,}: "
            "refused before decoding (a decompression bomb, a corrupt header, or a camera larger than the limit)")


@dataclass(frozen=True)
class EncodingSpec:
    dtype: np.dtype  # little-endian/native element type
    channels: int


ENCODINGS: dict[str, EncodingSpec] = {
    "rgb8": EncodingSpec(np.dtype(np.uint8), 3),
    "bgr8": EncodingSpec(np.dtype(np.uint8), 3),
    "8UC3": EncodingSpec(np.dtype(np.uint8), 3),  # channel order unknown; treated as BGR (OpenCV's habit)
    "rgba8": EncodingSpec(np.dtype(np.uint8), 4),
    "bgra8": EncodingSpec(np.dtype(np.uint8), 4),
    "mono8": EncodingSpec(np.dtype(np.uint8), 1),
    "8UC1": EncodingSpec(np.dtype(np.uint8), 1),
    "mono16": EncodingSpec(np.dtype(np.uint16), 1),
    "16UC1": EncodingSpec(np.dtype(np.uint16), 1),
    "32FC1": EncodingSpec(np.dtype(np.float32), 1),
}


def encoding_spec(encoding: str) -> EncodingSpec:
    """The dtype and channel count of a ROS image encoding; ValueError naming it if unsupported."""
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ValueError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}"
        ) from None


def _as_byte_array(data: Any) -> np.ndarray:
    """bytes / bytearray / memoryview / array.array / ndarray -> 1-D uint8 view without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype != np.uint8 else data.reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def image_to_array(
    encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Image message fields -> ``(H, W)`` or ``(H, W, C)`` array (see module docstring for dtypes).

    A zero-copy, read-only view of ``data`` where possible (little-endian data; row
    padding from ``step`` is skipped by striding, not copying). Big-endian 16-bit and
    float data are byte-swapped into a new native array. Raises ValueError naming the
    encoding, or the expected and actual byte counts for truncated data; ImageTooLargeError
    when height x width > max_pixels.
    """
    spec = encoding_spec(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ValueError(f"{encoding} image has empty size {width}x{height}")
    check_pixels(width, height, max_pixels, f"{encoding} Image")
    row_bytes = width * spec.channels * spec.dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f"{encoding} image {width}x{height}: step {step} is smaller than one row ({row_bytes} bytes)"
        )
    buf = _as_byte_array(data)
    need = step * (height - 1) + row_bytes  # the last row's padding may be absent
    if buf.size < need:
        raise ValueError(
            f"{encoding} image {width}x{height} (step {step}) needs {step * height} bytes, data has {buf.size}"
        )
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1), writeable=False)
    dtype = spec.dtype.newbyteorder(">") if (is_bigendian and spec.dtype.itemsize > 1) else spec.dtype
    arr = rows.view(dtype)  # (H, W*C) elements; allowed because the last axis is contiguous
    if arr.dtype.byteorder == ">":
        arr = arr.astype(spec.dtype)  # swap to native; copies
    return arr.reshape(height, width, spec.channels) if spec.channels > 1 else arr.reshape(height, width)


def array_to_image_fields(arr: np.ndarray, encoding: str) -> tuple[int, int, int, np.ndarray]:
    """Array -> ``(height, width, step, data)`` for an Image message (little-endian, no padding).

    ``data`` is a 1-D uint8 ndarray (bytes-like: ``bytes(data)``, ``memoryview(data)`` and
    ``array.array('B').frombytes(data)`` work; ``rosbags`` wants exactly this type). The
    array's shape and dtype must match the encoding: (H, W) or (H, W, 1) for 1 channel,
    (H, W, C) otherwise.
    """
    spec = encoding_spec(encoding)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1 and spec.channels == 1:
        arr = arr[..., 0]
    want_ndim = 2 if spec.channels == 1 else 3
    if arr.ndim != want_ndim or (want_ndim == 3 and arr.shape[2] != spec.channels):
        raise ValueError(
            f"{encoding} needs an array of shape (H, W{'' if spec.channels == 1 else f', {spec.channels}'}), "
            f"got {arr.shape}"
        )
    if arr.dtype.newbyteorder("=") != spec.dtype:
        raise ValueError(f"{encoding} needs dtype {spec.dtype}, got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=spec.dtype)  # also swaps a big-endian array to native order
    height, width = arr.shape[:2]
    return height, width, width * spec.channels * spec.dtype.itemsize, arr.reshape(-1).view(np.uint8)


def to_rgb8(arr: np.ndarray, encoding: str) -> np.ndarray:
    """A colour or mono8 image in ``encoding`` -> ``(H, W, 3)`` uint8 RGB (a view where possible).

    mono8/8UC1 are replicated to three channels; 16-bit and float encodings are not
    colour images and raise ValueError (scale them with ModalityScaling instead).
    """
    spec = encoding_spec(encoding)
    if spec.dtype != np.uint8:
        raise ValueError(f"cannot show {encoding} as RGB: it is not an 8-bit colour or mono encoding")
    arr = np.asarray(arr)
    if spec.channels == 1:
        mono = arr[..., 0] if arr.ndim == 3 else arr
        return np.repeat(mono[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != spec.channels:
        raise ValueError(f"{encoding} image must be (H, W, {spec.channels}), got {arr.shape}")
    if encoding == "rgb8":
        return arr
    if encoding == "rgba8":
        return arr[..., :3]
    return arr[..., 2::-1]  # bgr8, 8UC3, bgra8


# --- CompressedImage ---------------------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _format_parts(fmt: str) -> tuple[str, str]:
    """'rgb8; jpeg compressed bgr8' -> ('rgb8', 'jpeg'); 'png' -> ('', 'png')."""
    fmt = fmt.strip()
    original = ""
    if ";" in fmt:
        original, fmt = (p.strip() for p in fmt.split(";", 1))
    m = re.search(r"(jpeg|jpg|png|compresseddepth|tiff)", fmt.lower())
    kind = m.group(1) if m else fmt.lower()
    return original, {"jpg": "jpeg"}.get(kind, kind)


def jpeg_is_truncated(data: Any) -> bool:
    """Whether JPEG ``data`` (bytes-like or uint8 array) stops before its end-of-image marker.

    libjpeg only warns ("Premature end of JPEG file") and fills the missing rows grey, so ``cv2.imread``
    hands back a damaged image as if it were whole (``cv2.imdecode`` of this OpenCV build refuses it, but
    that is not documented behaviour). The main image's last scan (``FF DA``) must be followed by its end
    marker (``FF D9``; it cannot occur inside entropy-coded data); an EXIF thumbnail's own end marker comes
    before that scan, and bytes a camera appends after the end are allowed.
    """
    raw = _as_byte_array(data).tobytes()
    if raw[:2] != b"\xff\xd8":
        return False
    last_scan = raw.rfind(b"\xff\xda")
    return last_scan < 0 or raw.find(b"\xff\xd9", last_scan + 2) < 0


def compressed_kind(fmt: str) -> str:
    """The compression of a CompressedImage ``format``: "jpeg", "png", "tiff", "compresseddepth" or the format
    itself lower-cased ("rgb8; jpeg compressed bgr8" -> "jpeg")."""
    return _format_parts(fmt)[1]


def compressed_size(data: Any) -> tuple[str, int, int]:
    """(kind, width, height) that PNG, JPEG or TIFF ``data`` declares in its header, read without decoding.

    OpenCV decodes whatever its content is (PNG bytes under a "jpeg" format string too), so the kind
    comes from the bytes, not from the message's format. Raises ValueError for data that is none of
    these three (OpenCV would decode BMP, PPM, WebP, ... too: each with its own size header).
    """
    raw = _as_byte_array(data)[:1 << 16].tobytes()  # every size header sits in the first 64 KiB we accept
    if raw[:8] == _PNG_MAGIC:
        if raw[12:16] != b"IHDR" or len(raw) < 26:
            raise ValueError("PNG data does not start with its IHDR header: corrupt")
        width, height, depth, colour = struct.unpack(">IIBB", raw[16:26])
        _check_png_data(_as_byte_array(data), width, height, depth, colour)
        return "png", width, height
    if raw[:2] == b"\xff\xd8":
        scans = _as_byte_array(data).tobytes().count(b"\xff\xda")  # SOS; FF DA never occurs in entropy-coded data
        if scans > _JPEG_MAX_SCANS:
            raise ValueError(f"JPEG data holds {scans} scans, above the limit of {_JPEG_MAX_SCANS}: refused before "
                             "decoding (every progressive scan passes over the whole image: a few bytes each, "
                             "seconds in all; a hostile or corrupt file)")
        return ("jpeg", *_jpeg_size(raw))
    if raw[:4] in (b"II*\0", b"MM\0*"):  # writers (OpenCV, libtiff) put the directory after the image data
        return ("tiff", *_tiff_size(memoryview(np.ascontiguousarray(_as_byte_array(data)))))
    raise ValueError(f"data starting with {raw[:8]!r} is not PNG, JPEG or TIFF")


# A progressive JPEG's scans: libjpeg's default progression writes 10 for colour, 6 for grey.
# Each scan passes over every block (13 ms at 4096x4096 here): 500 repeated scans of 33 bytes took 6.5 s to decode.
_JPEG_MAX_SCANS = 100
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples a pixel


def _check_png_data(png: np.ndarray, width: int, height: int, depth: int, colour: int) -> None:
    """ValueError when the IDAT chunks hold more compressed data than the declared image can need.

    libpng inflates the whole zlib stream even past the image's end ("Too much image data"): a 0.4 MB PNG
    declaring 16x16 pixels inflated 400 MB of zeros for 2 s. Deflate never grows data by more than 0.1 %, so the
    image's filtered rows (a filter byte each, up to 7 more a row for Adam7 interlacing) bound it.
    """
    rows = height * (8 + (width * _PNG_CHANNELS.get(colour, 4) * max(depth, 1) + 7) // 8)
    bound = rows + rows // 1000 + (64 << 10)
    idat, at = 0, 8
    while at + 8 <= png.size:
        length, kind = struct.unpack_from(">I4s", png, at)
        if kind == b"IDAT":
            idat += length
            if idat > bound:
                raise ValueError(f"PNG data holds more than {idat:,} bytes of compressed image data, more than its "
                                 f"declared {width}x{height} pixels can need ({bound:,}): refused before decoding "
                                 "(a zlib bomb or a corrupt file)")
        elif kind == b"IEND":
            return
        at += 12 + length


_JPEG_FRAME_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn


def _jpeg_size(raw: bytes) -> tuple[int, int]:
    """(width, height) of the JPEG frame header (SOFn), walking the marker segments before the image data."""
    i = 2
    while i + 4 <= len(raw):
        if raw[i] != 0xFF:
            raise ValueError(f"JPEG data has no marker at byte {i}: corrupt")
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in _JPEG_FRAME_MARKERS and i + 9 <= len(raw):
            height, width = struct.unpack(">HH", raw[i + 5:i + 9])
            return width, height
        if marker in (0xDA, 0xD9):  # image data or the end before any frame header
            break
        i += 2 + int.from_bytes(raw[i + 2:i + 4], "big")
    raise ValueError("JPEG data has no frame header (SOF) in its first 64 KiB: corrupt or truncated")


_TIFF_MAX_BITS_PER_PIXEL = 32  # the widest pixel we use: bgra8 or 32FC1 depth (4 bytes)


def _tiff_size(raw: memoryview) -> tuple[int, int]:
    """(width, height) from the first image directory of a classic TIFF (tags 256 ImageWidth, 257 ImageLength).

    The pixel's width (tags 277 SamplesPerPixel x 258 BitsPerSample) is checked too: OpenCV decodes 4 samples of
    64-bit floats, 32 bytes a pixel, so a 0.4 MB TIFF within the pixel limit would still take gigabytes; more than
    32 bits a pixel (bgra8, 32FC1) is refused here, as it would be after decoding. So are tiles (tags 322 TileWidth,
    323 TileLength) larger than the image rounded up to 16 pixels: OpenCV allocates a whole tile first, so a 390-byte
    TIFF of 16x16 pixels in one 16384x16368 tile took 826 MB.
    """
    order = "<" if raw[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", raw[4:8])
        (count,) = struct.unpack(order + "H", raw[ifd:ifd + 2])
        tags = {}
        for n in range(count):
            tag, kind, values, value = struct.unpack(order + "HHII", raw[ifd + 2 + 12 * n:ifd + 14 + 12 * n])
            if tag in (256, 257, 258, 277, 322, 323):  # a SHORT value sits in the first two bytes of the value field
                at = ifd + 10 + 12 * n
                if tag == 258 and values > 2:  # one BitsPerSample per sample, stored at the offset given
                    at = value
                tags[tag] = value if kind == 4 and values == 1 else struct.unpack(order + "H", raw[at:at + 2])[0]
    except struct.error:
        raise ValueError("TIFF data ends inside its first image directory: corrupt or truncated") from None
    if 256 not in tags or 257 not in tags:
        raise ValueError("TIFF data names no image width/length in its first directory: corrupt")
    samples, bits = tags.get(277, 1), tags.get(258, 1)
    if samples * bits > _TIFF_MAX_BITS_PER_PIXEL:
        raise ValueError(f"TIFF data declares {samples} samples of {bits} bits a pixel: only 8-bit mono/colour and "
                         "16-bit or 32-bit float single-channel TIFFs are supported (refused before decoding)")
    width, height = tags[256], tags[257]
    if 322 in tags or 323 in tags:  # tiled: OpenCV allocates one whole tile (4 bytes a pixel) before decoding it
        tile_width, tile_height = tags.get(322, 0), tags.get(323, 0)
        if tile_width > _padded(width) or tile_height > _padded(height):
            raise ValueError(f"TIFF data declares {tile_width}x{tile_height} tiles for a {width}x{height} image: "
                             "tiles larger than the image (refused before decoding: OpenCV would allocate a whole "
                             "tile, up to 1 GB for a file of a few hundred bytes)")
    return width, height


def _padded(size: int) -> int:
    """``size`` rounded up to the 16-pixel multiple TIFF tiles are made of."""
    return (size + 15) // 16 * 16


def check_file_size(data: Any, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Check the size an image file's bytes declare (``what`` names the file), before OpenCV decodes it.

    PNG, JPEG and TIFF are read by :func:`compressed_size` (with its bomb checks); any other format OpenCV reads
    from files (BMP, WebP, PNM, GIF, JPEG 2000, ...) by Pillow, from its header alone. A format neither knows
    (EXR, Radiance HDR) is left to OpenCV's own limit (2^30 pixels). ImageTooLargeError above ``max_pixels``;
    ValueError for a PNG/JPEG/TIFF header that is corrupt.
    """
    buf = _as_byte_array(data)
    head = buf[:8].tobytes()
    if head == _PNG_MAGIC or head[:2] == b"\xff\xd8" or head[:4] in (b"II*\0", b"MM\0*"):
        _, width, height = compressed_size(buf)
    else:
        size = _pillow_size(buf, what)
        if size is None:
            return
        width, height = size
    check_pixels(width, height, max_pixels, what)


def _pillow_size(buf: np.ndarray, what: str) -> Optional[tuple[int, int]]:
    """(width, height) Pillow reads from an image's header without decoding it; None for a format it lacks."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked by the caller
            with Image.open(io.BytesIO(buf.tobytes())) as img:  # lazy: reads the header only
                return img.size
    except Image.DecompressionBombError as err:  # Pillow's own limit, far above ours: refused all the same
        raise ImageTooLargeError(f"{what}: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def check_compressed_size(fmt: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Check the size a CompressedImage declares, from its headers alone (microseconds, nothing decoded).

    ImageTooLargeError above ``max_pixels``; ValueError for an unsupported format, no data, or headers
    that are not PNG/JPEG/TIFF (compressedDepth: the RVL size header or the PNG after the 12-byte header).
    """
    buf = _as_byte_array(data)
    _, kind = _format_parts(fmt)
    what = f"CompressedImage ({fmt!r}, {buf.size:,} bytes)"
    if kind == "compresseddepth":
        head = buf[:1 << 16].tobytes()
        if re.search(r"compresseddepth\s+rvl", fmt.lower()):
            if len(head) < _DEPTH_HEADER + 8:
                raise ValueError(f"compressedDepth rvl data ({fmt!r}) is {len(head)} bytes: too short for its headers")
            cols, rows = struct.unpack("<II", head[_DEPTH_HEADER:_DEPTH_HEADER + 8])
            check_pixels(cols, rows, max_pixels, what)
            return
        start = head.find(_PNG_MAGIC)
        if start < 0:
            raise ValueError(f"compressedDepth data ({fmt!r}) holds no PNG")
        _, width, height = compressed_size(buf[start:])
        check_pixels(width, height, max_pixels, what)
        return
    if kind not in ("jpeg", "png", "tiff"):
        raise ValueError(f"unsupported CompressedImage format {fmt!r}: expected jpeg, png or compressedDepth")
    if not buf.size:  # OpenCV asserts on empty data
        raise ValueError(f"could not decode {what}: no data")
    try:
        _, width, height = compressed_size(buf)
    except ValueError as err:
        raise ValueError(f"could not decode {what}: {err}") from None
    check_pixels(width, height, max_pixels, what)


def decode_compressed(fmt: str, data: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """CompressedImage ``format`` and ``data`` -> (array, encoding of that array).

    JPEG/PNG decode with ``cv2.IMREAD_UNCHANGED``: colour comes back as ``bgr8`` or
    ``bgra8`` (OpenCV order), grey as ``mono8``, 16-bit PNG as ``mono16`` (``16UC1`` if
    the format says so). ``compressedDepth`` (image_transport's depth plugin: 12-byte
    header + PNG, or + RVL with ``compressedDepth rvl``) gives ``16UC1`` millimetres or
    ``32FC1`` metres (NaN where invalid). Raises ValueError saying what is wrong;
    ImageTooLargeError when the size the data declares exceeds ``max_pixels`` (checked first).
    """
    buf = _as_byte_array(data)
    check_compressed_size(fmt, buf, max_pixels)
    original, kind = _format_parts(fmt)
    if kind == "compresseddepth":
        return _decode_compressed_depth(original or "16UC1", buf, fmt, max_pixels)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"could not decode CompressedImage ({fmt!r}, {buf.size} bytes): corrupt or truncated data")
    return img, _encoding_of_decoded(img, original)


def _encoding_of_decoded(img: np.ndarray, original: str) -> str:
    if img.ndim == 3 and img.dtype != np.uint8:  # a 16-bit colour PNG/TIFF (rgb16 cameras): no 8-bit encoding fits
        raise ValueError(f"decoded CompressedImage is {img.dtype} colour ({img.shape[2]} channels, format "
                         f"{original or 'unknown'}): only 8-bit colour is supported; publish rgb8/bgr8")
    if img.ndim == 3 and img.shape[2] == 3:
        return "bgr8"
    if img.ndim == 3 and img.shape[2] == 4:
        return "bgra8"
    if img.dtype == np.uint16:
        return "16UC1" if original == "16UC1" else "mono16"
    if img.dtype == np.uint8:
        return "8UC1" if original == "8UC1" else "mono8"
    if img.dtype == np.float32:
        return "32FC1"
    raise ValueError(f"decoded CompressedImage has unsupported shape/dtype {img.shape} {img.dtype}")


_DEPTH_HEADER = 12  # image_transport's ConfigHeader: int32 format, float32 quant_a, float32 quant_b


def _decode_compressed_depth(original: str, buf: np.ndarray, fmt: str, max_pixels: int) -> tuple[np.ndarray, str]:
    raw = buf.tobytes()
    if re.search(r"compresseddepth\s+rvl", fmt.lower()):
        if len(raw) < _DEPTH_HEADER + 8:
            raise ValueError(f"compressedDepth rvl data ({fmt!r}) is {len(raw)} bytes: too short for its headers")
        from .rvl import decode_rvl  # compiles its kernel on first use: only when an RVL image comes

        start = _DEPTH_HEADER
        img = decode_rvl(raw[_DEPTH_HEADER:], max_pixels)
    else:
        start = raw.find(_PNG_MAGIC)
        if start < 0:
            raise ValueError(f"compressedDepth data ({fmt!r}) holds no PNG")
        img = cv2.imdecode(np.frombuffer(raw, np.uint8, offset=start), cv2.IMREAD_UNCHANGED)
        if img is None or img.dtype != np.uint16:
            raise ValueError(f"could not decode the 16-bit PNG in compressedDepth data ({fmt!r})")
    if original != "32FC1":
        return img, "16UC1"
    if start < _DEPTH_HEADER:
        raise ValueError(f"compressedDepth 32FC1 data ({fmt!r}) lacks its 12-byte quantisation header")
    # image_transport stores inverse depth: value = quant_a / depth + quant_b.
    _, quant_a, quant_b = struct.unpack("<iff", raw[:12])
    values = img.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(img > 0, quant_a / (values - quant_b), np.nan).astype(np.float32)
    return depth, "32FC1"


def encode_compressed(arr: np.ndarray, encoding: str, fmt: str = "png", jpeg_quality: int = 95) -> tuple[str, bytes]:
    """Array in ``encoding`` -> (CompressedImage ``format`` string, ``data`` bytes).

    ``fmt`` is ``png`` (lossless; 16-bit mono stays 16-bit) or ``jpeg`` (8-bit only).
    The format string follows image_transport: ``"<encoding>; <fmt> compressed <stored>"``.
    """
    spec = encoding_spec(encoding)
    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"compression format must be png or jpeg, got {fmt!r}")
    if spec.dtype == np.float32:
        raise ValueError(f"{encoding} cannot be stored as {fmt}; store float depth uncompressed")
    if fmt == "jpeg" and spec.dtype != np.uint8:
        raise ValueError(f"{encoding} is 16-bit: JPEG cannot hold it, use png")
    arr = np.asarray(arr)
    if spec.channels == 1:
        stored, img = ("mono16" if spec.dtype == np.uint16 else "mono8"), arr
    else:
        stored = "bgra8" if spec.channels == 4 else "bgr8"
        if encoding in ("rgb8", "rgba8"):
            code = cv2.COLOR_RGB2BGR if spec.channels == 3 else cv2.COLOR_RGBA2BGRA
            img = cv2.cvtColor(np.ascontiguousarray(arr), code)
        else:
            img = arr
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, out = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", np.ascontiguousarray(img), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {encoding} image of shape {arr.shape} as {fmt}")
    return f"{encoding}; {fmt} compressed {stored}", out.tobytes()
