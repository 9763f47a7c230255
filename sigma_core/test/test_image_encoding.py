import array
import struct

import cv2
import numpy as np
import pytest

from sigma_core.data.image_encoding import (
    ENCODINGS,
    array_to_image_fields,
    decode_compressed,
    encode_compressed,
    image_to_array,
    to_rgb8,
)


def _sample(encoding: str, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    spec = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (h, w) if spec.channels == 1 else (h, w, spec.channels)
    if spec.dtype == np.float32:
        return rng.uniform(0.1, 20.0, shape).astype(np.float32)
    return rng.integers(0, np.iinfo(spec.dtype).max, shape, endpoint=True).astype(spec.dtype)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_every_encoding(encoding):
    arr = _sample(encoding)
    h, w, step, data = array_to_image_fields(arr, encoding)
    assert (h, w) == arr.shape[:2]
    assert step == w * ENCODINGS[encoding].channels * arr.dtype.itemsize
    assert data.dtype == np.uint8 and data.ndim == 1 and data.size == step * h
    # as it arrives from rclpy (array.array) and from rosbags (ndarray) and as raw bytes
    a = array.array("B")
    a.frombytes(data)
    for payload in (data, a, bytes(data)):
        back = image_to_array(encoding, h, w, step, payload)
        assert back.dtype == ENCODINGS[encoding].dtype
        np.testing.assert_array_equal(back, arr)


def test_zero_copy_view_of_message_data():
    arr = _sample("rgb8")
    h, w, step, data = array_to_image_fields(arr, "rgb8")
    back = image_to_array("rgb8", h, w, step, data)
    assert np.shares_memory(back, data)
    assert not back.flags.writeable  # a view of a message must not be scribbled on


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "mono16", "32FC1", "bgra8"])
def test_row_padding_from_step_is_skipped(encoding):
    arr = _sample(encoding, h=4, w=3)
    h, w, step, data = array_to_image_fields(arr, encoding)
    pad = 5  # odd padding: rows of 16-bit/float data start unaligned
    padded = np.zeros((h, step + pad), np.uint8)
    padded[:, :step] = data.reshape(h, step)
    padded[:, step:] = 0xAB
    back = image_to_array(encoding, h, w, step + pad, padded.reshape(-1))
    np.testing.assert_array_equal(back, arr)
    # the last row's padding may be missing (some drivers send exactly step*(h-1)+row bytes)
    back = image_to_array(encoding, h, w, step + pad, padded.reshape(-1)[:-pad])
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
def test_big_endian_is_swapped(encoding):
    arr = _sample(encoding)
    big = arr.astype(arr.dtype.newbyteorder(">"))
    data = big.tobytes()
    back = image_to_array(encoding, arr.shape[0], arr.shape[1], arr.shape[1] * arr.itemsize, data, is_bigendian=True)
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, arr)
    # and read as little-endian it would be wrong: the flag matters
    wrong = image_to_array(encoding, arr.shape[0], arr.shape[1], arr.shape[1] * arr.itemsize, data)
    assert not np.array_equal(wrong, arr)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="'yuv422'"):
        image_to_array("yuv422", 2, 2, 4, bytes(8))
    with pytest.raises(ValueError, match="needs 48 bytes, data has 40"):
        image_to_array("rgb8", 4, 4, 12, bytes(40))
    with pytest.raises(ValueError, match="step 5 is smaller than one row"):
        image_to_array("mono16", 2, 3, 5, bytes(12))
    with pytest.raises(ValueError, match="dtype uint16"):
        array_to_image_fields(np.zeros((2, 2), np.uint8), "mono16")
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        array_to_image_fields(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="not an 8-bit colour"):
        to_rgb8(np.zeros((2, 2), np.uint16), "mono16")


def test_to_rgb8_orders_channels():
    rgb = _sample("rgb8")
    bgr = rgb[..., ::-1].copy()
    np.testing.assert_array_equal(to_rgb8(rgb, "rgb8"), rgb)
    np.testing.assert_array_equal(to_rgb8(bgr, "bgr8"), rgb)
    np.testing.assert_array_equal(to_rgb8(bgr, "8UC3"), rgb)
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([rgb, alpha], 2), "rgba8"), rgb)
    np.testing.assert_array_equal(to_rgb8(np.concatenate([bgr, alpha], 2), "bgra8"), rgb)
    mono = _sample("mono8")
    out = to_rgb8(mono, "mono8")
    assert out.shape == mono.shape + (3,)
    assert all(np.array_equal(out[..., c], mono) for c in range(3))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8", "mono16", "16UC1"])
def test_png_compression_is_lossless(encoding):
    arr = _sample(encoding, h=9, w=11)
    fmt, data = encode_compressed(arr, encoding, "png")
    assert fmt.startswith(f"{encoding}; png compressed")
    img, enc = decode_compressed(fmt, data)
    if ENCODINGS[encoding].channels == 3:
        assert enc == "bgr8"
        np.testing.assert_array_equal(to_rgb8(img, enc), to_rgb8(arr, encoding))
    else:
        assert img.dtype == arr.dtype
        assert enc == encoding
        np.testing.assert_array_equal(img, arr)


def test_jpeg_decodes_close_and_rejects_16_bit():
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.stack([xx * 5, yy * 7, (xx + yy) * 2], -1).astype(np.uint8)  # smooth: JPEG stays close
    fmt, data = encode_compressed(rgb, "rgb8", "jpeg", jpeg_quality=98)
    img, enc = decode_compressed(fmt, data)
    assert enc == "bgr8"
    assert np.abs(to_rgb8(img, enc).astype(int) - rgb).mean() < 3
    # a bare "jpeg" format string, as some drivers send, also decodes
    assert decode_compressed("jpeg", data)[0].shape == rgb.shape
    with pytest.raises(ValueError, match="JPEG cannot hold"):
        encode_compressed(np.zeros((4, 4), np.uint16), "mono16", "jpeg")


def test_compressed_errors():
    with pytest.raises(ValueError, match="could not decode"):
        decode_compressed("png", b"\x89PNG\r\n\x1a\n garbage")
    for fmt in ("jpeg", "png", "rgb8; jpeg compressed bgr8"):  # an empty message, as a glitching driver sends
        with pytest.raises(ValueError, match=r"could not decode CompressedImage .*0 bytes"):
            decode_compressed(fmt, b"")
    with pytest.raises(ValueError, match="unsupported CompressedImage format 'webp'"):
        decode_compressed("webp", b"x")


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_is_refused_not_passed_as_8bit(channels):
    """A 16-bit colour PNG decoded to uint16 labelled bgr8: to_rgb8 then gave RGB values up to 65535."""
    _, png = cv2.imencode(".png", np.full((4, 5, channels), 40000, np.uint16))
    with pytest.raises(ValueError, match="uint16 colour .* only 8-bit colour is supported"):
        decode_compressed("rgb16; png compressed bgr16", png.tobytes())


def test_compressed_depth_plugin_layout():
    depth_mm = _sample("16UC1", h=6, w=8)
    ok, png = cv2.imencode(".png", depth_mm)
    header = struct.pack("<iff", 0, 0.0, 0.0)
    img, enc = decode_compressed("16UC1; compressedDepth png", header + png.tobytes())
    assert enc == "16UC1"
    np.testing.assert_array_equal(img, depth_mm)
    # 32FC1: inverse depth quantised as value = a / depth + b, 0 = invalid
    a, b = 1000.0, -10.0
    metres = np.array([[0.5, 2.0], [4.0, 8.0]], np.float32)
    q = np.round(a / metres + b).astype(np.uint16)
    q[1, 1] = 0
    ok, png = cv2.imencode(".png", q)
    img, enc = decode_compressed("32FC1; compressedDepth png", struct.pack("<iff", 0, a, b) + png.tobytes())
    assert enc == "32FC1"
    np.testing.assert_allclose(img[:1], metres[:1], rtol=1e-3)
    assert np.isnan(img[1, 1])


def test_compressed_depth_rvl_is_decoded_exactly():
    from rvl_reference import compressed_depth_rvl

    rng = np.random.default_rng(7)
    depth = rng.integers(300, 9000, (30, 40)).astype(np.uint16)
    depth[rng.random(depth.shape) < 0.2] = 0  # holes: zero runs
    depth[:3] = 0
    depth[-1, -5:] = 0  # ends on a zero run
    depth[10, :] = [65535, 1] * 20  # the largest deltas, both signs
    img, enc = decode_compressed("16UC1; compressedDepth rvl", compressed_depth_rvl(depth))
    assert enc == "16UC1" and img.dtype == np.uint16
    np.testing.assert_array_equal(img, depth)
    # 32FC1: the same inverse-depth quantisation as the png mode
    a, b = 1000.0, -10.0
    metres = np.array([[0.5, 2.0], [4.0, 8.0]], np.float32)
    q = np.round(a / metres + b).astype(np.uint16)
    q[1, 1] = 0
    img, enc = decode_compressed("32FC1; compressedDepth rvl", compressed_depth_rvl(q, a, b))
    assert enc == "32FC1"
    np.testing.assert_allclose(img[:1], metres[:1], rtol=1e-3)
    assert np.isnan(img[1, 1])


def test_corrupt_rvl_data_is_a_clear_error():
    from rvl_reference import compressed_depth_rvl

    data = compressed_depth_rvl(np.arange(1, 201, dtype=np.uint16).reshape(10, 20))
    with pytest.raises(ValueError, match="truncated"):
        decode_compressed("16UC1; compressedDepth rvl", data[:40])
    with pytest.raises(ValueError, match="too short"):
        decode_compressed("16UC1; compressedDepth rvl", data[:14])
    bad_size = data[:12] + struct.pack("<II", 10, 30) + data[20:]  # 300 pixels announced, 200 coded
    with pytest.raises(ValueError, match="RVL data"):
        decode_compressed("16UC1; compressedDepth rvl", bad_size)


def _rvl_zeros(cols: int, rows: int) -> bytes:
    """An RVL payload coding cols x rows zero pixels (one run), in a handful of bytes."""
    nibbles = []
    for value in (cols * rows, 0):  # the zero run, then no non-zeros
        while True:
            nibbles.append((value & 0x7) | (0x8 if value >> 3 else 0))
            value >>= 3
            if not value:
                break
    nibbles += [0] * (-len(nibbles) % 8)
    words = [int("".join(f"{n:x}" for n in nibbles[i:i + 8]), 16) for i in range(0, len(nibbles), 8)]
    return struct.pack("<II", cols, rows) + struct.pack(f"<{len(words)}I", *words)


def test_every_decoder_checks_the_declared_size_before_decoding():
    """Issue 21, fault 1: PNG, JPEG, TIFF (even under another format string), RVL, compressedDepth and raw Image
    fields declaring more pixels than the limit are refused from their headers, naming the size and the limit."""
    from sigma_core.data.image_encoding import ImageTooLargeError, image_to_array
    from sigma_core.data.rvl import decode_rvl

    small = np.zeros((40, 60), np.uint8)
    assert decode_rvl(_rvl_zeros(6, 4)).shape == (4, 6)  # the helper codes what it says
    cases = {"png": cv2.imencode(".png", small)[1].tobytes(), "jpeg": cv2.imencode(".jpg", small)[1].tobytes(),
             "tiff": cv2.imencode(".tiff", small)[1].tobytes()}
    for kind, data in cases.items():
        assert decode_compressed(kind, data)[0].shape == (40, 60)
        for fmt in (kind, "jpeg"):  # OpenCV decodes by content: the format string must not decide the check
            with pytest.raises(ImageTooLargeError, match=r"declares 60x40 = 2,400 pixels, above the limit of 2,000"):
                decode_compressed(fmt, data, max_pixels=2000)
    header = struct.pack("<iff", 0, 0.0, 0.0)
    with pytest.raises(ImageTooLargeError, match="16384x16384 = 268,435,456 pixels"):
        decode_compressed("16UC1; compressedDepth rvl", header + _rvl_zeros(16384, 16384))
    with pytest.raises(ImageTooLargeError, match="60x40"):
        decode_compressed("16UC1; compressedDepth png", header + cv2.imencode(".png", small.astype(np.uint16))[1]
                          .tobytes(), max_pixels=2000)
    with pytest.raises(ImageTooLargeError, match="20000x30000"):
        image_to_array("mono8", 30000, 20000, 20000, np.zeros(16, np.uint8))
    with pytest.raises(ValueError, match="not PNG, JPEG or TIFF"):  # OpenCV would decode a BMP, sized by its header
        decode_compressed("png", cv2.imencode(".bmp", small)[1].tobytes())


def test_jpeg_with_many_scans_and_tiff_with_wide_pixels_are_refused_before_decoding():
    """Issue 21 attack: bombs within the pixel limit. A progressive JPEG whose last scan is repeated 150 times
    (33 bytes each) decoded for seconds (500 repeats: 6.5 s for a 115 KB file at 4096x4096); a 0.4 MB TIFF of
    4 float32 samples a pixel took 514 MB (then was refused for its dtype)."""
    from sigma_core.data.image_encoding import check_compressed_size

    ok, buf = cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    raw = buf.tobytes()
    scans = raw.count(b"\xff\xda")
    assert ok and 1 < scans <= 100 and decode_compressed("jpeg", raw)[0].shape == (32, 32, 3)
    last, end = raw.rfind(b"\xff\xda"), raw.rfind(b"\xff\xd9")
    bomb = raw[:end] + raw[last:end] * 150 + raw[end:]
    with pytest.raises(ValueError, match=f"holds {scans + 150} scans, above the limit of 100"):
        decode_compressed("jpeg", bomb)
    with pytest.raises(ValueError, match="scans"):
        check_compressed_size("png", bomb)  # the content decides, not the format string

    depth = np.linspace(0.5, 9.0, 12 * 16, dtype=np.float32).reshape(12, 16)
    assert np.array_equal(decode_compressed("32FC1; tiff", cv2.imencode(".tiff", depth)[1])[0], depth)
    assert decode_compressed("tiff", cv2.imencode(".tiff", np.zeros((12, 16, 3), np.uint8))[1])[0].shape == (12, 16, 3)
    for wide in (np.zeros((12, 16, 4), np.float32), np.zeros((12, 16, 3), np.uint16)):
        with pytest.raises(ValueError, match="samples of (32|16) bits a pixel"):
            decode_compressed("tiff", cv2.imencode(".tiff", wide)[1])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_with_more_compressed_data_than_its_size_needs_is_refused_before_decoding():
    """Issue 21 attack: a 0.4 MB PNG declaring 16x16 grey pixels whose zlib stream goes on for 400 MB of zeros (in
    2000 IDAT chunks) took 2 s to decode (libpng inflates past the image's end). Refused from the chunk lengths:
    here 100 KB of compressed data in 1000 chunks for 16x16 pixels (the bound is the rows + 0.1 % + 64 KiB)."""
    import zlib

    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
    whole = head + _png_chunk(b"IDAT", zlib.compress(b"\0" * (16 * 17))) + _png_chunk(b"IEND", b"")
    assert decode_compressed("png", whole)[0].shape == (16, 16)
    bomb = head + _png_chunk(b"IDAT", zlib.compress(b"\0" * (16 * 17))[:-4]) + _png_chunk(b"IDAT", b"\0" * 100) * 1000
    bomb += _png_chunk(b"IEND", b"")
    header = struct.pack("<iff", 0, 0.0, 0.0)
    for fmt, data in (("png", bomb), ("16UC1; compressedDepth png", header + bomb)):
        with pytest.raises(ValueError, match="more than its declared 16x16 pixels can need"):
            decode_compressed(fmt, data)
    noise = np.random.default_rng(0).integers(0, 65535, (300, 500), endpoint=True).astype(np.uint16)
    stored = cv2.imencode(".png", noise, [cv2.IMWRITE_PNG_COMPRESSION, 0])[1]  # deflate's worst case: stored
    assert stored.size > 300 * 1001 and np.array_equal(decode_compressed("png", stored)[0], noise)


def _tiled_tiff(width: int, height: int, tile_width: int, tile_height: int) -> bytes:
    """A little-endian grey 8-bit TIFF of one tile (its bytes all zero), written tag by tag."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (277, 3, 1),
            (322, 4, tile_width), (323, 4, tile_height), (324, 4, 0), (325, 4, 256)]
    data_at = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        value = data_at if tag == 324 else value
        out += struct.pack("<HHIHH" if kind == 3 else "<HHII", tag, kind, 1, value, *((0,) if kind == 3 else ()))
    return out + b"\0\0\0\0" + b"\0" * 256


def test_tiff_with_tiles_larger_than_its_image_is_refused_before_decoding():
    """Issue 21 attack (second pass): a 390-byte TIFF of 16x16 pixels in one 16384x16368 tile took 826 MB (OpenCV
    allocates the whole tile before reading it, up to 1 GB). Tiles up to the image rounded up to 16 pixels pass."""
    from sigma_core.data.image_encoding import check_compressed_size

    check_compressed_size("tiff", _tiled_tiff(16, 16, 16, 16))
    check_compressed_size("tiff", _tiled_tiff(20, 20, 32, 32))
    for tile in ((16384, 16368), (32, 16), (16, 32)):
        with pytest.raises(ValueError, match=f"declares {tile[0]}x{tile[1]} tiles for a 16x16 image"):
            decode_compressed("tiff", _tiled_tiff(16, 16, *tile))


def _rvl_one_pixel_runs(cols: int, rows: int) -> bytes:
    """An RVL payload of cols x rows pixels alternating 0 and 1, 2, 3, ...: a one-pixel run each, 1.5 nibbles a
    pixel."""
    nibbles = np.tile(np.array([1, 1, 2], np.uint32), cols * rows // 2)  # 1 zero, 1 non-zero, delta +1 zig-zagged
    nibbles = np.concatenate([nibbles, np.zeros(-nibbles.size % 8, np.uint32)]).reshape(-1, 8)
    words = np.bitwise_or.reduce(nibbles << np.arange(28, -1, -4, dtype=np.uint32), axis=1)
    return struct.pack("<II", cols, rows) + words.astype("<u4").tobytes()


def test_rvl_of_one_pixel_runs_decodes_in_bounded_time():
    """Issue 21 attack (second pass): RVL's run walk was plain Python, a few microseconds a run: a 3 MB stream of
    2048x2048 one-pixel runs (within the pixel limit) took 13 s and 530 MB, 4096x4096 about a minute. Compiled, the
    same 1024x1024 image here decodes in well under a second once the kernel is compiled (warmed up first)."""
    import time

    from sigma_core.data.rvl import decode_rvl

    assert decode_rvl(_rvl_one_pixel_runs(4, 2)).tolist() == [[0, 1, 0, 2], [0, 3, 0, 4]]
    data = _rvl_one_pixel_runs(1024, 1024)
    start = time.perf_counter()
    img = decode_rvl(data)
    elapsed = time.perf_counter() - start
    want = np.zeros(1024 * 1024, np.uint16)
    want[1::2] = np.arange(1, 1024 * 512 + 1) & 0xFFFF  # 16-bit deltas wrap
    np.testing.assert_array_equal(img.reshape(-1), want)
    assert elapsed < 0.5, f"{elapsed:.2f} s for 1024x1024 one-pixel runs"


def test_a_tiff_whose_directory_follows_its_image_data_is_read():
    """Issue 21 attack (second pass): OpenCV and libtiff write the image directory after the pixels, but the size
    check read only the first 64 KiB: a 640x480 32FC1 depth TIFF (1.2 MB) was refused as 'corrupt', as message or
    file. The directory is read where its offset says."""
    depth = np.random.default_rng(3).random((480, 640), dtype=np.float32) * 10
    data = cv2.imencode(".tiff", depth)[1].tobytes()
    assert struct.unpack("<I", data[4:8])[0] > 1 << 16  # the directory lies beyond the first 64 KiB
    image, encoding = decode_compressed("32FC1; tiff", data)
    assert encoding == "32FC1" and np.array_equal(image, depth)
    for cut in (100, 4000):  # the strip tables (after the directory), then the directory itself
        with pytest.raises(ValueError, match="corrupt or truncated"):
            decode_compressed("32FC1; tiff", data[: len(data) - cut])
