"""Synthetic two-camera rigs: the modality camera's view, registered with the rig's true calibration, lands on
the RGB camera's own view of the same scene."""
from __future__ import annotations

import cv2
import numpy as np

from sigma_core.data.calibration import load_calibration
from sigma_core.data.modality import ModalityScaling
from sigma_core.data.registration import Registration
from sigma_core.data.synthetic import Scene, write_bag
from sigma_core.data.synthetic_rig import separate_rig


def test_depth_seen_by_the_second_camera_and_reprojected_matches_the_rgb_cameras_depth():
    rig = separate_rig((90, 160), (96, 120), baseline_m=0.3)  # 16:9 RGB, 5:4 distorted depth camera
    scene = Scene.random(seed=3, size=rig.rgb.size)
    rgb_view = scene.render(0.5, noise_seed=1)
    modal_view = rig.render_modal(scene, 0.5, noise_seed=1)
    assert modal_view.depth.shape == (96, 120) and rgb_view.depth.shape == (90, 160)
    registered = Registration("rig", rig.calibration(), ModalityScaling("depth"))(modal_view.depth, (90, 160))
    both = np.isfinite(registered.image) & (rgb_view.depth > 0)
    assert both.mean() > 0.8
    # A depth pixel spans 1.6 RGB pixels: its value is the depth the RGB camera sees within a pixel or two (on the
    # ground, depth changes by ~2 % a row), give or take the sensor noise.
    metres = np.where(rgb_view.depth > 0, rgb_view.depth / 1000.0, np.nan).astype(np.float32)
    kernel = np.ones((5, 5), np.uint8)
    low = cv2.erode(np.nan_to_num(metres, nan=np.inf), kernel)
    high = cv2.dilate(np.nan_to_num(metres, nan=0.0), kernel)
    got = registered.image[both]
    close = (got >= low[both] * 0.98 - 0.05) & (got <= high[both] * 1.02 + 0.05)
    assert close.mean() > 0.99, close.mean()  # no baseline: 0.98, the baseline reversed: 0.94


def test_a_rig_bag_carries_both_cameras_and_its_truth(tmp_path):
    rig = separate_rig((60, 80), (48, 64), baseline_m=0.1)
    rec = write_bag(tmp_path / "rig_bag", seconds=0.4, modality="depth", rig=rig)
    truth = load_calibration(f"{rec.path}.rig.yaml")
    assert truth.modal.size == (48, 64) and truth.rgb.size == (60, 80)
    np.testing.assert_allclose(truth.translation, [-0.1, 0.0, 0.0])
    assert truth.modal.distortion == "radtan"
