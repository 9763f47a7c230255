"""Where the node's registration comes from: the registration.* parameters, a calibration file, or CameraInfo.

Mode none needs nothing; a calibration file (or registration.homography) gives the registration at
configure; rig mode without a file takes both cameras' intrinsics from ``rgb/camera_info`` and
``modal/camera_info`` and the pose from registration.translation/rotation, so until both have arrived
there is no registration and the node publishes nothing (it says which topic it waits for). The
geometry itself is sigma_core's (``sigma_core.data.registration``). Imports no ROS: CameraInfo fields in.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from sigma_core.data.calibration import (
    Calibration,
    CalibrationError,
    CameraModel,
    load_calibration,
    pose_from_transform,
)
from sigma_core.data.modality import ModalityScaling
from sigma_core.data.registration import Registration

from ..errors import ConfigError
from ..segmentation_step import load_registration
from .parameters import NodeConfig
from .point_cloud import Pinhole

RGB, MODAL = 0, 1
CAMERA_INFO_TOPICS = ("rgb/camera_info", "modal/camera_info")


def check_calibration_file(cfg: NodeConfig) -> None:
    """ConfigError naming registration.calibration_file when it cannot be used: checked before the (slow) model
    load, so a typo in the file or its path is reported at once."""
    if cfg.calibration_file is None:
        return
    try:
        load_calibration(cfg.calibration_file)
    except CalibrationError as e:
        raise ConfigError(f"parameter registration.calibration_file: {e}") from None


class RegistrationSource:
    """The current Registration for a configuration and the model's scaling; ConfigError from the constructor
    when the calibration file or parameters cannot be used (naming the parameter)."""

    def __init__(self, cfg: NodeConfig, scaling: ModalityScaling):
        self.cfg, self.scaling = cfg, scaling
        self.cameras: list[Optional[CameraModel]] = [None, None]
        self.registration: Optional[Registration] = None
        self._points_camera: Optional[tuple] = None  # (the registration it belongs to, (Pinhole, rays))
        self.from_camera_info = cfg.registration_mode == "rig" and cfg.calibration_file is None
        if self.from_camera_info:
            return
        if cfg.registration_homography is not None:
            H = np.asarray(cfg.registration_homography, np.float64).reshape(3, 3)
            calibration = Calibration("homography", "parameter registration.homography", homography=H)
            try:
                self.registration = Registration("homography", calibration, scaling, cfg.registration_distance_m)
            except CalibrationError as e:
                raise ConfigError(str(e)) from None
            return
        try:
            self.registration = load_registration(cfg.registration_mode, cfg.calibration_file, scaling,
                                                   cfg.registration_distance_m)
        except ConfigError as e:
            raise ConfigError(f"parameter registration.calibration_file: {e}") from None

    @property
    def mode(self) -> str:
        return self.cfg.registration_mode

    def needs_camera_info(self) -> tuple[bool, bool]:
        """(rgb/camera_info, modal/camera_info): which CameraInfo topics the registration needs."""
        return (self.from_camera_info, self.from_camera_info)

    def waiting_for(self, topics: Sequence[str]) -> list[str]:
        """The CameraInfo ``topics`` (resolved names, RGB first) that must still arrive before frames can be
        registered."""
        if self.registration is not None:
            return []
        return [topic for topic, camera in zip(topics, self.cameras) if camera is None]

    def camera_info(self, stream: int, msg: Any, where: str) -> None:
        """A CameraInfo for ``stream`` (RGB / MODAL): rebuild the registration when the camera changed.
        CalibrationError naming ``where`` (the topic) when it is unusable (uncalibrated, unknown distortion)."""
        if not self.from_camera_info:
            return
        camera = CameraModel.from_camera_info(msg.width, msg.height, msg.k, msg.d, msg.distortion_model, where)
        old = self.cameras[stream]
        if old is not None and _same(old, camera):
            return
        self.cameras[stream] = camera
        if None in self.cameras:
            return
        cfg = self.cfg
        source = (f"{CAMERA_INFO_TOPICS[0]} + {CAMERA_INFO_TOPICS[1]} + parameters registration.translation/"
                  "rotation")
        R, t = pose_from_transform(cfg.registration_translation, cfg.registration_rotation or (0, 0, 0, 1),
                                   "parameters registration.translation/rotation")
        calibration = Calibration("rig", source, self.cameras[RGB], self.cameras[MODAL], R, t)
        self.registration = Registration("rig", calibration, self.scaling, cfg.registration_distance_m)

    def points_camera(self) -> Optional[tuple[Pinhole, tuple[np.ndarray, np.ndarray]]]:
        """For depth reprojected into the RGB view: the RGB camera (pinhole part, and each pixel's ray with its
        distortion) that segmentation/points back-projects with; None otherwise."""
        reg = self.registration
        if reg is None or not reg.reprojects_depth:
            return None
        if self._points_camera is None or self._points_camera[0] is not reg:  # computed once per registration
            rgb = reg.calibration.rgb
            rays = tuple(r.astype(np.float32) for r in rgb.pixel_rays())
            K = rgb.K
            self._points_camera = reg, (Pinhole(K[0, 0], K[1, 1], K[0, 2], K[1, 2], rgb.width, rgb.height), rays)
        return self._points_camera[1]


def _same(a: CameraModel, b: CameraModel) -> bool:
    return (a.size == b.size and a.distortion == b.distortion and np.array_equal(a.K, b.K)
            and tuple(a.D) == tuple(b.D))


__all__ = ["CAMERA_INFO_TOPICS", "MODAL", "RGB", "RegistrationSource", "check_calibration_file"]
