"""Registration: a thermal or depth image from a camera beside the RGB one, brought into the RGB camera's view.

The one place this happens: the node's and offline replay's per-frame step
(``sigma_ros.segmentation_step``), ``sigma-extract --calibration`` and the demo all call
:class:`Registration`, so a dataset built from a robot's bags looks exactly like what the node feeds the model.

Modes:

- ``none``: the images are already aligned (one optical axis, or registered by the driver); the modality
  passes through unchanged (the Segmenter stretches it to the RGB size). :func:`aspect_ratio_warning` says
  when the two aspect ratios differ by more than 1 %: two different cameras.
- ``homography``: a 3x3 matrix from RGB pixels to modality pixels (a distant scene's calibration).
- ``rig``: both cameras' intrinsics and distortion and the pose between them
  (:class:`~sigma_core.data.calibration.Calibration`). Thermal (no depth) goes through the plane-induced
  homography at ``distance_m`` in front of the RGB camera, with both lenses' distortion; the map from RGB
  pixels to modality pixels is computed once into a ``cv2.remap`` table. Depth is reprojected pixel by pixel
  (depth pixel -> 3D point -> RGB pixel, as depth_image_proc/register does): the nearest surface wins (a
  z-buffer), holes stay empty, and the result is the depth along the RGB camera's optical axis, in metres.

RGB pixels the modality camera does not see get the value a missing modality gets: NaN for float images
and depth (the Segmenter's scaling makes it 0), 0 for integer thermal images without a thermal range.
:attr:`Registered.coverage` is the fraction of RGB pixels that got a value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from .calibration import REGISTRATION_MODES, Calibration, CalibrationError, check_homography
from .modality import ModalityScaling

ASPECT_TOLERANCE = 0.01  # relative difference of width/height ratios that means two different cameras
DEFAULT_DISTANCE_M = 5.0  # metres: the plane thermal is registered at when nothing else is said


@dataclass(frozen=True)
class Registered:
    """A modality image in the RGB view: ``image`` (H, W) at the RGB size (mode none: the input unchanged),
    uint8/uint16/float32 (depth: float32 metres), and ``coverage``, the fraction of RGB pixels it covers."""

    image: np.ndarray
    coverage: float


def aspect_ratio_warning(rgb_size: tuple[int, int], modal_size: tuple[int, int]) -> Optional[str]:
    """A warning when (H, W) sizes have aspect ratios more than 1 % apart, naming the registration parameters;
    None when they agree."""
    (h, w), (hm, wm) = rgb_size[:2], modal_size[:2]
    ratio, modal_ratio = w / h, wm / hm
    if abs(ratio / modal_ratio - 1) <= ASPECT_TOLERANCE:
        return None
    return (f"the RGB image is {w}x{h} (aspect {ratio:.3f}) but the modality image is {wm}x{hm} (aspect "
            f"{modal_ratio:.3f}): two different cameras, and stretching one onto the other misplaces the modality; "
            "calibrate them (sigma-calibrate) and set registration.mode (rig or homography) with "
            "registration.calibration_file")


def missing_value(dtype: np.dtype, scaling: ModalityScaling) -> tuple[np.dtype, float]:
    """(dtype of the registered image, the value of uncovered pixels) so that scaling makes them 0.

    Float images and depth: float32 NaN (invalid -> 0). Integer thermal without a range: its dtype and 0 (the
    bottom of the dtype's range). Integer thermal with a range: float32 NaN, since no integer need map to 0.
    """
    if scaling.modality == "thermal" and np.issubdtype(dtype, np.integer) and scaling.range is None:
        return np.dtype(dtype), 0.0
    return np.dtype(np.float32), float("nan")


class Registration:
    """Brings modality images into the RGB view; build once, call per frame.

    mode: "none", "homography" or "rig". calibration: required unless mode is none (homography mode needs
    ``calibration.homography``; rig needs both cameras and the pose). scaling: the model's modality scaling
    (its modality decides plane warp or reprojection; its thermal range the value of uncovered pixels;
    default thermal, full range).
    distance_m: the plane thermal is registered at in rig mode, metres in front of the RGB camera.
    Raises CalibrationError when the calibration does not fit the mode.
    """

    def __init__(self, mode: str = "none", calibration: Optional[Calibration] = None,
                 scaling: Optional[ModalityScaling] = None, distance_m: float = DEFAULT_DISTANCE_M):
        if mode not in REGISTRATION_MODES:
            raise CalibrationError(f"registration mode {mode!r} is unknown; choose one of "
                                   f"{', '.join(REGISTRATION_MODES)}")
        if not (math.isfinite(distance_m) and distance_m > 0):
            raise CalibrationError(f"registration distance {distance_m!r} must be a finite number of metres > 0")
        if mode != "none" and calibration is None:
            raise CalibrationError(f"registration mode {mode} needs a calibration (registration.calibration_file, "
                                   "or intrinsics from CameraInfo and the pose parameters)")
        if mode == "homography" and (calibration is None or calibration.homography is None):
            source = calibration.source if calibration is not None else "the calibration"
            raise CalibrationError(f"{source}: registration mode homography needs a homography (RGB pixel -> "
                                   "modality pixel); this calibration has none: use mode rig")
        if mode == "rig" and calibration is not None and calibration.mode != "rig":
            raise CalibrationError(f"{calibration.source}: registration mode rig needs both cameras and their pose;"
                                   " this calibration has only a homography: use mode homography")
        self.mode = mode
        self.calibration = calibration.check() if calibration is not None else None
        self.scaling = scaling or ModalityScaling()
        self.distance_m = float(distance_m)
        self._table: Optional[_RemapTable] = None
        self._reprojector: Optional[_DepthReprojector] = None

    @property
    def reprojects_depth(self) -> bool:
        """Depth in rig mode: reprojected pixel by pixel into the RGB camera (its depth values then are along
        the RGB camera's axis; a point cloud is back-projected with the RGB camera's intrinsics)."""
        return self.mode == "rig" and self.scaling.modality == "depth"

    def __call__(self, modal: np.ndarray, rgb_size: tuple[int, int]) -> Registered:
        """Raw modality (H', W') or (H', W', C) (first channel used) -> Registered at ``rgb_size`` (H, W).

        Depth may be uint16 millimetres or float metres (the ROS conventions). Raises CalibrationError when the
        images' sizes differ from the calibrated ones, naming both and what to do.
        """
        if self.mode == "none":
            return Registered(modal, 1.0)
        modal = np.asarray(modal)
        if modal.ndim == 3:
            modal = modal[..., 0]
        rgb_size = (int(rgb_size[0]), int(rgb_size[1]))
        self._check_sizes(rgb_size, modal.shape[:2])
        if self.reprojects_depth:
            if self._reprojector is None:
                self._reprojector = _DepthReprojector(self.calibration)
            return self._reprojector(modal)
        if self._table is None or self._table.sizes != (rgb_size, modal.shape[:2]):
            self._table = self._build_table(rgb_size, modal.shape[:2])
        return self._table.apply(modal, self.scaling)

    def _check_sizes(self, rgb_size: tuple[int, int], modal_size: tuple[int, int]) -> None:
        cal = self.calibration
        for what, camera, size in (("RGB", cal.rgb, rgb_size), ("modality", cal.modal, modal_size)):
            if camera is not None and camera.size != tuple(size):
                raise CalibrationError(
                    f"{cal.source}: calibrated for a {what} image of {camera.width}x{camera.height} but the "
                    f"{what} image is {size[1]}x{size[0]}: calibrate at the camera's current resolution "
                    "(sigma-calibrate) or set the camera back to the calibrated one"
                )

    def _build_table(self, rgb_size: tuple[int, int], modal_size: tuple[int, int]) -> _RemapTable:
        """For each RGB pixel, the modality pixel that sees the same point (float64, (H, W) each)."""
        h, w = rgb_size
        cal = self.calibration
        if self.mode == "homography":
            v, u = np.mgrid[0:h, 0:w].astype(np.float64)
            H = cal.homography
            den = H[2, 0] * u + H[2, 1] * v + H[2, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                den = np.where(den > 0, den, np.nan)  # behind the modality camera: nothing seen
                mx = (H[0, 0] * u + H[0, 1] * v + H[0, 2]) / den
                my = (H[1, 0] * u + H[1, 1] * v + H[1, 2]) / den
        else:
            mx, my = plane_map(cal, self.distance_m)
        nearest = self.scaling.modality == "depth"  # never mix valid and invalid depth
        return _RemapTable(mx, my, modal_size, nearest, (rgb_size, modal_size))


def plane_map(calibration: Calibration, distance_m: float) -> tuple[np.ndarray, np.ndarray]:
    """The plane-induced map of a rig: for every RGB pixel, the modality pixel (u, v) that sees the point where the
    RGB pixel's ray meets the plane Z = ``distance_m`` (RGB optical frame). (H, W) float64 each, NaN where the
    point is behind the modality camera. Both lenses' distortion included."""
    x, y = calibration.rgb.pixel_rays()
    R, t = calibration.rotation, calibration.translation
    X, Y, Z = x * distance_m, y * distance_m, np.full_like(x, distance_m)
    Xm = R[0, 0] * X + R[0, 1] * Y + R[0, 2] * Z + t[0]
    Ym = R[1, 0] * X + R[1, 1] * Y + R[1, 2] * Z + t[1]
    Zm = R[2, 0] * X + R[2, 1] * Y + R[2, 2] * Z + t[2]
    return calibration.modal.project(Xm, Ym, Zm, calibration.modal.field_radius2())


def homography_at_distance(calibration: Calibration, distance_m: float) -> np.ndarray:
    """The 3x3 homography RGB pixel -> modality pixel induced by the plane Z = ``distance_m`` (RGB optical frame),
    ignoring distortion: K_m (R + t n^T / d) K_rgb^-1 with n = (0, 0, 1) (Hartley & Zisserman, eq. 13.2)."""
    R, t = calibration.rotation, calibration.translation.reshape(3, 1)
    n = np.array([[0.0, 0.0, 1.0]])
    H = calibration.modal.K @ (R + t @ n / distance_m) @ np.linalg.inv(calibration.rgb.K)
    return check_homography(H, calibration.source)


class _RemapTable:
    """A precomputed RGB pixel -> modality pixel map, applied with cv2.remap (fixed-point maps: fast)."""

    def __init__(self, mx: np.ndarray, my: np.ndarray, modal_size: tuple[int, int], nearest: bool, sizes):
        hm, wm = modal_size
        self.sizes = sizes
        with np.errstate(invalid="ignore"):
            covered = np.isfinite(mx) & np.isfinite(my) & (mx > -0.5) & (mx < wm - 0.5) & (my > -0.5) & \
                (my < hm - 0.5)
        # Covered pixels sample inside the image (the edge pixel replicated), never blended with the fill value.
        mx = np.clip(np.nan_to_num(mx, nan=0.0), 0, wm - 1).astype(np.float32)
        my = np.clip(np.nan_to_num(my, nan=0.0), 0, hm - 1).astype(np.float32)
        self.interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        self.map1, self.map2 = cv2.convertMaps(mx, my, cv2.CV_16SC2, nninterpolation=nearest)
        self.uncovered = np.flatnonzero(~covered)
        self.coverage = float(covered.mean())

    def apply(self, modal: np.ndarray, scaling: ModalityScaling) -> Registered:
        dtype, fill = missing_value(modal.dtype, scaling)
        if scaling.modality == "depth" and np.issubdtype(modal.dtype, np.integer):
            modal = modal.astype(np.float32) * np.float32(1e-3)  # millimetres -> metres (REP 118)
        source = modal if modal.dtype in (np.uint8, np.uint16, np.float32) else modal.astype(np.float32)
        out = cv2.remap(source, self.map1, self.map2, self.interpolation, borderMode=cv2.BORDER_REPLICATE)
        out = out.astype(dtype, copy=False)
        out.reshape(-1)[self.uncovered] = fill
        return Registered(out, self.coverage)


class _DepthReprojector:
    """Depth image of the modality camera -> depth image of the RGB camera, pixel by pixel (z-buffered)."""

    def __init__(self, calibration: Calibration):
        self.cal = calibration
        rgb, modal = calibration.rgb, calibration.modal
        x, y = modal.pixel_rays()
        self.ray_x, self.ray_y = x.reshape(-1).astype(np.float32), y.reshape(-1).astype(np.float32)
        # X_rgb = R^T (X_modal - t)
        self.R = calibration.rotation.T.astype(np.float32)
        self.t = (-calibration.rotation.T @ calibration.translation).astype(np.float32)
        # A depth pixel covers about (fx_rgb / fx_modal) x (fy_rgb / fy_modal) RGB pixels (the focal lengths'
        # ratio; depth_image_proc/register projects each pixel's corners for the same reason): each point fills
        # the RGB pixels whose centres fall in that footprint, so a surface leaves no cracks and, the
        # footprints tiling it, the z-buffer does not pull a slanted surface nearer.
        self.footprint = (rgb.K[0, 0] / modal.K[0, 0], rgb.K[1, 1] / modal.K[1, 1])
        self.field = np.float32(rgb.field_radius2())

    def __call__(self, depth: np.ndarray) -> Registered:
        rgb = self.cal.rgb
        z = depth.reshape(-1)
        z = z.astype(np.float32) * np.float32(1e-3) if np.issubdtype(z.dtype, np.integer) else z.astype(np.float32)
        with np.errstate(invalid="ignore"):
            keep = np.flatnonzero(z > 0)  # NaN, inf-free: inf > 0 is kept, handled by the finite check below
        z = z[keep]
        finite = np.isfinite(z)
        if not finite.all():
            keep, z = keep[finite], z[finite]
        x, y = self.ray_x[keep] * z, self.ray_y[keep] * z
        R, t = self.R, self.t
        X = R[0, 0] * x + R[0, 1] * y + R[0, 2] * z + t[0]
        Y = R[1, 0] * x + R[1, 1] * y + R[1, 2] * z + t[1]
        Z = R[2, 0] * x + R[2, 1] * y + R[2, 2] * z + t[2]
        # Only points in front of the RGB camera and within its field: the lens polynomial would fold points far
        # outside it back into the image.
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = X / Z, Y / Z
        seen = (Z > 0) & (a * a + b * b <= self.field)
        if not seen.all():
            a, b, Z = a[seen], b[seen], Z[seen]
        xd, yd = rgb.distort(a, b)
        fx, skew, cx, fy, cy = (float(k) for k in rgb.K.reshape(-1)[[0, 1, 2, 4, 5]])  # Python floats: float32 math
        u = fx * xd + skew * yd + cx
        v = fy * yd + cy
        h, w = rgb.height, rgb.width
        buffer = np.full(h * w, np.inf, np.float32)
        # Pixel centres c with u - r/2 <= c < u + r/2 (r: the footprint) on each axis.
        (u0, nu), (v0, nv) = (_covered(x, r) for x, r in zip((u, v), self.footprint))
        for dv in range(int(nv.max(initial=1))):
            for du in range(int(nu.max(initial=1))):
                uu, vv = u0 + du, v0 + dv
                inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
                if du or dv:  # beyond the first pixel, only points whose footprint reaches this far
                    inside &= (du < nu) & (dv < nv)
                np.minimum.at(buffer, vv[inside] * w + uu[inside], Z[inside])
        covered = np.isfinite(buffer)
        buffer[~covered] = np.nan
        return Registered(buffer.reshape(h, w), float(covered.mean()))


def _covered(x: np.ndarray, footprint: float) -> tuple[np.ndarray, np.ndarray]:
    """(first pixel index, how many) of the pixel centres within [x - footprint / 2, x + footprint / 2), at least
    the nearest one."""
    first = np.ceil(x - footprint / 2).astype(np.int32)
    count = np.ceil(x + footprint / 2).astype(np.int32) - first
    if footprint >= 1:  # always holds a pixel centre
        return first, count
    nearest = count < 1  # a footprint narrower than a pixel, between two centres: the nearest pixel
    if nearest.any():
        first = np.where(nearest, np.floor(x + 0.5).astype(np.int32), first)
        count = np.maximum(count, 1)
    return first, count


__all__ = [
    "ASPECT_TOLERANCE",
    "DEFAULT_DISTANCE_M",
    "Registered",
    "Registration",
    "aspect_ratio_warning",
    "homography_at_distance",
    "missing_value",
    "plane_map",
]
