"""Two-camera calibration from a recording of a calibration target seen by the RGB and the thermal/depth camera.

Pairs come from a bag (the node's pairing policy, :class:`ApproximateTimePairer`, fed in bag order:
the same slop rules as ``sigma-extract``) or from two image folders (files paired by name). The target
is found in both streams with OpenCV: ``cv2.findChessboardCornersSB`` (chessboard) or
``cv2.findCirclesGrid`` (asymmetric circle grid). The modality image is normalised to 8 bits (0.5..99.5
percentiles) and, when the target is not found as is (a heated target shows light squares on a dark
board), inverted. Each camera's intrinsics (radtan k1 k2 p1 p2, k3 fixed at 0 unless asked) come from
``cv2.calibrateCamera`` on the frames where it saw the target, or from given CameraModels; the pose
between the cameras from ``cv2.stereoCalibrate`` with the intrinsics fixed, on the pairs where both saw it.
The result is a :class:`~sigma_core.data.calibration.Calibration` (rig, with the plane homography at the
median target distance) that ``registration.calibration_file`` reads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from .calibration import Calibration, CalibrationError, CameraModel
from .registration import homography_at_distance

MIN_PAIRS = 4  # stereo pairs with the target seen in both images (and views per camera for its intrinsics)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class TargetSpec:
    """chessboard: ``cols`` x ``rows`` inner corners, ``spacing`` = square side (metres); circles: OpenCV's
    asymmetric grid of ``cols`` x ``rows`` circles, ``spacing`` = its half diagonal step (metres)."""

    pattern: str = "chessboard"
    cols: int = 9
    rows: int = 6
    spacing: float = 0.05

    def object_points(self) -> np.ndarray:
        """(N, 3) float32 board coordinates of the detected points, in OpenCV's order."""
        if self.pattern == "chessboard":
            j, i = np.mgrid[0:self.rows, 0:self.cols]
            pts = np.stack([i.ravel(), j.ravel(), np.zeros(i.size)], -1)
        else:
            i, j = np.mgrid[0:self.rows, 0:self.cols]
            pts = np.stack([(2 * j + i % 2).ravel(), i.ravel(), np.zeros(i.size)], -1)
        return (pts * self.spacing).astype(np.float32)


@dataclass
class Detections:
    """What was found: per pair (name, RGB points or None, modality points or None), image sizes (H, W)."""

    pairs: list = field(default_factory=list)
    rgb_size: Optional[tuple[int, int]] = None
    modal_size: Optional[tuple[int, int]] = None
    inverted: int = 0  # modality frames in which the target was found only once inverted
    frames: tuple[int, int] = (0, 0)  # messages (or files) per stream

    @property
    def counts(self) -> tuple[int, int, int]:
        """(frames with the target in RGB, in the modality, in both)."""
        rgb = sum(r is not None for _, r, _ in self.pairs)
        modal = sum(m is not None for _, _, m in self.pairs)
        both = sum(r is not None and m is not None for _, r, m in self.pairs)
        return rgb, modal, both


def to_gray8(image: np.ndarray) -> np.ndarray:
    """Any camera image -> (H, W) uint8 grey: colour averaged, other ranges stretched over 0.5..99.5 percentiles."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].astype(np.float32).mean(-1)
    img = img.astype(np.float32)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(finite, [0.5, 99.5])
    hi = hi if hi > lo else lo + 1.0
    return np.clip((np.nan_to_num(img, nan=lo) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def find_target(gray: np.ndarray, target: TargetSpec) -> Optional[np.ndarray]:
    """(N, 2) float32 image points of the target in a uint8 grey image, OpenCV's order; None if not found."""
    size = (target.cols, target.rows)
    if target.pattern == "chessboard":
        found, pts = cv2.findChessboardCornersSB(gray, size, flags=0)
        if not found:  # histogram equalisation helps a dim image and hurts a clean one: second try
            found, pts = cv2.findChessboardCornersSB(gray, size, flags=cv2.CALIB_CB_NORMALIZE_IMAGE)
    else:
        found, pts = cv2.findCirclesGrid(gray, size, flags=cv2.CALIB_CB_ASYMMETRIC_GRID)
    return pts.reshape(-1, 2).astype(np.float32) if found else None


def find_in_modality(image: np.ndarray, target: TargetSpec) -> tuple[Optional[np.ndarray], bool]:
    """(points or None, whether the image had to be inverted): normalised, then inverted if not found as is."""
    gray = to_gray8(image)
    pts = find_target(gray, target)
    if pts is not None:
        return pts, False
    return find_target(255 - gray, target), True


def orient_like(reference: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` in the order whose first-to-last direction agrees with ``reference``'s: the target's 180-degree
    ambiguity (and an inverted image's) resolved for cameras mounted the same way up."""
    a, b = reference[-1] - reference[0], points[-1] - points[0]
    return points[::-1].copy() if float(a @ b) < 0 else points


def detect_pairs(pairs: Iterator[tuple[str, np.ndarray, np.ndarray]], target: TargetSpec) -> Detections:
    """Find the target in each (name, RGB image, modality image) pair; sizes must stay the same throughout."""
    found = Detections()
    for name, rgb, modal in pairs:
        sizes = (tuple(rgb.shape[:2]), tuple(modal.shape[:2]))
        if found.rgb_size is None:
            found.rgb_size, found.modal_size = sizes
        elif sizes != (found.rgb_size, found.modal_size):
            raise CalibrationError(f"frame {name}: images of {sizes[0][1]}x{sizes[0][0]} and {sizes[1][1]}x"
                                   f"{sizes[1][0]}, earlier {found.rgb_size[1]}x{found.rgb_size[0]} and "
                                   f"{found.modal_size[1]}x{found.modal_size[0]}: record at one resolution")
        rgb_pts = find_target(to_gray8(rgb), target)
        modal_pts, inverted = find_in_modality(modal, target)
        if modal_pts is not None:
            found.inverted += inverted
            if rgb_pts is not None:
                modal_pts = orient_like(rgb_pts, modal_pts)
        found.pairs.append((name, rgb_pts, modal_pts))
    return found


@dataclass
class RigCalibrationResult:
    calibration: Calibration
    rms_px: dict  # rgb, modal (each camera's calibrateCamera), stereo
    distances_m: list  # target distance from the RGB camera in each stereo view
    views: dict  # counts


def calibrate_rig(found: Detections, target: TargetSpec, source: str, rgb_camera: Optional[CameraModel] = None,
                  modal_camera: Optional[CameraModel] = None, fix_k3: bool = True,
                  modality: str = "thermal") -> RigCalibrationResult:
    """Intrinsics (unless given) and the pose between the cameras from ``found``. CalibrationError, one line
    naming how many frames had the target in which stream and what to try, when there are too few."""
    rgb_n, modal_n, both = found.counts
    names = ("RGB", modality)
    if both < MIN_PAIRS or (rgb_camera is None and rgb_n < MIN_PAIRS) or (modal_camera is None and
                                                                         modal_n < MIN_PAIRS):
        hints = []
        if modal_n == 0:
            hints.append(f"the target never showed in {modality}: heat or cool it (or use a heated circle grid) so "
                         "it contrasts in that image")
        if rgb_n == 0:
            hints.append("the target never showed in RGB: check --pattern, --cols and --rows (inner corners)")
        hints.append(f"record the target, still and whole in both views, at {MIN_PAIRS}+ different poses")
        raise CalibrationError(
            f"{source}: the target was found in {rgb_n} of {found.frames[0]} {names[0]} frames, {modal_n} of "
            f"{found.frames[1]} {names[1]} frames and {both} of {len(found.pairs)} pairs (need {MIN_PAIRS} "
            f"pairs): {'; '.join(hints)}"
        )
    obj = target.object_points()
    flags = cv2.CALIB_FIX_K3 if fix_k3 else 0

    def intrinsics(index: int, size: tuple[int, int], given: Optional[CameraModel]) -> tuple[CameraModel, float]:
        pts = [p[index] for p in found.pairs if p[index] is not None]
        if given is not None:
            return given, float("nan")
        rms, K, D, _, _ = cv2.calibrateCamera([obj] * len(pts), pts, (size[1], size[0]), None, None, flags=flags)
        camera = CameraModel(size[1], size[0], K, "radtan", tuple(D.reshape(-1)[:5]))
        return camera.check(f"{source} ({names[index - 1]} intrinsics)"), float(rms)

    rgb, rgb_rms = intrinsics(1, found.rgb_size, rgb_camera)
    modal, modal_rms = intrinsics(2, found.modal_size, modal_camera)
    stereo = [(r, m) for _, r, m in found.pairs if r is not None and m is not None]
    rms, *_, R, T, _, _ = cv2.stereoCalibrate(
        [obj] * len(stereo), [r for r, _ in stereo], [m for _, m in stereo], rgb.K, np.asarray(rgb.D), modal.K,
        np.asarray(modal.D), (found.rgb_size[1], found.rgb_size[0]), flags=cv2.CALIB_FIX_INTRINSIC)
    distances = []
    centre = obj.mean(0)
    for r, _ in stereo:
        ok, rvec, tvec = cv2.solvePnP(obj, r, rgb.K, np.asarray(rgb.D))
        if ok:
            distances.append(float((cv2.Rodrigues(rvec)[0] @ centre + tvec.reshape(-1))[2]))
    rms_px = {"rgb": rgb_rms, "modal": modal_rms, "stereo": float(rms)}
    calibration = Calibration("rig", source, rgb, modal, R, T.reshape(-1), rms_px={k: v for k, v in rms_px.items()
                                                                                    if np.isfinite(v)})
    calibration = calibration.check()
    distance = float(np.median(distances)) if distances else 5.0
    calibration = Calibration(calibration.mode, calibration.source, calibration.rgb, calibration.modal,
                              calibration.rotation, calibration.translation,
                              homography_at_distance(calibration, distance), calibration.rms_px)
    return RigCalibrationResult(calibration, rms_px, distances,
                                {"rgb": rgb_n, "modal": modal_n, "pairs": both, "frames": len(found.pairs)})


def folder_pairs(rgb_dir: str | os.PathLike, modal_dir: str | os.PathLike) -> tuple[list, tuple[int, int]]:
    """Image files of two folders paired by file name (stem) -> ([(name, rgb path, modal path)], (n_rgb, n_modal)).
    CalibrationError when a folder is missing or no names match."""
    dirs = [Path(rgb_dir), Path(modal_dir)]
    files = []
    for d in dirs:
        if not d.is_dir():
            raise CalibrationError(f"{d} is not a folder of images")
        files.append({p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS})
    common = sorted(set(files[0]) & set(files[1]))
    if not common:
        raise CalibrationError(f"no file names in common between {dirs[0]} ({len(files[0])} images) and {dirs[1]} "
                               f"({len(files[1])} images): name each pair's two images alike")
    return [(n, files[0][n], files[1][n]) for n in common], (len(files[0]), len(files[1]))


def checker_overlay(rgb: np.ndarray, registered: np.ndarray, block: int = 32) -> np.ndarray:
    """(H, W, 3) uint8 BGR: a checker mosaic of the RGB image and the registered modality (colour-mapped), so edges
    that line up continue across the blocks. rgb: (H, W, 3) uint8 RGB; registered: (H, W), NaN where not covered."""
    h, w = registered.shape
    heat = cv2.applyColorMap(to_gray8(registered), cv2.COLORMAP_INFERNO)
    heat[~np.isfinite(registered.astype(np.float32))] = 0
    v, u = np.mgrid[0:h, 0:w]
    tiles = ((u // block + v // block) % 2 == 1)[..., None]
    return np.where(tiles, heat, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


__all__ = ["MIN_PAIRS", "Detections", "RigCalibrationResult", "TargetSpec", "calibrate_rig", "checker_overlay",
           "detect_pairs", "find_in_modality", "find_target", "folder_pairs", "orient_like", "to_gray8"]
