"""Labelled 3D points from a registered depth image: back-projection and the PointCloud2 message.

Each valid depth pixel (u, v) with depth z (metres) becomes the point
``x = (u - cx) z / fx, y = (v - cy) z / fy, z`` in the depth camera's optical
frame, carrying the camera colour, the class id and the confidence of the mask
pixel it falls on. Depth is assumed registered to the RGB image (same view;
the sizes may differ, the mask is then sampled at the nearest pixel).
"""
from __future__ import annotations

import array
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField
from std_msgs.msg import Header

try:  # on every real ROS 2 install; not on PyPI
    from sensor_msgs_py import point_cloud2 as _pc2
except ImportError:
    _pc2 = None

__all__ = [
    "Pinhole",
    "POINT_FIELDS",
    "POINT_DTYPE",
    "depth_to_metres",
    "labelled_points",
    "points_to_cloud_msg",
    "pack_rgb",
]


def _field(name: str, offset: int, datatype: int) -> PointField:
    return PointField(name=name, offset=offset, datatype=datatype, count=1)


# x, y, z, rgb (packed float32 as PCL/RViz expect), label, confidence; 24 bytes a point.
POINT_FIELDS = [
    _field("x", 0, PointField.FLOAT32),
    _field("y", 4, PointField.FLOAT32),
    _field("z", 8, PointField.FLOAT32),
    _field("rgb", 12, PointField.FLOAT32),
    _field("label", 16, PointField.UINT16),
    _field("confidence", 20, PointField.FLOAT32),
]
POINT_DTYPE = np.dtype(
    {
        "names": ["x", "y", "z", "rgb", "label", "confidence"],
        "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
        "offsets": [0, 4, 8, 12, 16, 20],
        "itemsize": 24,
    }
)


@dataclass(frozen=True)
class Pinhole:
    """Intrinsics in pixels for an image of ``width`` x ``height``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_camera_info(cls, msg: CameraInfo) -> Pinhole:
        """From CameraInfo's K matrix; ValueError if fx or fy is not positive and finite (an uncalibrated camera),
        or cx, cy is not finite."""
        k = msg.k
        fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
        if not (0 < fx < math.inf and 0 < fy < math.inf):
            raise ValueError(f"CameraInfo K has fx={fx}, fy={fy}: the camera is not calibrated "
                             "(need finite fx, fy > 0)")
        if not (math.isfinite(cx) and math.isfinite(cy)):
            raise ValueError(f"CameraInfo K has cx={cx}, cy={cy}: need finite principal point")
        return cls(fx, fy, cx, cy, int(msg.width), int(msg.height))

    def scaled_to(self, width: int, height: int) -> Pinhole:
        """The same camera for an image resized to ``width`` x ``height`` (CameraInfo of another resolution)."""
        if (width, height) == (self.width, self.height) or self.width <= 0 or self.height <= 0:
            return Pinhole(self.fx, self.fy, self.cx, self.cy, width, height)
        sx, sy = width / self.width, height / self.height
        # Pixel centres: (c + 0.5) scales, not c.
        cx, cy = (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5
        return Pinhole(self.fx * sx, self.fy * sy, cx, cy, width, height)


def depth_to_metres(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) depth (uint16 millimetres or float metres) -> ((H, W) float32 metres, (H, W) bool valid).

    0, NaN and inf are invalid (the ROS conventions for "no return").
    """
    metres = depth.astype(np.float32)
    if np.issubdtype(depth.dtype, np.integer):
        metres *= np.float32(0.001)
    valid = np.isfinite(metres) & (metres > 0)
    return metres, valid


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 whose bits are ``r << 16 | g << 8 | b`` (the PCL/RViz ``rgb`` field)."""
    rgb = rgb.astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return packed.view(np.float32)


def labelled_points(
    depth: np.ndarray,
    camera: Pinhole,
    rgb: np.ndarray,
    mask: np.ndarray,
    confidence: np.ndarray,
    rays: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> np.ndarray:
    """One point per valid depth pixel, row-major order -> (N,) structured array of :data:`POINT_DTYPE`.

    depth: (Hd, Wd) uint16 mm or float32 m; camera: intrinsics (scaled to Hd x Wd here); rays: for a camera
    with lens distortion, ((Hd, Wd), (Hd, Wd)) x/z and y/z of each pixel's ray (CameraModel.pixel_rays), used
    instead of the pinhole back-projection (depth registered into a distorted RGB camera);
    rgb: (H, W, 3) uint8; mask: (H, W) uint8 ids; confidence: (H, W) float32. The RGB-sized
    arrays are sampled at the nearest pixel when H x W differs from Hd x Wd.
    """
    metres, valid = depth_to_metres(depth)
    hd, wd = metres.shape
    camera = camera.scaled_to(wd, hd)
    v, u = np.nonzero(valid)
    z = metres[v, u]
    h, w = mask.shape
    if (h, w) != (hd, wd):
        ui = np.minimum(((u + 0.5) * (w / wd)).astype(np.intp), w - 1)
        vi = np.minimum(((v + 0.5) * (h / hd)).astype(np.intp), h - 1)
    else:
        ui, vi = u, v
    points = np.zeros(len(z), POINT_DTYPE)
    if rays is not None:
        points["x"] = rays[0][v, u] * z
        points["y"] = rays[1][v, u] * z
    else:
        points["x"] = (u.astype(np.float32) - np.float32(camera.cx)) * z / np.float32(camera.fx)
        points["y"] = (v.astype(np.float32) - np.float32(camera.cy)) * z / np.float32(camera.fy)
    points["z"] = z
    points["rgb"] = pack_rgb(rgb[vi, ui])
    points["label"] = mask[vi, ui]
    points["confidence"] = confidence[vi, ui]
    return points


def points_to_cloud_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """(N,) :data:`POINT_DTYPE` array -> unordered (height 1), dense PointCloud2.

    Uses ``sensor_msgs_py.point_cloud2.create_cloud`` where installed, the same
    layout built with numpy otherwise.
    """
    if points.dtype != POINT_DTYPE:
        raise ValueError(f"points must have dtype POINT_DTYPE, got {points.dtype}")
    if _pc2 is not None:
        # No point_step argument: Humble's create_cloud has none, and POINT_FIELDS already end at 24 bytes.
        msg = _pc2.create_cloud(header, POINT_FIELDS, points)
        msg.is_dense = True  # invalid depth was skipped: no NaN points
        return msg
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, len(points)
    msg.fields = POINT_FIELDS
    msg.is_bigendian = False  # POINT_DTYPE is little-endian explicitly
    msg.point_step = POINT_DTYPE.itemsize
    msg.row_step = POINT_DTYPE.itemsize * len(points)
    msg.is_dense = True
    buf = array.array("B")
    buf.frombytes(memoryview(np.ascontiguousarray(points).view(np.uint8)))
    msg.data = buf
    return msg
