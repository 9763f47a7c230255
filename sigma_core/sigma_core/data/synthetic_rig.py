"""Synthetic two-camera rigs with known answers: the street world and calibration targets seen by two cameras.

The RGB camera is the street world's own pinhole camera (sigma_core.data.synthetic, 0.85 x width
focal length, at the scene's size); beside it, a thermal or depth camera with its own resolution,
aspect ratio, focal length and radtan lens distortion, ``offset`` metres to the right and down, optical
axes parallel. The modality view is rendered by the same painter's renderer from the offset centre onto a
pinhole canvas wide enough for the lens, then distorted with ``cv2.remap`` (exact for a lens model: a 2D
warp about a fixed centre), so parallax, occlusion and lens match the truth that :meth:`SyntheticRig.calibration`
returns, and that :func:`write_rig_files` writes beside a bag.

Calibration targets (:func:`render_target`): a chessboard or an asymmetric circle grid on a plane at a
given pose, ray-traced per pixel (2x2 supersampled) through each camera's lens; in thermal the dark
squares or circles are heated (bright), or the whole board is at ambient temperature (``thermal_visible``
False: never found in thermal).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from .calibration import Calibration, CameraModel, save_calibration
from .synthetic import Frame, Intrinsics, Scene
from .target_calibration import TargetSpec

PATTERNS = ("chessboard", "circles")
TARGET_INFO_TOPICS = ("/camera/color/camera_info", "/thermal/camera_info")  # CameraInfo in a target recording


@dataclass(frozen=True)
class SyntheticRig:
    """rgb: the street world's camera (pinhole, the scene's size); modal: the thermal/depth camera; offset:
    (right, down) metres of the modal camera's centre from the RGB camera's, axes parallel."""

    rgb: CameraModel
    modal: CameraModel
    offset: tuple[float, float] = (0.06, 0.0)

    def calibration(self, source: str = "synthetic rig (truth)") -> Calibration:
        """The true calibration (X_modal = X_rgb - (offset, 0))."""
        t = -np.array([self.offset[0], self.offset[1], 0.0])
        return Calibration("rig", source, self.rgb, self.modal, np.eye(3), t).check()

    def render_modal(self, scene: Scene, t: float, noise_seed: int) -> Frame:
        """The scene at time ``t`` through the modality camera (images of its size)."""
        return render_view(scene, t, self.modal, self.offset, noise_seed)

    def aligned(self) -> SyntheticRig:
        """The same RGB camera with a modality camera sharing its optical axis and image (what MFNet has)."""
        return SyntheticRig(self.rgb, self.rgb, (0.0, 0.0))


def separate_rig(rgb_size: tuple[int, int] = (720, 1280), modal_size: tuple[int, int] = (512, 640),
                 baseline_m: float = 0.06, distortion: tuple = (-0.22, 0.06, 0.0008, -0.0005, 0.0),
                 modal_focal: float = 0.72) -> SyntheticRig:
    """An RGB camera of ``rgb_size`` (H, W) and a modality camera of ``modal_size`` with focal length
    ``modal_focal`` x its width (a wider view than the RGB's 0.85) and radtan ``distortion``, ``baseline_m`` to
    the right."""
    h, w = rgb_size
    ref = Intrinsics.for_size(h, w)
    rgb = CameraModel(w, h, np.array([[ref.fx, 0, ref.cx], [0, ref.fy, ref.cy], [0, 0, 1.0]]))
    hm, wm = modal_size
    f = modal_focal * wm
    modal = CameraModel(wm, hm, np.array([[f, 0, (wm - 1) / 2 + 2.3], [0, f * 1.002, (hm - 1) / 2 - 1.7],
                                          [0, 0, 1.0]]), "radtan", tuple(distortion))
    return SyntheticRig(rgb.check("rgb"), modal.check("modal"), (float(baseline_m), 0.0))


def _canvas(camera: CameraModel) -> tuple[Intrinsics, np.ndarray, np.ndarray]:
    """A pinhole canvas (same focal length) that holds every ray of ``camera``, and the remap from the camera's
    pixels to canvas pixels (float32 maps)."""
    x, y = camera.pixel_rays()
    fx, fy = camera.K[0, 0], camera.K[1, 1]
    left, right = float(np.floor(x.min() * fx)) - 2, float(np.ceil(x.max() * fx)) + 2
    top, bottom = float(np.floor(y.min() * fy)) - 2, float(np.ceil(y.max() * fy)) + 2
    width, height = int(right - left) + 1, int(bottom - top) + 1
    canvas = Intrinsics(width, height, fx, fy, -left, -top)
    return canvas, (x * fx - left).astype(np.float32), (y * fy - top).astype(np.float32)


def render_view(scene: Scene, t: float, camera: CameraModel, offset: tuple[float, float], noise_seed: int) -> Frame:
    """The scene through ``camera`` at ``offset`` (right, down) metres from the scene's camera: rendered on a
    pinhole canvas, then through the lens (bilinear for RGB/thermal, nearest for depth and labels)."""
    if camera.distortion == "none":
        K = camera.K
        return scene.render(t, noise_seed, Intrinsics(camera.width, camera.height, K[0, 0], K[1, 1], K[0, 2],
                                                      K[1, 2]), offset)
    canvas, mx, my = _canvas(camera)
    wide = scene.render(t, noise_seed, canvas, offset)

    def warp(img, interpolation):
        return cv2.remap(img, mx, my, interpolation, borderMode=cv2.BORDER_REPLICATE)

    return Frame(rgb=warp(wide.rgb, cv2.INTER_LINEAR), thermal=warp(wide.thermal, cv2.INTER_LINEAR),
                 depth=warp(wide.depth, cv2.INTER_NEAREST), label=warp(wide.label, cv2.INTER_NEAREST),
                 night=wide.night)


def write_rig_files(bag_path: str | os.PathLike, rig: SyntheticRig) -> Path:
    """The rig's true calibration beside a bag: ``<bag>.rig.yaml`` (our calibration format). Returns its path."""
    path = Path(f"{Path(bag_path)}.rig.yaml")
    save_calibration(rig.calibration(f"{path} (synthetic truth)"), path)
    return path


# --- calibration targets ---------------------------------------------------------------------------------------


def _dark(target: TargetSpec, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Board coordinates (metres) -> bool: dark there (printed; heated in thermal)."""
    s = target.spacing
    if target.pattern == "chessboard":
        ia, ib = np.floor(a / s), np.floor(b / s)
        inside = (ia >= -1) & (ia <= target.cols - 1) & (ib >= -1) & (ib <= target.rows - 1)
        return inside & (((ia + ib) % 2) == 0)
    dark = np.zeros(a.shape, bool)
    radius2 = (0.35 * s) ** 2
    for cx, cy, _ in target.object_points():
        dark |= (a - cx) ** 2 + (b - cy) ** 2 < radius2
    return dark


def _extent(target: TargetSpec) -> tuple[float, float, float, float]:
    """(a0, a1, b0, b1): the board including its white margin (metres)."""
    pts = target.object_points()
    s = target.spacing * (2 if target.pattern == "chessboard" else 1.5)
    return pts[:, 0].min() - s, pts[:, 0].max() + s, pts[:, 1].min() - s, pts[:, 1].max() + s


def _supersampled_rays(camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """(4, H, W) x/z and y/z of four sub-pixel rays per pixel (2x2 supersampling)."""
    v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
    xs, ys = [], []
    for du, dv in ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)):
        x, y = camera.undistort(u + du, v + dv)
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)


def render_target(target: TargetSpec, R: np.ndarray, origin: np.ndarray, camera: CameraModel,
                  centre: np.ndarray, rays: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how dark the board is in each pixel (fraction of sub-pixel rays on a dark
    square/circle); NaN where the rays miss the board (background). Board pose in the RGB camera's frame:
    point = origin + R @ (a, b, 0); camera ``centre`` in the same frame, axes parallel to the RGB camera's."""
    x, y = rays if rays is not None else _supersampled_rays(camera)
    ex, ey, n = R[:, 0], R[:, 1], R[:, 2]
    d_dot_n = x * n[0] + y * n[1] + n[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = float(n @ (origin - centre)) / d_dot_n
    px, py, pz = centre[0] + s * x - origin[0], centre[1] + s * y - origin[1], centre[2] + s - origin[2]
    a = px * ex[0] + py * ex[1] + pz * ex[2]
    b = px * ey[0] + py * ey[1] + pz * ey[2]
    a0, a1, b0, b1 = _extent(target)
    on = (s > 0) & (a >= a0) & (a <= a1) & (b >= b0) & (b <= b1)
    dark = _dark(target, a, b) & on
    hit = on.mean(0)
    value = dark.mean(0) / np.maximum(hit, 1e-9)
    return np.where(hit > 0.5, value, np.nan).astype(np.float32)


def target_poses(n: int, target: TargetSpec, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` board poses (R, origin) in front of the RGB camera: 0.7..1.5 m away, tilted up to 35 degrees, the
    board's centre within the central part of the view."""
    rng = np.random.default_rng([seed, 17])
    a0, a1, b0, b1 = _extent(target)
    half = np.array([(a0 + a1) / 2, (b0 + b1) / 2, 0.0])
    poses = []
    for _ in range(n):
        rvec = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(-0.25, 0.25)])
        R = cv2.Rodrigues(rvec)[0]
        z = rng.uniform(0.7, 1.5)
        centre = np.array([rng.uniform(-0.22, 0.22) * z, rng.uniform(-0.12, 0.12) * z, z])
        poses.append((R, centre - R @ half))
    return poses


def write_target_bag(path: str | os.PathLike, rig: SyntheticRig, target: Optional[TargetSpec] = None, views: int = 16,
                     seed: int = 0, thermal_visible: bool = True, storage: str = "sqlite3", camera_info: bool = True,
                     start_ns: int = 1_700_000_000_000_000_000) -> Path:
    """A calibration recording: ``target`` (default: a 9x6 chessboard of 5 cm squares) at ``views`` poses, held
    still for one RGB (rgb8) and one thermal (mono16 centi-Kelvin: dark squares heated to 40 degC over a 20 degC
    board) frame each, 0.5 s apart, stamps a few milliseconds apart. ``thermal_visible`` False: the board at
    ambient temperature (invisible in thermal). ``camera_info``: both cameras' true CameraInfo beside each frame
    (``<image topic>/../camera_info``). Writes the rig's truth beside it (:func:`write_rig_files`).
    Returns the bag path."""
    from .bags import BagWriter
    from .synthetic import TOPICS

    target = target or TargetSpec()
    rng = np.random.default_rng([seed, 23])
    rays = [_supersampled_rays(rig.rgb), _supersampled_rays(rig.modal)]
    centres = [np.zeros(3), np.array([rig.offset[0], rig.offset[1], 0.0])]
    with BagWriter(path, storage) as bag:
        for k, (R, origin) in enumerate(target_poses(views, target, seed)):
            st = start_ns + k * 500_000_000
            dark_rgb = render_target(target, R, origin, rig.rgb, centres[0], rays[0])
            background = rng.uniform(90, 140)
            grey = np.where(np.isnan(dark_rgb), background, 235 - 200 * np.nan_to_num(dark_rgb))
            grey = grey + rng.normal(0, 2.0, grey.shape)
            rgb = np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, -1)
            dark_th = render_target(target, R, origin, rig.modal, centres[1], rays[1])
            kelvin = np.where(np.isnan(dark_th), 291.0, 293.0 + (20.0 * np.nan_to_num(dark_th) if thermal_visible
                                                                 else 0.0))
            kelvin = cv2.GaussianBlur(kelvin.astype(np.float32), (0, 0), 0.7) + rng.normal(0, 0.05, kelvin.shape)
            thermal = np.clip(np.round(kelvin * 100), 0, 65535).astype(np.uint16)
            bag.write(TOPICS["rgb"], st + 8_000_000, bag.image(st, "camera_color", rgb, "rgb8"))
            st_th = st + int(rng.integers(-3_000_000, 3_000_000))
            bag.write(TOPICS["thermal"], st_th + 30_000_000, bag.image(st_th, "thermal", thermal, "mono16"))
            if camera_info:
                for topic, camera, stamp, log in ((TARGET_INFO_TOPICS[0], rig.rgb, st, st + 8_000_001),
                                                  (TARGET_INFO_TOPICS[1], rig.modal, st_th, st_th + 30_000_001)):
                    D = list(camera.D) + [0.0] * (5 - len(camera.D))
                    bag.write(topic, log, bag.camera_info(stamp, "camera", camera.height, camera.width,
                                                          camera.K.reshape(-1).tolist(), D))
    write_rig_files(path, rig)
    return Path(path)


__all__ = ["PATTERNS", "SyntheticRig", "render_target", "render_view", "separate_rig", "target_poses",
           "write_rig_files", "write_target_bag"]
