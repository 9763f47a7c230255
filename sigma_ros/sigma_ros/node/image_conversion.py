"""sensor_msgs/Image <-> numpy for rclpy messages: a thin wrapper of sigma_core.data.image_encoding.

Reading is zero-copy (``np.frombuffer`` over ``msg.data``). Writing fills
``msg.data`` with ``array.array('B').frombytes(...)``: assigning an ndarray to
``msg.data`` makes rclpy check every element (about 600x slower for 640x480x3).
"""
from __future__ import annotations

import array
from typing import Optional

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sigma_core.data.image_encoding import DEFAULT_MAX_PIXELS, array_to_image_fields, image_to_array, to_rgb8

__all__ = [
    "image_msg_to_array",
    "image_msg_to_rgb8",
    "array_to_image_msg",
    "RGB_ENCODINGS",
    "MODAL_ENCODINGS",
    "DEPTH_ENCODINGS",
]

# What the node accepts on each input (sigma_core.data.image_encoding decodes more).
RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
MODAL_ENCODINGS = ("mono8", "mono16", "16UC1", "32FC1")
DEPTH_ENCODINGS = ("16UC1", "32FC1")  # millimetres / metres (REP 118)


def image_msg_to_array(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image message -> read-only ``(H, W)`` or ``(H, W, C)`` array viewing ``msg.data``.

    dtype follows the encoding (uint8, uint16 for mono16/16UC1, float32 for 32FC1).
    Keep ``msg`` alive while the view is used. Raises ValueError naming the encoding
    for unsupported encodings, and the byte counts for empty or truncated data; ImageTooLargeError when
    height x width > max_pixels.
    """
    return image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                          max_pixels)


def image_msg_to_rgb8(msg: Image) -> np.ndarray:
    """Colour or mono8 Image message -> ``(H, W, 3)`` uint8 RGB (a view where the encoding allows)."""
    return to_rgb8(image_msg_to_array(msg), msg.encoding)


def array_to_image_msg(arr: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """``(H, W)`` / ``(H, W, C)`` array -> Image message with ``encoding`` (little-endian, no row padding).

    The array's dtype and channel count must match the encoding (ValueError otherwise).
    """
    height, width, step, data = array_to_image_fields(arr, encoding)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.step = height, width, step
    msg.encoding = encoding
    msg.is_bigendian = 0
    buf = array.array("B")
    buf.frombytes(memoryview(data))
    msg.data = buf
    return msg
