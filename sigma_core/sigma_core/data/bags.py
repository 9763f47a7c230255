"""Reading and writing bags without ROS, through the ``rosbags`` library.

Supported: rosbag2 folders (sqlite3 or MCAP storage) and ROS 1 ``.bag`` files.
Messages are ``rosbags`` dataclasses; images become numpy arrays through
:mod:`sigma_core.data.image_encoding`, the same conversion the node uses.
"""
from __future__ import annotations

import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .bag_decompression import bound_chunk_decompression
from .errors import DataError
from .image_encoding import DEFAULT_MAX_PIXELS, array_to_image_fields, decode_compressed, image_to_array

STORAGES = ("sqlite3", "mcap", "ros1")
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class BagError(DataError):
    """A bag cannot be opened or lacks what was asked for; the message says what and what to do."""


def _typestore(ros1: bool):
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_KILTED)


def resolve_bag_path(path: str | os.PathLike) -> Path:
    """A rosbag2 folder, a file inside one (``x.db3``/``x.mcap``, then its folder), or a ROS 1 ``.bag``."""
    p = Path(path)
    if not p.exists():
        raise BagError(f"bag not found: {p}")
    if p.is_file() and p.suffix in (".db3", ".mcap") and (p.parent / "metadata.yaml").exists():
        return p.parent
    if p.is_dir() and not (p / "metadata.yaml").exists():
        raise BagError(f"{p} is a folder without metadata.yaml: not a rosbag2 bag (pass the bag folder or a .bag file)")
    if p.is_file() and p.suffix != ".bag":
        raise BagError(f"{p}: expected a rosbag2 folder (with metadata.yaml) or a ROS 1 .bag file")
    return p


_CORRUPT_HINT = ("the file is corrupt or truncated (an interrupted recording or copy): copy it again, or repair it "
                 "(`ros2 bag reindex` for rosbag2, `mcap recover` for MCAP, `rosbag reindex` for ROS 1)")


@contextmanager
def open_bag(path: str | os.PathLike) -> Iterator[Any]:
    """``with open_bag(path) as reader:`` an opened ``rosbags.highlevel.AnyReader``, closed on exit."""
    from rosbags.highlevel import AnyReader

    bound_chunk_decompression()
    p = resolve_bag_path(path)
    reader = AnyReader([p], default_typestore=_typestore(ros1=False))
    try:
        reader.open()
    except Exception as exc:  # rosbags raises several reader-specific error types
        raise BagError(f"cannot read bag {p}: {exc}; {_CORRUPT_HINT}") from exc
    try:
        yield reader
    finally:
        reader.close()


class ShortReadError(BagError):
    """A bag yielded fewer messages on a topic than its index declares (a damaged file read only in part)."""


def _whole_bag(reader, start: Optional[int], stop: Optional[int]) -> bool:
    return (start is None or start <= reader.start_time) and (stop is None or stop > reader.end_time)


def check_message_counts(connections, read: Counter, where: str, partial: Optional[list[str]] = None) -> None:
    """Compare the messages read per topic with the counts the bag declares for ``connections``.

    The declared counts are what rosbags reports per connection: rosbag2's metadata.yaml, MCAP's summary,
    ROS 1's index. A shortfall raises ShortReadError naming each topic with both counts, or, when
    ``partial`` is a list, is appended to it as a warning (the caller prints it).
    """
    declared: Counter = Counter()
    got: Counter = Counter()
    for c in connections:
        declared[c.topic] += c.msgcount
        got[c.topic] += read[id(c)]
    short = [f"{t}: {got[t]} of {declared[t]}" for t in sorted(declared) if got[t] < declared[t]]
    if not short:
        return
    message = (f"{where} holds fewer messages than its index declares ({'; '.join(short)} read): "
               f"{_CORRUPT_HINT}")
    if partial is None:
        raise ShortReadError(message + "; or accept what can be read with --allow-partial")
    partial.append(message)


def read_raw_messages(reader, connections, bag: str | os.PathLike = "", partial: Optional[list[str]] = None,
                      **kwargs) -> Iterator[tuple[Any, int, Any]]:
    """``reader.messages(connections=..., **kwargs)`` (``(connection, log time ns, raw bytes)`` in bag order,
    ``start``/``stop`` in ns), with BagError naming the bag instead of the storage library's own exceptions
    (ReaderError, struct.error, OverflowError ... of a corrupt or truncated file).

    Read to its end over the whole bag, the messages of each topic are counted against the count the bag
    declares (:func:`check_message_counts`): a damaged file can end a read early without any exception,
    which is a ShortReadError (or, with ``partial`` a list, a warning appended to it).
    """
    where = f"bag {bag}" if bag else "the bag"
    conn = None
    read: Counter = Counter()
    it = iter(reader.messages(connections=connections, **kwargs))
    while True:
        try:
            conn, log_ns, raw = next(it)
        except StopIteration:
            if _whole_bag(reader, kwargs.get("start"), kwargs.get("stop")):
                check_message_counts(connections, read, where, partial)
            return
        except Exception as exc:  # rosbags' readers raise ReaderError, struct.error, OverflowError, ...
            after = f" after a message on {conn.topic}" if conn is not None else ""
            raise BagError(f"cannot read {where}{after}: {type(exc).__name__}: {exc}; {_CORRUPT_HINT}") from exc
        read[id(conn)] += 1
        yield conn, log_ns, raw


def read_messages(reader, connections, bag: str | os.PathLike = "",
                  partial: Optional[list[str]] = None) -> Iterator[tuple[Any, int, Any]]:
    """``(connection, log time ns, deserialized message)`` of ``connections`` in bag order; BagError naming the
    bag and the topic for data that cannot be read (see :func:`read_raw_messages`, also for ``partial``) or
    deserialized."""
    where = f"bag {bag}" if bag else "the bag"
    for conn, log_ns, raw in read_raw_messages(reader, connections, bag, partial):
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as exc:
            raise BagError(f"cannot deserialize a {conn.msgtype} message on {conn.topic} in {where}: "
                           f"{type(exc).__name__}: {exc}; {_CORRUPT_HINT}") from exc
        yield conn, log_ns, msg


def resolve_topic(reader, topic: str) -> Optional[str]:
    """The bag's spelling of ``topic``: ROS 1 bags may name topics without the leading slash ROS 2 shows
    ("raspicam_node/image" for "/raspicam_node/image"); None if the bag has no such topic."""
    names = {c.topic for c in reader.connections}
    if topic in names:
        return topic
    bare = topic.lstrip("/")
    matches = [t for t in names if t.lstrip("/") == bare]
    return matches[0] if len(matches) == 1 else None


def bag_topics(reader) -> dict[str, str]:
    """topic -> message type of every connection in an opened reader."""
    return {c.topic: c.msgtype for c in reader.connections}


def describe_topics(reader) -> str:
    """One line per topic 'name (type, N msgs)', for error messages."""
    counts: dict[str, int] = {}
    for c in reader.connections:
        counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
    return ", ".join(f"{t} ({m}, {counts[t]} msgs)" for t, m in sorted(bag_topics(reader).items()))


def stamp_ns(msg: Any) -> int:
    """header.stamp of a message, in integer nanoseconds."""
    st = msg.header.stamp
    return int(st.sec) * 1_000_000_000 + int(st.nanosec)


def message_to_array(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """A sensor_msgs Image or CompressedImage (rosbags or rclpy) -> (array, encoding of the array).

    ImageTooLargeError (a ValueError) when the size the message declares exceeds ``max_pixels``, checked
    before decoding.
    """
    if hasattr(msg, "encoding"):
        arr = image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                             max_pixels)
        return arr, msg.encoding
    if hasattr(msg, "format"):
        return decode_compressed(msg.format, msg.data, max_pixels)
    raise BagError(f"message of type {getattr(msg, '__msgtype__', type(msg).__name__)} is not an image")


class BagWriter:
    """Write a rosbag2 (``sqlite3``/``mcap``) folder or a ROS 1 ``.bag`` file.

    >>> with BagWriter(path, "mcap") as bag:
    ...     bag.write("/camera/image", log_ns, bag.image(stamp_ns, "cam", rgb, "rgb8"))
    """

    def __init__(self, path: str | os.PathLike, storage: str = "sqlite3", version: int = 9):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        self.storage = storage
        self.ros1 = storage == "ros1"
        self.typestore = _typestore(self.ros1)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; bag writers never overwrite")
        if self.ros1:
            from rosbags.rosbag1 import Writer as Writer1

            self._writer = Writer1(self.path)
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer

            plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
            self._writer = Writer(self.path, version=version, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}
        self._seq = 0

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def write(self, topic: str, log_ns: int, msg: Any) -> None:
        """Append ``msg`` on ``topic`` with receive time ``log_ns``; the topic is created on first use."""
        msgtype = msg.__msgtype__
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = conn
        if self.ros1:
            data = self.typestore.serialize_ros1(msg, msgtype)
        else:
            data = self.typestore.serialize_cdr(msg, msgtype)
        self._writer.write(conn, int(log_ns), data)

    def header(self, stamp: int, frame_id: str):
        t = self.typestore.types
        time = t["builtin_interfaces/msg/Time"](sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)
        if self.ros1:
            self._seq += 1
            return t["std_msgs/msg/Header"](seq=self._seq, stamp=time, frame_id=frame_id)
        return t["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def image(self, stamp: int, frame_id: str, arr: np.ndarray, encoding: str):
        """sensor_msgs/Image from an array (see image_encoding for shapes and dtypes)."""
        h, w, step, data = array_to_image_fields(arr, encoding)
        return self.typestore.types["sensor_msgs/msg/Image"](
            header=self.header(stamp, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
            data=np.array(data, dtype=np.uint8, copy=True),
        )

    def compressed_image(self, stamp: int, frame_id: str, fmt: str, data: bytes):
        return self.typestore.types["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp, frame_id), format=fmt, data=np.frombuffer(data, np.uint8).copy()
        )

    def camera_info(self, stamp: int, frame_id: str, height: int, width: int, k: list[float],
                    distortion: Optional[list[float]] = None):
        """sensor_msgs/CameraInfo of a pinhole camera (plumb_bob, zero distortion unless given)."""
        t = self.typestore.types
        k_arr = np.asarray(k, dtype=np.float64)
        p = np.array([k_arr[0], 0, k_arr[2], 0, 0, k_arr[4], k_arr[5], 0, 0, 0, 1, 0], np.float64)
        roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        d = np.asarray(distortion if distortion is not None else [0.0] * 5, np.float64)
        r = np.eye(3).reshape(-1)
        fields = {"D": d, "K": k_arr, "R": r, "P": p} if self.ros1 else {"d": d, "k": k_arr, "r": r, "p": p}
        return t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp, frame_id), height=height, width=width, distortion_model="plumb_bob",
            binning_x=0, binning_y=0, roi=roi, **fields,
        )
