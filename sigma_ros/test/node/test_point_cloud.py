"""point_cloud: back-projection of valid depth pixels with labels, and the PointCloud2 layout."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
from ros_tools import require  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sigma_ros.node import point_cloud  # noqa: E402
from sigma_ros.node.point_cloud import (  # noqa: E402
    POINT_DTYPE,
    Pinhole,
    depth_to_metres,
    labelled_points,
    pack_rgb,
    points_to_cloud_msg,
)

H, W = 6, 8
CAMERA = Pinhole(fx=50.0, fy=40.0, cx=3.5, cy=2.5, width=W, height=H)


def _scene(depth):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (H, W)).astype(np.uint8)
    conf = rng.random((H, W)).astype(np.float32)
    return labelled_points(depth, CAMERA, rgb, mask, conf), rgb, mask, conf


def test_millimetres_and_metres_agree_and_invalid_pixels_are_skipped():
    mm = np.full((H, W), 2000, np.uint16)
    mm[0, :3] = 0
    metres = mm.astype(np.float32) / 1000
    metres[0, :3] = [0.0, np.nan, np.inf]
    p_mm, *_ = _scene(mm)
    p_m, *_ = _scene(metres)
    assert len(p_mm) == len(p_m) == H * W - 3
    for name in ("x", "y", "z", "label"):
        np.testing.assert_allclose(p_mm[name], p_m[name])
    m, valid = depth_to_metres(mm)
    assert m.dtype == np.float32 and valid.sum() == H * W - 3 and m[1, 1] == pytest.approx(2.0)


def test_points_follow_the_pinhole_model_and_carry_the_mask():
    depth = (np.arange(H * W, dtype=np.float32).reshape(H, W) + 1) * 0.1
    points, rgb, mask, conf = _scene(depth)
    assert points.dtype == POINT_DTYPE and len(points) == H * W
    for v, u in [(0, 0), (2, 5), (5, 7)]:
        p = points[v * W + u]  # row-major order
        z = depth[v, u]
        assert p["x"] == pytest.approx((u - CAMERA.cx) * z / CAMERA.fx, rel=1e-6)
        assert p["y"] == pytest.approx((v - CAMERA.cy) * z / CAMERA.fy, rel=1e-6)
        assert p["z"] == pytest.approx(z)
        assert p["label"] == mask[v, u] and p["confidence"] == conf[v, u]
        packed = np.float32(p["rgb"]).view(np.uint32)
        assert [(packed >> 16) & 255, (packed >> 8) & 255, packed & 255] == list(rgb[v, u])


def test_smaller_depth_samples_the_mask_at_the_nearest_pixel():
    depth = np.ones((H // 2, W // 2), np.float32)
    rgb = np.zeros((H, W, 3), np.uint8)
    mask = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    points = labelled_points(depth, CAMERA, rgb, mask, np.ones((H, W), np.float32))
    assert len(points) == depth.size
    assert points["label"][0] == mask[1, 1] and points["label"][-1] == mask[H - 1, W - 1]
    # The intrinsics were halved with the image: the principal point stays at the same ray.
    half = CAMERA.scaled_to(W // 2, H // 2)
    assert half.fx == 25.0 and half.cx == pytest.approx(1.5)


def test_camera_info_is_read_and_uncalibrated_is_refused():
    info = CameraInfo(width=W, height=H, k=[50.0, 0.0, 3.5, 0.0, 40.0, 2.5, 0.0, 0.0, 1.0])
    assert Pinhole.from_camera_info(info) == CAMERA
    with pytest.raises(ValueError, match="not calibrated"):
        Pinhole.from_camera_info(CameraInfo(width=W, height=H))
    for k, match in [([float("inf"), 0, 1, 0, 1, 1, 0, 0, 1], "not calibrated"),
                     ([1, 0, float("nan"), 0, 1, 1, 0, 0, 1], "finite principal point")]:
        with pytest.raises(ValueError, match=match):  # an infinite fx gave points at infinity / NaN
            Pinhole.from_camera_info(CameraInfo(width=W, height=H, k=[float(v) for v in k]))


def test_numpy_builder_writes_the_declared_layout(monkeypatch):
    monkeypatch.setattr(point_cloud, "_pc2", None)  # the builder used where sensor_msgs_py is missing
    points, *_ = _scene(np.full((H, W), 1.5, np.float32))
    msg = points_to_cloud_msg(points, Header(frame_id="depth_optical"))
    assert (msg.height, msg.width, msg.point_step) == (1, H * W, 24)
    assert msg.row_step == 24 * H * W and len(msg.data) == msg.row_step and msg.is_dense
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("rgb", 12, 7), ("label", 16, 4), ("confidence", 20, 7)
    ]
    back = np.frombuffer(bytes(msg.data), POINT_DTYPE)
    np.testing.assert_array_equal(back, points)
    assert msg.header.frame_id == "depth_optical"


def test_sensor_msgs_py_reads_our_cloud():
    pc2 = require("sensor_msgs_py.point_cloud2")
    points, *_ = _scene(np.full((H, W), 1.5, np.float32))
    msg = points_to_cloud_msg(points, Header())
    read = pc2.read_points(msg)  # every field, by the message's own field table
    assert read.dtype.names == POINT_DTYPE.names and len(read) == len(points) == msg.width * msg.height
    for name in POINT_DTYPE.names:  # bit for bit, packed rgb float included
        np.testing.assert_array_equal(np.ascontiguousarray(read[name]).view(np.uint8),
                                      np.ascontiguousarray(points[name]).view(np.uint8), name)
    xyz = pc2.read_points_numpy(msg, field_names=("x", "y", "z"), skip_nans=True)
    np.testing.assert_array_equal(xyz, np.stack([points["x"], points["y"], points["z"]], -1))


def test_pack_rgb_matches_the_pcl_convention():
    packed = pack_rgb(np.array([[255, 128, 1]], np.uint8))
    assert packed.dtype == np.float32 and int(packed.view(np.uint32)[0]) == 0xFF8001


def test_points_of_a_depth_image_registered_into_a_distorted_rgb_camera_land_on_the_surface():
    """The depth camera sees a plane 2 m in front of it; its image is reprojected into a distorted, rotated RGB
    camera (the node's rig mode) and back-projected with that camera's rays: every point lies on the plane."""
    import cv2

    from sigma_core.data.calibration import Calibration, CameraModel
    from sigma_core.data.modality import ModalityScaling
    from sigma_core.data.registration import Registration
    from sigma_ros.node.parameters import parse_node_config
    from sigma_ros.node.registration_source import RegistrationSource

    rgb_cam = CameraModel(48, 36, np.array([[40.0, 0, 23.6], [0, 41.0, 17.3], [0, 0, 1]]), "radtan",
                          (-0.25, 0.06, 0.001, -0.001, 0.0))
    depth_cam = CameraModel(40, 30, np.array([[42.0, 0, 19.5], [0, 42.0, 14.5], [0, 0, 1]]))
    R, t = cv2.Rodrigues(np.array([0.03, -0.05, 0.02]))[0], np.array([0.05, 0.01, 0.0])
    cal = Calibration("rig", "rig", rgb_cam, depth_cam, R, t).check()
    scaling = ModalityScaling("depth")
    depth = np.full((30, 40), 2000, np.uint16)
    registered = Registration("rig", cal, scaling)(depth, (36, 48))
    assert registered.coverage > 0.5

    source = RegistrationSource(parse_node_config({"registration.mode": "none"}), scaling)
    source.registration = Registration("rig", cal, scaling)  # as a calibration file gives it
    camera, rays = source.points_camera()
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 4, (36, 48)).astype(np.uint8)
    points = labelled_points(registered.image, camera, np.zeros((36, 48, 3), np.uint8), mask,
                             np.ones((36, 48), np.float32), rays)
    assert len(points) == np.isfinite(registered.image).sum()
    xyz = np.column_stack([points["x"], points["y"], points["z"]]).astype(np.float64)
    in_depth_frame = xyz @ R.T + t
    # within what nearest-pixel reprojection allows: the plane is tilted in the RGB view (about 2.5 mm of depth a
    # pixel) and each RGB pixel takes the depth of a point up to half a pixel away; ignoring the RGB lens's
    # distortion in the back-projection puts points 7 mm off the plane here, and off their own pixels
    np.testing.assert_allclose(in_depth_frame[:, 2], 2.0, atol=3e-3)
    # and each point projects back onto its own RGB pixel
    v, u = np.nonzero(np.isfinite(registered.image))
    pu, pv = rgb_cam.check("rgb").project(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    np.testing.assert_allclose(pu, u, atol=1e-3)
    np.testing.assert_allclose(pv, v, atol=1e-3)
