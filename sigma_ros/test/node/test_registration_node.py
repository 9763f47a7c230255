"""Registration in the live node: a real node process, a thermal camera of another size beside the RGB one.

Rig mode from CameraInfo waits for both CameraInfo topics (publishing nothing, naming them), then
registers and reports the coverage in segmentation/stats; a calibration for other image sizes is never
applied (nothing published, the file and both sizes named); an unusable calibration file stops the node at
start-up with exit 2 and one line.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from node_helpers import PROFILE, H, W, Streams, image, start_node  # noqa: E402, I001
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from sigma_core.data.bags import stamp_ns  # noqa: E402
from sigma_core.data.calibration import Calibration, CameraModel, save_calibration  # noqa: E402
from sigma_core.data.modality import ModalityScaling  # noqa: E402
from sigma_core.data.registration import Registration  # noqa: E402
from sigma_msgs.msg import SegmentationStats  # noqa: E402

from ros_tools import private_domain_id  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own
HM, WM = 40, 40  # the thermal camera: square, another size and aspect than the 64x80 RGB
K_RGB = [60.0, 0.0, 39.5, 0.0, 60.0, 31.5, 0.0, 0.0, 1.0]
K_MODAL = [30.0, 0.0, 19.5, 0.0, 30.0, 19.5, 0.0, 0.0, 1.0]


def camera_info(width, height, k, binning=0, roi=(0, 0, 0, 0)) -> CameraInfo:
    info = CameraInfo(width=width, height=height, k=k, d=[-0.05, 0.01, 0.0, 0.0, 0.0], distortion_model="plumb_bob",
                      binning_x=binning, binning_y=binning)
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = roi
    return info


# As drivers publish them: the full sensor's calibration, and how the published image was binned or cut (REP 104).
# The RGB camera bins 2x2 a 160x128 sensor (K_RGB is the binned image's); the thermal camera sends a 40x40 region at
# (10, 5) of a 60x50 sensor.
RGB_INFO = dict(width=2 * W, height=2 * H, k=[120.0, 0.0, 79.5, 0.0, 120.0, 63.5, 0.0, 0.0, 1.0], binning=2)
MODAL_INFO = dict(width=60, height=50, k=[30.0, 0.0, 29.5, 0.0, 30.0, 24.5, 0.0, 0.0, 1.0], roi=(10, 5, WM, HM))


def test_rig_from_camera_info_waits_for_both_then_registers_and_reports_coverage(tmp_path_factory, checkpoints,
                                                                                  harness):
    node = start_node(tmp_path_factory, "/r", {"checkpoint": checkpoints["thermal"], "registration.mode": "rig",
                                               "registration.translation": "[0.5, 0.0, 0.0]",
                                               "registration.distance_m": 2.0, "diagnostics.period_s": 0.5},
                      DOMAIN_ID)
    try:
        harness.subscribe(DiagnosticArray, "/diagnostics")
        harness.subscribe(Image, "/r/segmentation/mask")
        harness.subscribe(SegmentationStats, "/r/segmentation/stats")
        streams = Streams(harness, "/r")
        rgb_info = harness.publisher(CameraInfo, "/r/rgb/camera_info")
        thermal = streams.thermal_frame((HM, WM))
        # an uncalibrated driver's all-zero K is refused, and the wait says so rather than "nothing arrived"
        waited = ("nothing usable has arrived on /r/rgb/camera_info (the last one there was refused: intrinsics need "
                  "fx, fy > 0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and waited not in node.log():
            rgb_info.publish(camera_info(W, H, [0.0] * 9))
            s = time.time_ns()
            streams.rgb.publish(image(streams.rgb_frame(), "rgb8", s))
            streams.modal.publish(image(thermal, "mono16", s))
            time.sleep(0.1)
        assert waited in node.log() and "and /r/modal/camera_info yet" in node.log(), node.log()
        assert "frame not published" in node.log() and "bad_camera_info" in node.log(), node.log()
        assert not harness.messages("/r/segmentation/mask")  # nothing while the intrinsics are unknown

        def diagnosed():  # /diagnostics says it too: WARN (or ERROR once stalled), naming the topics
            for array in harness.messages("/diagnostics"):
                for status in array.status:
                    level = status.level if isinstance(status.level, int) else ord(status.level)  # a byte in rclpy
                if "/r/sigma_segmentation" in status.name and level >= 1 and any(
                            v.key == "last waiting_for_camera_info" and "/r/rgb/camera_info" in v.value
                            for v in status.values):
                        return True
            return False

        assert harness.wait_for(diagnosed, 5), node.log()

        sent = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not harness.messages("/r/segmentation/stats"):
            rgb_info.publish(camera_info(**RGB_INFO))
            streams.info.publish(camera_info(**MODAL_INFO))
            sent = time.time_ns()
            streams.rgb.publish(image(streams.rgb_frame(), "rgb8", sent))
            streams.modal.publish(image(thermal, "mono16", sent))
            time.sleep(0.1)
        stats = harness.messages("/r/segmentation/stats")
        assert stats, node.log()
        cal = Calibration("rig", "test", CameraModel.from_camera_info(W, H, K_RGB, [-0.05, 0.01, 0, 0, 0], "plumb_bob",
                                                                      "rgb"),
                          CameraModel.from_camera_info(WM, HM, K_MODAL, [-0.05, 0.01, 0, 0, 0], "plumb_bob", "m"),
                          np.eye(3), np.array([-0.5, 0.0, 0.0]))  # X_modal = X_rgb - (0.5, 0, 0)
        expected = Registration("rig", cal, ModalityScaling("thermal"), 2.0)(thermal, (H, W)).coverage
        assert 0.3 < expected < 0.9
        assert stats[-1].modality_coverage == pytest.approx(expected, abs=1e-6)
        masks = harness.messages("/r/segmentation/mask")
        assert masks and masks[-1].width == W and masks[-1].height == H and stamp_ns(masks[-1]) <= sent
        if expected < 0.5:
            assert node.wait_log("low_coverage", 5), node.log()
    finally:
        node.kill()


def test_a_calibration_for_other_image_sizes_is_never_applied(tmp_path_factory, checkpoints, harness):
    root = tmp_path_factory.mktemp("cal")
    path = root / "rig.yaml"
    K = np.array([[60.0, 0, 39.5], [0, 60.0, 31.5], [0, 0, 1]])
    save_calibration(Calibration("rig", "x", CameraModel(W, H, K), CameraModel(32, 24, K / 2 + np.diag([0, 0, .5])),
                                 np.eye(3), np.array([0.06, 0.0, 0.0])), path)
    node = start_node(tmp_path_factory, "/s", {"checkpoint": checkpoints["thermal"], "registration.mode": "rig",
                                               "registration.calibration_file": str(path)}, DOMAIN_ID)
    try:
        assert f"registration rig from {path}" in node.log()
        harness.subscribe(Image, "/s/segmentation/mask")
        streams = Streams(harness, "/s")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "registration_error" not in node.log():
            s = time.time_ns()
            streams.rgb.publish(image(streams.rgb_frame(), "rgb8", s))
            streams.modal.publish(image(streams.thermal_frame((HM, WM)), "mono16", s))
            time.sleep(0.1)
        log = node.log()
        assert (f"{path}: calibrated for a modality image of 32x24 but the modality image is {WM}x{HM}" in log
                and "frame not published" in log), log
        assert not harness.messages("/s/segmentation/mask")
    finally:
        node.kill()


def run_node(args, timeout=120):
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sigma_ros.node", "--ros-args", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_an_unusable_calibration_file_exits_2_with_one_line(tmp_path, checkpoints):
    bad = tmp_path / "camchain.yaml"
    bad.write_text("cam0:\n  intrinsics: [60, 60, 39.5, 31.5]\n  resolution: [80, 64]\n  distortion_model: radtan\n"
                   "  distortion_coeffs: [0.1, 0, 0, 0]\ncam1:\n  intrinsics: [30, 30, 19.5, 19.5]\n"
                   "  resolution: [40, 40]\n  distortion_model: omni\n  distortion_coeffs: [0.1]\n"
                   "  T_cn_cnm1: [[1, 0, 0, 0.06], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]\n")
    # (parameters that contradict each other are refused by the same parse: test_parameters.py)
    result = run_node(["-p", f"checkpoint:={checkpoints['thermal']}", "-p", f"warmup.size:=[{H}, {W}]",
                       "-p", "registration.mode:=rig", "-p", f"registration.calibration_file:={bad}"])
    out = result.stdout + result.stderr
    expected = f"parameter registration.calibration_file: {bad} cam1 (modality camera): unknown distortion model 'omni'"
    assert result.returncode == 2 and expected in out and "Traceback" not in out, out
    assert "loading checkpoint" not in out  # refused before the model is loaded


def test_a_quaternion_in_wxyz_order_stops_the_node_at_start_up(checkpoints):
    # identity written [qw, qx, qy, qz]: read as [qx, qy, qz, qw], the thermal camera would look backwards and every
    # frame would go out without thermal
    result = run_node(["-p", f"checkpoint:={checkpoints['thermal']}", "-p", "registration.mode:=rig",
                       "-p", "registration.translation:=[0.06, 0.0, 0.0]",
                       "-p", "registration.rotation:=[1.0, 0.0, 0.0, 0.0]"])
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in out, out
    assert "parameters registration.translation/rotation: the modality camera's optical axis is 180 degrees" in out
    assert "loading checkpoint" not in out
