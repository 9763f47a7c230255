"""A plain RVL encoder for tests, written from the algorithm's description (A. D. Wilson, "Fast Lossless Depth
Image Compression", ISS 2017) and image_transport's compressedDepth layout; the decoder under test is separate."""
import struct

import numpy as np


def rvl_encode(depth: np.ndarray) -> bytes:
    """(H, W) uint16 -> uint32 cols, uint32 rows, then RVL words (4-bit codes, the first in each word's top bits)."""
    words: list[int] = []
    word, nibbles = 0, 0

    def code(value: int) -> None:
        nonlocal word, nibbles
        while True:
            nibble = value & 0x7
            value >>= 3
            if value:
                nibble |= 0x8
            word = ((word << 4) | nibble) & 0xFFFFFFFF
            nibbles += 1
            if nibbles == 8:
                words.append(word)
                word, nibbles = 0, 0
            if not value:
                return

    flat = [int(v) for v in depth.reshape(-1)]
    i, previous = 0, 0
    while i < len(flat):
        start = i
        while i < len(flat) and flat[i] == 0:
            i += 1
        code(i - start)
        start = i
        while i < len(flat) and flat[i] != 0:
            i += 1
        code(i - start)
        for v in flat[start:i]:
            delta = v - previous
            code(((delta << 1) ^ (delta >> 31)) & 0xFFFFFFFF)
            previous = v
    if nibbles:
        words.append((word << 4 * (8 - nibbles)) & 0xFFFFFFFF)
    return struct.pack("<II", depth.shape[1], depth.shape[0]) + np.asarray(words, "<u4").tobytes()


def compressed_depth_rvl(depth: np.ndarray, quant_a: float = 0.0, quant_b: float = 0.0) -> bytes:
    """CompressedImage data of image_transport's compressedDepth plugin in rvl mode: 12-byte header + RVL."""
    return struct.pack("<iff", 0, quant_a, quant_b) + rvl_encode(depth)
