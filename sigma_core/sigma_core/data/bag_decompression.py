"""Compressed bag chunks are inflated with a bound, so a few kilobytes of a bag cannot claim gigabytes.

``rosbags`` inflates each ROS 1 chunk (bz2, lz4) and each MCAP chunk (lz4, zstd) whole, with no limit: a 6.9 KB
ROS 1 bag whose bz2 chunk inflates to 1.5 GB of zeros took ``sigma-extract`` to 3.4 GB. Recorders close a chunk
once it passes a few MB (ROS 1: 768 KB by default, MCAP: 1 MB), so a real chunk holds that plus at most one
message, and our largest message (4096x4096 pixels of 4 bytes) is 64 MB. :func:`bound_chunk_decompression`
swaps the decompressors ``rosbags`` looks up for ones that stop past :data:`MAX_CHUNK_BYTES` (and, for MCAP,
past the size the chunk declares) with :class:`ChunkTooLargeError`; the reading helpers of
:mod:`sigma_core.data.bags` turn it into a BagError naming the bag.
"""
from __future__ import annotations

import bz2
from typing import Callable

MAX_CHUNK_BYTES = 256 << 20  # bytes a chunk may inflate to: 4 of the largest messages we accept


class ChunkTooLargeError(ValueError):
    """A compressed bag chunk inflates past its declared size or MAX_CHUNK_BYTES (a bomb or a damaged file)."""


def _decompressor_factories() -> dict[str, Callable]:
    import lz4.frame

    factories: dict[str, Callable] = {"bz2": bz2.BZ2Decompressor, "lz4": lz4.frame.LZ4FrameDecompressor}
    try:
        from compression import zstd  # Python 3.14
    except ImportError:
        try:
            from backports import zstd  # what rosbags uses before 3.14
        except ImportError:
            return factories
    factories["zstd"] = zstd.ZstdDecompressor
    return factories


def inflate(kind: str, data: bytes, limit: int = MAX_CHUNK_BYTES) -> bytes:
    """``data`` (one or more concatenated ``kind`` streams: bz2, lz4 frames, zstd frames) inflated, at most ``limit``
    bytes of it. ChunkTooLargeError past the limit; EOFError for a stream cut short."""
    make = _decompressor_factories()[kind]
    parts, total, rest = [], 0, data
    while rest:
        stream = make()
        part = stream.decompress(rest, max_length=limit - total + 1)
        total += len(part)
        if total > limit:
            raise ChunkTooLargeError(f"a {kind} chunk of {len(data):,} bytes inflates past {limit:,} bytes: refused "
                                     "(a decompression bomb or a damaged file; recorders write chunks of a few MB)")
        parts.append(part)
        if not stream.eof:
            raise EOFError(f"a {kind} chunk of {len(data):,} bytes ends inside its compressed stream: truncated")
        rest = stream.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)  # one stream, the usual case: no copy


def _mcap_inflate(kind: str) -> Callable[[bytes, int], bytes]:
    def decompress(data: bytes, size: int) -> bytes:
        if size > MAX_CHUNK_BYTES:
            raise ChunkTooLargeError(f"an MCAP {kind} chunk declares {size:,} bytes, above {MAX_CHUNK_BYTES:,}: "
                                     "refused before inflating it (a decompression bomb or a damaged file)")
        return inflate(kind, data, size)  # rosbags then checks the length against the declared size

    return decompress


def _ros1_inflate(kind: str) -> Callable[[bytes], bytes]:
    return lambda data: inflate(kind, data)


def bound_chunk_decompression() -> None:
    """Make ``rosbags`` inflate ROS 1 and MCAP chunks through :func:`inflate` (idempotent; before a reader opens:
    a ROS 1 reader keeps the function it found at open)."""
    from rosbags.rosbag1 import reader as ros1_reader
    from rosbags.rosbag2 import storage_mcap

    for kind in ("bz2", "lz4"):
        if kind in ros1_reader.decompressors:
            ros1_reader.decompressors[kind] = _ros1_inflate(kind)
    for kind in ("lz4", "zstd"):
        if kind in storage_mcap.DECOMPRESSORS:
            storage_mcap.DECOMPRESSORS[kind] = _mcap_inflate(kind)
