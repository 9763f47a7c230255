"""Two-camera calibration: the RGB camera, the modality camera (thermal or depth) and how they sit.

What :mod:`sigma_core.data.registration` needs to bring a modality image into the RGB view, read
from the files people already have and checked before any pixel is warped:

- Kalibr's camchain YAML (``cam0`` = RGB, ``cam1`` = the modality; ``camera_model: pinhole``,
  ``distortion_model`` radtan or equidistant, ``intrinsics [fu, fv, pu, pv]``, ``resolution [w, h]``,
  ``cam1.T_cn_cnm1``: the 4x4 transform taking cam0 points into cam1's frame);
- OpenCV's stereo calibration YAML (``cv2.FileStorage``; ``K1``/``M1``, ``D1``, ``K2``/``M2``, ``D2``, ``R``,
  ``T`` from ``cv2.stereoCalibrate``: camera 1 = RGB, ``X2 = R X1 + T``; optional ``image_width1``,
  ``image_height1``, ``image_width2``, ``image_height2``, ``distortion_model`` and ``homography``);
- our own (``sigma_calibration: 1``), what ``sigma-calibrate`` writes (:func:`save_calibration`).

Conventions: pixel coordinates have (0, 0) at the centre of the top-left pixel (OpenCV, ROS CameraInfo);
``rotation``/``translation`` take a point from the RGB camera's optical frame to the modality camera's
(``X_modal = R X_rgb + t``, metres: OpenCV's stereo R, T and Kalibr's T_cn_cnm1); a ``homography`` maps RGB
pixels to modality pixels. Distortion models: ``none``, ``radtan`` (OpenCV/ROS plumb_bob: k1, k2, p1, p2[, k3];
rational_polynomial: 8 values) and ``equidistant`` (Kalibr/ROS/OpenCV fisheye: k1..k4).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import yaml

from ..yaml_loading import load_yaml
from .errors import DataError

REGISTRATION_MODES = ("none", "homography", "rig")
DISTORTION_MODELS = ("none", "radtan", "equidistant")
# What other tools call the same models (ROS CameraInfo, OpenCV, Kalibr).
DISTORTION_ALIASES = {"plumb_bob": "radtan", "rational_polynomial": "radtan", "pinhole": "none", "": "none",
                      "fisheye": "equidistant", "kannala_brandt": "equidistant"}
RADTAN_LENGTHS = (4, 5, 8)  # k1 k2 p1 p2 [k3 [k4 k5 k6]] (OpenCV order)
FORMAT_VERSION = 1
# No camera pair registered pixel to pixel sits this far apart: a larger baseline is a translation in millimetres (or
# chessboard squares: cv2.stereoCalibrate returns T in the units of the object points) read as metres.
MAX_BASELINE_M = 10.0
MAX_AXES_ANGLE_DEG = 90.0  # optical axes further apart than this share no view


class CalibrationError(DataError):
    """A calibration that cannot be used; the message names the file or parameter and what to do."""


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera with lens distortion, for images of ``width`` x ``height`` pixels.

    K: (3, 3) float64 intrinsics; distortion: "none" | "radtan" | "equidistant"; D: its coefficients
    (radtan: 4, 5 or 8 in OpenCV order; equidistant: 4; none: empty).
    """

    width: int
    height: int
    K: np.ndarray
    distortion: str = "none"
    D: tuple = ()

    @property
    def size(self) -> tuple[int, int]:
        """(height, width): the numpy shape of its images."""
        return self.height, self.width

    def check(self, where: str) -> CameraModel:
        """This camera if usable, else CalibrationError naming ``where`` (a file and key, or a topic)."""
        K = np.asarray(self.K, np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all():
            raise CalibrationError(f"{where}: intrinsics must be a finite 3x3 matrix, got {K.tolist()}; "
                                   "recalibrate the camera")
        fx, fy = K[0, 0], K[1, 1]
        if not (fx > 0 and fy > 0) or K[2, 2] != 1 or K[1, 0] or K[2, 0] or K[2, 1]:
            raise CalibrationError(f"{where}: intrinsics need fx, fy > 0 and a last row [0, 0, 1], got "
                                   f"{K.tolist()} (an uncalibrated camera?): calibrate it (sigma-calibrate)")
        if not (4 <= self.width <= 16384 and 4 <= self.height <= 16384):
            raise CalibrationError(f"{where}: image size {self.width}x{self.height} is not a camera's; give the "
                                   "resolution the camera was calibrated at")
        model = DISTORTION_ALIASES.get(str(self.distortion).lower(), str(self.distortion).lower())
        if model not in DISTORTION_MODELS:
            raise CalibrationError(f"{where}: unknown distortion model {self.distortion!r}; supported: radtan "
                                   "(plumb_bob, rational_polynomial), equidistant (fisheye), none: recalibrate with "
                                   "one of them")
        D = tuple(float(d) for d in np.asarray(self.D, np.float64).reshape(-1))
        if not all(math.isfinite(d) for d in D):
            raise CalibrationError(f"{where}: distortion coefficients must be finite, got {list(D)}")
        if model == "radtan" and not any(D):
            model, D = "none", ()
        if model == "radtan" and len(D) not in RADTAN_LENGTHS:
            raise CalibrationError(f"{where}: radtan distortion takes 4, 5 or 8 coefficients (k1 k2 p1 p2 [k3 ...]),"
                                   f" got {len(D)}")
        if model == "equidistant" and len(D) != 4:
            raise CalibrationError(f"{where}: equidistant distortion takes 4 coefficients (k1 k2 k3 k4), got "
                                   f"{len(D)}")
        if model == "none" and any(D):
            raise CalibrationError(f"{where}: distortion model none but coefficients {list(D)}: name the model")
        return replace(self, K=K, distortion=model, D=D if model != "none" else ())

    # --- geometry (vectorised; float64 for one-time tables, any float dtype per frame) ---------------------------

    def project(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, max_radius2: float = np.inf
                ) -> tuple[np.ndarray, np.ndarray]:
        """Points (x, y, z) in this camera's optical frame (any shape, metres) -> pixel (u, v), same shape.

        Points with z <= 0, or further off-axis than ``max_radius2`` ((x/z)^2 + (y/z)^2, see
        :meth:`field_radius2`: a lens polynomial folds such points back into the image), give NaN. Follows
        OpenCV's projectPoints (radtan) and fisheye model (equidistant).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_z = np.where(z > 0, 1.0 / z, np.nan).astype(x.dtype, copy=False)
        a, b = x * inv_z, y * inv_z
        if np.isfinite(max_radius2):
            outside = a * a + b * b > max_radius2
            a, b = np.where(outside, np.nan, a), np.where(outside, np.nan, b)
        xd, yd = self.distort(a, b)
        K = self.K
        return K[0, 0] * xd + K[0, 1] * yd + K[0, 2], K[1, 1] * yd + K[1, 2]

    def distort(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised undistorted image coordinates -> distorted ones (the lens model)."""
        D = self.D
        if self.distortion == "none":
            return a, b
        r2 = a * a + b * b
        if self.distortion == "equidistant":
            r = np.sqrt(r2)
            theta = np.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (D[0] + t2 * (D[1] + t2 * (D[2] + t2 * D[3]))))
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(r > 1e-12, theta_d / r, 1.0).astype(a.dtype, copy=False)
            return a * scale, b * scale
        k = list(D) + [0.0] * (8 - len(D))
        k1, k2, p1, p2, k3, k4, k5, k6 = k
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        if k4 or k5 or k6:
            radial = radial / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        ab = a * b
        return (a * radial + 2 * p1 * ab + p2 * (r2 + 2 * a * a),
                b * radial + p1 * (r2 + 2 * b * b) + 2 * p2 * ab)

    def field_radius2(self, margin: float = 1.2) -> float:
        """The squared normalised radius (x/z)^2 + (y/z)^2 of the image's furthest border pixel, times ``margin``^2:
        points beyond it are outside the view (and the lens model is not valid there)."""
        w, h = self.width, self.height
        u = np.concatenate([np.arange(w), np.arange(w), np.zeros(h), np.full(h, w - 1)]).astype(np.float64)
        v = np.concatenate([np.zeros(w), np.full(w, h - 1), np.arange(h), np.arange(h)]).astype(np.float64)
        x, y = self.undistort(u, v)
        return float((x * x + y * y).max()) * margin * margin

    def pixel_rays(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) float64 x/z and y/z of the ray through every pixel centre (undistorted, normalised)."""
        v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
        return self.undistort(u, v)

    def undistort(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (any shape) -> normalised undistorted coordinates (x/z, y/z), float64, same shape.

        OpenCV's iterative undistortion (cv2.undistortPointsIter, cv2.fisheye.undistortPoints), run to 1e-12.
        """
        u = np.asarray(u, np.float64)
        K = self.K
        if K[0, 1]:  # OpenCV's undistortion ignores the skew that project() applies: take it out first
            u = u - K[0, 1] * (np.asarray(v, np.float64) - K[1, 2]) / K[1, 1]
        pts = np.stack([u.reshape(-1), np.asarray(v).reshape(-1)], -1).astype(np.float64).reshape(-1, 1, 2)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
        if self.distortion == "equidistant":
            out = cv2.fisheye.undistortPoints(pts, self.K, np.asarray(self.D, np.float64), criteria=criteria)
        else:
            D = np.asarray(self.D, np.float64)
            # OpenCV 4 names the variant that takes a criteria undistortPointsIter; OpenCV 5 folds it in.
            iterate = getattr(cv2, "undistortPointsIter", None)
            out = (iterate(pts, self.K, D, None, None, criteria) if iterate is not None
                   else cv2.undistortPoints(pts, self.K, D, R=None, P=None, criteria=criteria))
        out = out.reshape(-1, 2)
        return out[:, 0].reshape(u.shape), out[:, 1].reshape(u.shape)

    def to_dict(self) -> dict:
        return {"width": int(self.width), "height": int(self.height),
                "K": [[float(x) for x in row] for row in np.asarray(self.K)],
                "distortion_model": self.distortion, "D": [float(d) for d in self.D]}

    @classmethod
    def from_camera_info(cls, width: int, height: int, k: Sequence[float], d: Sequence[float],
                         distortion_model: str, where: str, binning: Sequence[int] = (0, 0),
                         roi: Sequence[int] = (0, 0, 0, 0)) -> CameraModel:
        """From CameraInfo's fields (K row-major 9 values, D, distortion_model); CalibrationError naming ``where``.

        binning (binning_x, binning_y; 0 = 1) and roi (x_offset, y_offset, width, height; all 0 = the full image):
        CameraInfo keeps the full sensor's calibration and says how the published image was cut and binned, so the
        camera returned is the one of the published image: K shifted by the ROI and divided by the binning
        (pixel centres: a binned pixel's centre is the mean of the sensor pixels it sums), size roi / binning.
        """
        K = np.asarray(list(k), np.float64)
        if K.size != 9:
            raise CalibrationError(f"{where}: CameraInfo K has {K.size} values, expected 9")
        K = K.reshape(3, 3)
        bx, by = (max(int(b), 1) for b in binning)
        x0, y0, roi_w, roi_h = (int(r) for r in roi)
        if roi_w and roi_h:
            width, height = roi_w, roi_h
        else:
            x0 = y0 = 0
        if (bx, by, x0, y0) != (1, 1, 0, 0) and K[2, 2] == 1:
            K = K.copy()
            K[0, 2] = (K[0, 2] - x0 - (bx - 1) / 2) / bx
            K[1, 2] = (K[1, 2] - y0 - (by - 1) / 2) / by
            K[0, :2] /= bx
            K[1, 1] /= by
        return cls(int(width) // bx, int(height) // by, K, distortion_model or "none", tuple(d)).check(where)


@dataclass(frozen=True)
class Calibration:
    """How the modality camera's image maps into the RGB camera's.

    mode "homography": ``homography`` (3, 3) RGB pixel -> modality pixel; camera sizes optional.
    mode "rig": both ``rgb`` and ``modal`` cameras and the pose (``rotation`` (3, 3), ``translation`` (3,)
    metres: X_modal = R X_rgb + t). ``source`` names where it came from, for messages. ``rms_px``: the
    reprojection errors a calibration tool reported (informational).
    """

    mode: str
    source: str
    rgb: Optional[CameraModel] = None
    modal: Optional[CameraModel] = None
    rotation: Optional[np.ndarray] = None
    translation: Optional[np.ndarray] = None
    homography: Optional[np.ndarray] = None
    rms_px: Optional[dict] = None
    camera_keys: tuple[str, str] = ("rgb", "modal")  # where the file keeps each camera, for messages

    @property
    def baseline_m(self) -> float:
        """Distance between the two cameras' centres, metres (rig mode)."""
        return float(np.linalg.norm(self.translation)) if self.translation is not None else float("nan")

    def check(self) -> Calibration:
        """This calibration if usable, else CalibrationError naming ``source`` and what to do."""
        where = self.source
        if self.mode not in ("homography", "rig"):
            raise CalibrationError(f"{where}: mode {self.mode!r} is not homography or rig")
        keys = self.camera_keys
        rgb = self.rgb.check(f"{where} {keys[0]} (RGB camera)") if self.rgb is not None else None
        modal = self.modal.check(f"{where} {keys[1]} (modality camera)") if self.modal is not None else None
        rotation = translation = homography = None
        if self.mode == "rig":
            if rgb is None or modal is None:
                raise CalibrationError(f"{where}: registration mode rig needs both cameras' intrinsics (a "
                                       "calibration file with both, or the rgb/camera_info and modal/camera_info "
                                       "topics)")
            rotation = check_rotation(self.rotation, where)
            translation = np.asarray(self.translation, np.float64).reshape(-1)
            if translation.shape != (3,) or not np.isfinite(translation).all():
                raise CalibrationError(f"{where}: translation must be 3 finite numbers (metres), got "
                                       f"{np.asarray(self.translation).tolist()}")
            check_pose(rotation, translation, where)
        if self.homography is not None or self.mode == "homography":
            homography = check_homography(self.homography, where)
        return replace(self, rgb=rgb, modal=modal, rotation=rotation, translation=translation, homography=homography)

    def to_yaml(self) -> str:
        """Our calibration file's text (``sigma_calibration: 1``)."""
        doc: dict[str, Any] = {"sigma_calibration": FORMAT_VERSION, "mode": self.mode}
        if self.rgb is not None:
            doc["rgb"] = self.rgb.to_dict()
        if self.modal is not None:
            doc["modal"] = self.modal.to_dict()
        if self.rotation is not None:
            doc["R_modal_rgb"] = np.asarray(self.rotation).tolist()
            doc["t_modal_rgb"] = np.asarray(self.translation).reshape(-1).tolist()
            doc["baseline_m"] = self.baseline_m
        if self.homography is not None:
            doc["homography_rgb_to_modal"] = np.asarray(self.homography).tolist()
        if self.rms_px:
            doc["rms_px"] = {k: float(v) for k, v in self.rms_px.items()}
        header = ("# Sigma two-camera calibration (sigma_core.data.calibration). X_modal = R_modal_rgb X_rgb + "
                  "t_modal_rgb (metres, optical frames);\n# homography_rgb_to_modal maps RGB pixels to modality "
                  "pixels; K, D in OpenCV order.\n")
        return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def check_rotation(rotation: Any, where: str) -> np.ndarray:
    """(3, 3) float64 rotation matrix, or CalibrationError (non-finite, not orthonormal, a reflection)."""
    R = np.asarray(rotation if rotation is not None else np.full((3, 3), np.nan), np.float64)
    if R.shape != (3, 3) or not np.isfinite(R).all():
        raise CalibrationError(f"{where}: rotation must be a finite 3x3 matrix, got {R.tolist()}")
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or abs(np.linalg.det(R) - 1) > 1e-4:
        raise CalibrationError(f"{where}: rotation {R.tolist()} is not a rotation matrix (R R^T = I, det 1); "
                               "check the file (a transposed or scaled matrix?) or recalibrate")
    return R


def check_pose(rotation: np.ndarray, translation: np.ndarray, where: str) -> None:
    """CalibrationError when a checked rotation and translation cannot be two cameras registered into one view:
    optical axes more than 90 degrees apart (a quaternion in the wrong order) or a baseline over MAX_BASELINE_M (a
    translation in millimetres)."""
    axes_deg = math.degrees(math.acos(min(1.0, max(-1.0, float(rotation[2, 2])))))
    if axes_deg > MAX_AXES_ANGLE_DEG:  # R[2, 2]: cosine between the two optical axes (a roll about them is fine)
        raise CalibrationError(f"{where}: the modality camera's optical axis is {axes_deg:.0f} degrees from the RGB "
                               "camera's, so they cannot see one scene: a quaternion given as [qw, qx, qy, qz] "
                               "instead of [qx, qy, qz, qw], or the transform of other frames? Check the rotation")
    baseline = float(np.linalg.norm(translation))
    if baseline > MAX_BASELINE_M:
        raise CalibrationError(f"{where}: the cameras are {baseline:g} m apart (translation {translation.tolist()}): "
                               "the translation must be in metres; millimetres (or target squares, "
                               "cv2.stereoCalibrate's units) were given? Convert it, or recalibrate with the target "
                               "spacing in metres")


def check_homography(homography: Any, where: str) -> np.ndarray:
    """(3, 3) float64 homography normalised to H[2, 2] = 1 where possible, or CalibrationError."""
    H = np.asarray(homography if homography is not None else np.full((3, 3), np.nan), np.float64)
    if H.shape != (3, 3) or not np.isfinite(H).all():
        raise CalibrationError(f"{where}: homography must be a finite 3x3 matrix (9 numbers, RGB pixel -> "
                               f"modality pixel), got {H.tolist()}")
    s = np.linalg.svd(H, compute_uv=False)
    if not s[0] > 0 or s[-1] / s[0] < 1e-12:
        raise CalibrationError(f"{where}: homography {H.tolist()} is singular: recalibrate (sigma-calibrate)")
    return H / H[2, 2] if abs(H[2, 2]) > 1e-12 else H


def quaternion_to_rotation(q: Sequence[float], where: str) -> np.ndarray:
    """[qx, qy, qz, qw] (ROS order; normalised here) -> (3, 3) rotation; CalibrationError when not finite or its norm
    is more than 1 % from 1 (tf2's tolerance)."""
    q = np.asarray(list(q), np.float64)
    n = float(np.linalg.norm(q)) if q.shape == (4,) else 0.0
    if q.shape != (4,) or not np.isfinite(q).all() or n < 1e-9:
        raise CalibrationError(f"{where}: a quaternion is [qx, qy, qz, qw] with a non-zero norm, got {q.tolist()}")
    if abs(n - 1) > 0.01:  # tf2 refuses such a transform too (TF_DENORMALIZED_QUATERNION)
        raise CalibrationError(f"{where}: quaternion {q.tolist()} has norm {n:.4g}, not 1: give a unit quaternion "
                               "[qx, qy, qz, qw] (angles, or a typo?)")
    x, y, z, w = q / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose_from_transform(translation: Sequence[float], quaternion: Sequence[float], where: str
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The modality camera's pose in the RGB camera's optical frame, as a static transform gives it (parent = RGB
    optical frame, child = modality optical frame: X_rgb = R(q) X_modal + t) -> (R, t) with X_modal = R X_rgb + t."""
    t = np.asarray(list(translation), np.float64)
    if t.shape != (3,) or not np.isfinite(t).all():
        raise CalibrationError(f"{where}: translation must be [x, y, z] in metres, got {t.tolist()}")
    R_rgb_modal = quaternion_to_rotation(quaternion, where)
    return R_rgb_modal.T, -R_rgb_modal.T @ t


# --- files --------------------------------------------------------------------------------------------------------


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read and check a calibration file (Kalibr camchain, OpenCV stereo YAML or ours; told apart by content).

    Raises CalibrationError naming the file, the key and what to do (missing file, unknown format, bad values).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CalibrationError(f"calibration file {str(path)!r} does not exist; give the file sigma-calibrate "
                               "(or Kalibr, or cv2.stereoCalibrate) wrote")
    # Read here, not with sigma_core.files (which imports torch): an ONNX-only node reads calibrations too.
    text = path.read_text(errors="replace")
    # OpenCV's own YAML dialect ("%YAML:1.0", "!!opencv-matrix") is not YAML PyYAML reads; a standard "%YAML 1.x"
    # directive is.
    if text.lstrip().startswith("%YAML:") or "!!opencv-matrix" in text:
        return _load_opencv(path).check()
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as e:
        raise CalibrationError(f"{path} is not valid YAML; fix it where the parser stopped: {e}") from None
    if not isinstance(doc, dict):
        raise CalibrationError(f"{path} must hold a mapping of keys (a calibration), got {type(doc).__name__}")
    if "sigma_calibration" in doc:
        return _load_ours(path, doc).check()
    if "cam0" in doc and "cam1" in doc:
        return _load_kalibr(path, doc).check()
    if ("K1" in doc or "M1" in doc) and "R" in doc:  # OpenCV's keys written as plain lists
        return _load_opencv(path, doc).check()
    raise CalibrationError(
        f"{path}: not a calibration this tool reads (keys {sorted(doc)[:8]}): expected Kalibr's camchain "
        "(cam0, cam1), OpenCV's stereo YAML (K1, D1, K2, D2, R, T) or sigma-calibrate's (sigma_calibration)"
    )


def save_calibration(calibration: Calibration, path: str | os.PathLike) -> Path:
    """Write ``calibration`` in our format, atomically. Returns the path."""
    from ..files import atomic_write_text

    return atomic_write_text(path, calibration.to_yaml())


def _key(doc: dict, key: str, where: str) -> Any:
    if key not in doc:
        raise CalibrationError(f"{where}: missing key {key!r}")
    return doc[key]


def _numbers(value: Any, count: Optional[int], where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: expected numbers, got {value!r}") from None
    if count is not None and arr.size != count:
        raise CalibrationError(f"{where}: expected {count} numbers, got {arr.size}")
    return arr


def _load_ours(path: Path, doc: dict) -> Calibration:
    if doc.get("sigma_calibration") != FORMAT_VERSION:
        raise CalibrationError(f"{path}: sigma_calibration version {doc.get('sigma_calibration')!r} is not "
                               f"{FORMAT_VERSION}; rewrite it with this sigma-calibrate")
    mode = doc.get("mode", "rig")

    def camera(name: str) -> Optional[CameraModel]:
        cam = doc.get(name)
        if cam is None:
            return None
        where = f"{path} {name}"
        if not isinstance(cam, dict):
            raise CalibrationError(f"{where}: expected a mapping (width, height, K, distortion_model, D)")
        K = _numbers(_key(cam, "K", where), 9, f"{where}.K").reshape(3, 3)
        return CameraModel(int(_key(cam, "width", where)), int(_key(cam, "height", where)), K,
                           str(cam.get("distortion_model", "none")), tuple(_numbers(cam.get("D", []), None, where)))

    rotation = translation = homography = None
    if "R_modal_rgb" in doc:
        rotation = _numbers(doc["R_modal_rgb"], 9, f"{path} R_modal_rgb").reshape(3, 3)
        translation = _numbers(_key(doc, "t_modal_rgb", str(path)), 3, f"{path} t_modal_rgb")
    if "homography_rgb_to_modal" in doc:
        homography = _numbers(doc["homography_rgb_to_modal"], 9, f"{path} homography_rgb_to_modal").reshape(3, 3)
    return Calibration(mode, str(path), camera("rgb"), camera("modal"), rotation, translation, homography,
                       doc.get("rms_px"))


def _load_kalibr(path: Path, doc: dict) -> Calibration:
    cams = []
    for name in ("cam0", "cam1"):
        cam = doc[name]
        where = f"{path} {name}"
        if not isinstance(cam, dict):
            raise CalibrationError(f"{where}: expected a camera mapping")
        model = str(cam.get("camera_model", "pinhole"))
        if model != "pinhole":
            raise CalibrationError(f"{where}: camera_model {model!r} is not supported (pinhole only): recalibrate "
                                   "with Kalibr's pinhole-radtan or pinhole-equi")
        fu, fv, pu, pv = _numbers(_key(cam, "intrinsics", where), 4, f"{where}.intrinsics")
        w, h = (int(x) for x in _numbers(_key(cam, "resolution", where), 2, f"{where}.resolution"))
        K = np.array([[fu, 0, pu], [0, fv, pv], [0, 0, 1.0]])
        D = tuple(_numbers(cam.get("distortion_coeffs", []), None, f"{where}.distortion_coeffs"))
        cams.append(CameraModel(w, h, K, str(cam.get("distortion_model", "none")), D))
    T = _numbers(_key(doc["cam1"], "T_cn_cnm1", f"{path} cam1"), 16, f"{path} cam1.T_cn_cnm1").reshape(4, 4)
    if np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-6:  # a transposed matrix would read as a zero baseline
        raise CalibrationError(f"{path} cam1.T_cn_cnm1: the last row must be [0, 0, 0, 1], got {T[3].tolist()} (a "
                               "transposed matrix?): write the 4x4 transform row by row, as Kalibr does")
    return Calibration("rig", str(path), cams[0], cams[1], T[:3, :3], T[:3, 3], camera_keys=("cam0", "cam1"))


def _load_opencv(path: Path, doc: Optional[dict] = None) -> Calibration:
    """cv2.FileStorage's file (``doc`` None), or the same keys as plain YAML lists (``doc``, the parsed mapping)."""
    if doc is None:
        try:
            fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        except (cv2.error, SystemError) as e:  # the Python binding raises SystemError for some parse errors
            raise CalibrationError(f"{path}: OpenCV cannot parse it ({' '.join(str(e).split())[:200]})") from None
    else:
        fs = None
    try:
        def mat(*names: str) -> Optional[np.ndarray]:
            for name in names:
                if fs is None:
                    if name in doc:
                        return _numbers(doc[name], None, f"{path} {name}")
                    continue
                node = fs.getNode(name)
                if not node.empty():
                    m = node.mat()
                    return np.asarray(m if m is not None else node.real(), np.float64)
            return None

        def number(name: str) -> Optional[int]:
            if fs is None:
                return int(_numbers(doc[name], 1, f"{path} {name}")[0]) if name in doc else None
            node = fs.getNode(name)
            return None if node.empty() else int(node.real())

        def text(name: str) -> str:
            if fs is None:
                return str(doc.get(name) or "")
            node = fs.getNode(name)
            return "" if node.empty() else str(node.string())

        found = {n: mat(*names) for n, names in (("K1", ("K1", "M1")), ("D1", ("D1",)), ("K2", ("K2", "M2")),
                                                 ("D2", ("D2",)), ("R", ("R",)), ("T", ("T",)))}
        missing = [n for n, v in found.items() if v is None]
        if missing:
            raise CalibrationError(f"{path}: OpenCV stereo calibration lacks {', '.join(missing)} (needs K1, D1, "
                                   "K2, D2, R, T as cv2.stereoCalibrate returns them; camera 1 = RGB)")
        sizes = [number(n) for n in ("image_width1", "image_height1", "image_width2", "image_height2")]
        if None in sizes:  # one image size for both (the OpenCV stereo sample's "imageSize")
            size = mat("imageSize", "image_size")
            if size is None or size.size != 2:
                raise CalibrationError(f"{path}: no image sizes: add image_width1, image_height1, image_width2, "
                                       "image_height2 (the resolutions the cameras were calibrated at)")
            sizes = [int(size.reshape(-1)[0]), int(size.reshape(-1)[1])] * 2
        model = text("distortion_model") or "radtan"
        homography = mat("homography", "H")
    finally:
        if fs is not None:
            fs.release()
    K1, K2 = (_numbers(found[n], 9, f"{path} {n} (a 3x3 camera matrix)").reshape(3, 3) for n in ("K1", "K2"))
    R = found["R"].reshape(-1)
    if R.size == 3:  # a rotation vector (Rodrigues), as cv2.stereoRectify also accepts
        R = cv2.Rodrigues(R)[0]
    R = _numbers(R, 9, f"{path} R (a 3x3 rotation matrix or a 3-element rotation vector)").reshape(3, 3)
    T = _numbers(found["T"], 3, f"{path} T (metres)")
    if homography is not None:
        homography = _numbers(homography, 9, f"{path} homography (a 3x3 matrix)").reshape(3, 3)
    cams = [CameraModel(sizes[0], sizes[1], K1, model, tuple(found["D1"].reshape(-1))),
            CameraModel(sizes[2], sizes[3], K2, model, tuple(found["D2"].reshape(-1)))]
    return Calibration("rig", str(path), cams[0], cams[1], R, T, homography, camera_keys=("K1/D1", "K2/D2"))


__all__ = [
    "DISTORTION_MODELS",
    "MAX_BASELINE_M",
    "REGISTRATION_MODES",
    "Calibration",
    "CalibrationError",
    "CameraModel",
    "check_homography",
    "check_pose",
    "check_rotation",
    "load_calibration",
    "pose_from_transform",
    "quaternion_to_rotation",
    "save_calibration",
]
