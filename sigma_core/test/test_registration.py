"""Registration of a second camera into the RGB view, against closed-form geometry and OpenCV's own projection."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sigma_core.data.calibration import (
    Calibration,
    CalibrationError,
    CameraModel,
    load_calibration,
    pose_from_transform,
    save_calibration,
)
from sigma_core.data.modality import ModalityScaling
from sigma_core.data.registration import (
    Registration,
    aspect_ratio_warning,
    homography_at_distance,
    plane_map,
)

THERMAL = ModalityScaling("thermal")
DEPTH = ModalityScaling("depth", max_range=10.0)


def K(f: float, cx: float, cy: float, fy: float | None = None) -> np.ndarray:
    return np.array([[f, 0, cx], [0, fy or f, cy], [0, 0, 1.0]])


def rig(rgb: CameraModel, modal: CameraModel, R=None, t=(0.06, 0.0, 0.0), source="test rig") -> Calibration:
    return Calibration("rig", source, rgb, modal, np.eye(3) if R is None else np.asarray(R, float),
                       np.asarray(t, float)).check()


def small_rotation() -> np.ndarray:
    return cv2.Rodrigues(np.array([0.02, -0.03, 0.01]))[0]


RADTAN = CameraModel(80, 60, K(70, 41.3, 29.1, 72), "radtan", (-0.3, 0.1, 0.001, -0.002, -0.02))
EQUI = CameraModel(64, 52, K(55, 31.0, 26.4), "equidistant", (0.05, -0.02, 0.004, -0.001))


@pytest.mark.parametrize("camera", [RADTAN, EQUI,
                                    CameraModel(50, 40, K(60, 25, 20), "rational_polynomial",
                                                (-0.2, 0.05, 0.001, 0.0, 0.01, 0.1, 0.02, 0.003))])
def test_projection_matches_opencv_and_undistort_inverts_it(camera):
    camera = camera.check("test")
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-0.4, 0.4, 50), rng.uniform(-0.3, 0.3, 50), rng.uniform(0.5, 3, 50)])
    u, v = camera.project(pts[:, 0], pts[:, 1], pts[:, 2])
    D = np.asarray(camera.D)
    if camera.distortion == "equidistant":
        ref = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera.K, D)[0]
    else:
        ref = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), camera.K, D)[0]
    np.testing.assert_allclose(np.column_stack([u, v]), ref.reshape(-1, 2), atol=1e-9)
    x, y = camera.undistort(u, v)
    np.testing.assert_allclose(np.column_stack([x, y]), pts[:, :2] / pts[:, 2:], atol=1e-9)


def test_thermal_plane_map_equals_the_closed_form_homography_without_distortion():
    cal = rig(CameraModel(64, 48, K(60, 31.5, 23.5)), CameraModel(40, 32, K(35, 20.2, 15.7)),
              small_rotation(), (0.06, 0.01, -0.02))
    mx, my = plane_map(cal, 2.5)
    H = homography_at_distance(cal, 2.5)
    v, u = np.mgrid[0:48, 0:64].astype(float)
    p = np.einsum("ij,jhw->ihw", H, np.stack([u, v, np.ones_like(u)]))
    np.testing.assert_allclose(mx, p[0] / p[2], atol=1e-7)
    np.testing.assert_allclose(my, p[1] / p[2], atol=1e-7)


def test_thermal_rig_warp_puts_each_plane_point_where_opencv_projects_it():
    """Plane points projected by OpenCV into both distorted cameras: the registered image (a ramp of modality
    coordinates) at the RGB projection reads the modality projection."""
    rgb = CameraModel(96, 72, K(80, 47.2, 35.9), "radtan", (-0.25, 0.08, 0.001, 0.0005, 0.0))
    cal = rig(rgb, EQUI, small_rotation(), (0.05, -0.01, 0.0))
    distance = 3.0
    reg = Registration("rig", cal, ModalityScaling("thermal"), distance_m=distance)
    v, u = np.mgrid[0:52, 0:64].astype(np.float32)
    out_u, out_v = reg(u, (72, 96)).image, reg(v, (72, 96)).image

    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(-0.6, 0.6, 40), rng.uniform(-0.5, 0.5, 40), np.full(40, distance)])
    p_rgb = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), rgb.K, np.asarray(rgb.D))[0].reshape(-1, 2)
    rvec = cv2.Rodrigues(cal.rotation)[0]
    p_mod = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), rvec, cal.translation, EQUI.K,
                                      np.asarray(EQUI.D))[0].reshape(-1, 2)
    seen = (p_mod[:, 0] > 1) & (p_mod[:, 0] < 62) & (p_mod[:, 1] > 1) & (p_mod[:, 1] < 50)
    assert seen.sum() > 20
    for (pu, pv), (qu, qv) in zip(p_rgb[seen], p_mod[seen]):
        got = [cv2.getRectSubPix(img, (1, 1), (float(pu), float(pv)))[0, 0] for img in (out_u, out_v)]
        np.testing.assert_allclose(got, [qu, qv], atol=0.1)


def test_uncovered_pixels_get_the_missing_value_and_are_counted():
    """Same cameras, 10 cm baseline, plane at 1 m: the modality image ends f t / d = 5 px short of the RGB one."""
    camera = CameraModel(40, 30, K(50, 19.5, 14.5))
    cal = rig(camera, camera, np.eye(3), (0.1, 0.0, 0.0))
    thermal = np.full((30, 40), 200, np.uint8)
    reg = Registration("rig", cal, THERMAL, distance_m=1.0)
    out = reg(thermal, (30, 40))
    assert out.image.dtype == np.uint8
    assert (out.image[:, :35] == 200).all() and (out.image[:, 35:] == 0).all()
    assert out.coverage == pytest.approx(35 / 40)
    # With a thermal range no integer is sure to map to 0: float32 and NaN (the scaling's "missing").
    ranged = Registration("rig", cal, ModalityScaling("thermal", range=(20.0, 250.0)), distance_m=1.0)
    img = ranged(thermal, (30, 40)).image
    assert img.dtype == np.float32 and np.isnan(img[:, 35:]).all() and (img[:, :35] == 200).all()
    assert (ModalityScaling("thermal", range=(20.0, 250.0)).to_unit(img)[0][:, 35:] == 0).all()


def test_depth_reprojection_equals_the_closed_form_and_the_nearest_surface_wins():
    """Fronto-parallel planes at 2 m (left) and 1 m (right), 10 cm baseline, f = 100: RGB u = u_m - f t / Z, so
    the far plane shifts by 5 px, the near one by 10 px and covers the far one where both land."""
    camera = CameraModel(60, 20, K(100, 29.5, 9.5))
    cal = rig(camera, camera, np.eye(3), (0.1, 0.0, 0.0))
    depth = np.where(np.arange(60) < 30, 2000, 1000).astype(np.uint16)[None].repeat(20, 0)
    depth[5, 7] = 0  # no return: a hole
    out = Registration("rig", cal, DEPTH)(depth, (20, 60))
    expected = np.full((20, 60), np.inf)
    for vm in range(20):
        for um in range(60):
            z = depth[vm, um] / 1000
            if z > 0 and 0 <= um - round(100 * 0.1 / z) < 60:
                u = um - round(100 * 0.1 / z)
                expected[vm, u] = min(expected[vm, u], z)
    expected[np.isinf(expected)] = np.nan
    np.testing.assert_array_equal(out.image, expected.astype(np.float32))
    assert np.isnan(out.image[5, 2]) and out.image[6, 2] == pytest.approx(2.0)  # the hole stays empty
    assert out.coverage == pytest.approx(np.isfinite(expected).mean())


def test_depth_reprojection_matches_opencv_on_a_distorted_rotated_rig():
    rgb = CameraModel(48, 36, K(40, 23.7, 17.2), "radtan", (-0.2, 0.05, 0.001, -0.001, 0.0))
    modal = CameraModel(40, 30, K(42, 19.1, 15.3), "equidistant", (0.03, -0.01, 0.002, 0.0))
    cal = rig(rgb, modal, small_rotation(), (0.04, 0.02, 0.01))
    rng = np.random.default_rng(2)
    depth = (rng.uniform(0.8, 3.0, (30, 40))).astype(np.float32)
    depth[rng.random((30, 40)) < 0.05] = np.nan
    out = Registration("rig", cal, DEPTH)(depth, (36, 48))

    v, u = np.mgrid[0:30, 0:40].astype(float)
    rays = cv2.fisheye.undistortPoints(np.stack([u, v], -1).reshape(-1, 1, 2), modal.K, np.asarray(modal.D),
                                       criteria=(3, 100, 1e-12)).reshape(-1, 2)
    z = depth.reshape(-1).astype(float)
    pts_m = np.column_stack([rays * z[:, None], z])[np.isfinite(z)]
    pts_rgb = (pts_m - cal.translation) @ cal.rotation  # R^T (X - t), row vectors
    proj = cv2.projectPoints(pts_rgb, np.zeros(3), np.zeros(3), rgb.K, np.asarray(rgb.D))[0].reshape(-1, 2)
    expected = np.full((36, 48), np.inf)
    for (pu, pv), zr in zip(proj, pts_rgb[:, 2]):
        iu, iv = int(np.floor(pu + 0.5)), int(np.floor(pv + 0.5))
        if 0 <= iu < 48 and 0 <= iv < 36:
            expected[iv, iu] = min(expected[iv, iu], zr)
    expected[np.isinf(expected)] = np.nan
    np.testing.assert_allclose(out.image, expected, rtol=1e-5)


def test_a_longer_rgb_lens_leaves_no_cracks_in_a_surface():
    cal = rig(CameraModel(60, 40, K(60, 29.5, 19.5)), CameraModel(30, 20, K(30, 14.5, 9.5)), np.eye(3),
              (0.0, 0.0, 0.0))
    out = Registration("rig", cal, DEPTH)(np.full((20, 30), 1.5, np.float32), (40, 60))
    assert out.coverage > 0.95 and np.nanmax(np.abs(out.image - 1.5)) < 1e-6


def test_homography_mode_depth_samples_nearest_and_thermal_bilinear():
    H = np.array([[0.5, 0, 2.0], [0, 0.5, 1.0], [0, 0, 1]])  # RGB 2x the modality's scale, shifted
    cal = Calibration("homography", "h.yaml", homography=H)
    ramp = np.tile(np.arange(20, dtype=np.float32), (16, 1))
    thermal = Registration("homography", cal, ModalityScaling("thermal"))(ramp, (30, 40))
    assert thermal.image[0, 3] == pytest.approx(3.5)  # u_m = 0.5 * 3 + 2
    assert np.isnan(thermal.image[0, 37])  # u_m = 20.5: outside the 20-pixel image
    depth = Registration("homography", cal, DEPTH)(ramp + 1, (30, 40))
    assert set(np.unique(depth.image[np.isfinite(depth.image)])) <= set(np.arange(1, 21, dtype=np.float32))


def test_calibration_files_kalibr_opencv_and_ours_give_the_same_rig(tmp_path):
    R, t = small_rotation(), np.array([0.06, -0.005, 0.002])
    rgb = CameraModel(1280, 720, K(900, 640.5, 360.2, 901), "radtan", (-0.1, 0.02, 0.0003, -0.0002))
    modal = CameraModel(640, 512, K(520, 320.1, 256.3), "equidistant", (0.01, -0.003, 0.0005, 0.0))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    kalibr = tmp_path / "camchain.yaml"
    kalibr.write_text(
        "cam0:\n  camera_model: pinhole\n  intrinsics: [900, 901, 640.5, 360.2]\n  distortion_model: radtan\n"
        "  distortion_coeffs: [-0.1, 0.02, 0.0003, -0.0002]\n  resolution: [1280, 720]\n  rostopic: /rgb\n"
        "cam1:\n  T_cn_cnm1:\n" + "".join(f"  - {row.tolist()}\n" for row in T) +
        "  camera_model: pinhole\n  intrinsics: [520, 520, 320.1, 256.3]\n  distortion_model: equidistant\n"
        "  distortion_coeffs: [0.01, -0.003, 0.0005, 0.0]\n  resolution: [640, 512]\n")
    from_kalibr = load_calibration(kalibr)
    ours = tmp_path / "ours.yaml"
    save_calibration(from_kalibr, ours)
    from_ours = load_calibration(ours)
    opencv = tmp_path / "stereo.yml"
    fs = cv2.FileStorage(str(opencv), cv2.FILE_STORAGE_WRITE)
    for name, value in (("K1", rgb.K), ("D1", np.array([-0.1, 0.02, 0.0003, -0.0002, 0.0])), ("K2", modal.K),
                        ("D2", np.array([0.01, -0.003, 0.0005, 0.0, 0.0])), ("R", R), ("T", t.reshape(3, 1))):
        fs.write(name, value)
    for name, value in (("image_width1", 1280), ("image_height1", 720), ("image_width2", 640),
                        ("image_height2", 512)):
        fs.write(name, value)
    fs.release()
    from_opencv = load_calibration(opencv)
    for cal in (from_kalibr, from_ours, from_opencv):
        np.testing.assert_allclose(cal.rotation, R, atol=1e-12)
        np.testing.assert_allclose(cal.translation, t, atol=1e-12)
        np.testing.assert_allclose(cal.rgb.K, rgb.K)
        assert cal.rgb.size == (720, 1280) and cal.modal.size == (512, 640)
    assert from_kalibr.modal.distortion == from_ours.modal.distortion == "equidistant"
    assert from_opencv.modal.distortion == "radtan"  # OpenCV's stereo YAML is radtan unless it says otherwise


def test_pose_parameters_are_a_static_transform_of_the_modality_camera_in_the_rgb_frame():
    # modality camera 6 cm to the right of the RGB one (+x), rotated 90 degrees about the optical axis
    R, t = pose_from_transform([0.06, 0, 0], [0, 0, np.sqrt(0.5), np.sqrt(0.5)], "registration.rotation")
    # the RGB camera's centre, seen from the modality camera: 6 cm to its left, turned by the rotation
    np.testing.assert_allclose(R @ np.zeros(3) + t, R @ np.array([-0.06, 0, 0]), atol=1e-12)
    np.testing.assert_allclose(R @ np.array([0.06, 0, 0]) + t, 0, atol=1e-12)


@pytest.mark.parametrize("text, words", [
    ("sigma_calibration: 1\nmode: rig\nrgb: {width: 64, height: 48, K: [50,0,32,0,50,24,0,0,1], "
     "distortion_model: ocam, D: [0.1]}\n", ["ocam", "unknown distortion model", "recalibrate"]),
    ("sigma_calibration: 1\nmode: homography\nhomography_rgb_to_modal: [1,0,0,0,1,0,0,0,0]\n",
     ["singular"]),
    ("sigma_calibration: 1\nmode: homography\nhomography_rgb_to_modal: [1,0,.nan,0,1,0,0,0,1]\n",
     ["finite"]),
    ("sigma_calibration: 1\nmode: rig\nrgb: {width: 64, height: 48, K: [50,0,32,0,50,24,0,0,1]}\n"
     "modal: {width: 64, height: 48, K: [50,0,32,0,50,24,0,0,1]}\nR_modal_rgb: [2,0,0,0,1,0,0,0,1]\n"
     "t_modal_rgb: [0.1, 0, 0]\n", ["not a rotation"]),
    ("sigma_calibration: 1\nmode: rig\nrgb: {width: 64, height: 48, K: [0,0,32,0,50,24,0,0,1]}\n"
     "modal: {width: 64, height: 48, K: [50,0,32,0,50,24,0,0,1]}\nR_modal_rgb: [1,0,0,0,1,0,0,0,1]\n"
     "t_modal_rgb: [0.1, 0, 0]\n", ["fx, fy > 0", "RGB camera"]),
    ("cameras: []\n", ["not a calibration", "Kalibr"]),
])
def test_a_bad_calibration_file_is_one_message_naming_the_file(tmp_path, text, words):
    path = tmp_path / "cal.yaml"
    path.write_text(text)
    with pytest.raises(CalibrationError) as err:
        load_calibration(path)
    for word in words:
        assert word in str(err.value)
    assert str(path) in str(err.value)


def test_images_of_another_size_than_calibrated_are_refused_naming_both():
    camera = CameraModel(40, 30, K(50, 19.5, 14.5))
    reg = Registration("rig", rig(camera, camera, source="rig.yaml"), THERMAL)
    with pytest.raises(CalibrationError, match=r"rig.yaml: calibrated for a modality image of 40x30 but the "
                                               r"modality image is 80x60"):
        reg(np.zeros((60, 80), np.uint8), (30, 40))
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration("/nonexistent/cal.yaml")


def test_aspect_ratio_warning_only_for_different_cameras():
    assert aspect_ratio_warning((720, 1280), (512, 640)) and "registration.mode" in aspect_ratio_warning(
        (720, 1280), (512, 640))
    assert aspect_ratio_warning((480, 640), (120, 160)) is None
    assert aspect_ratio_warning((480, 640), (481, 640)) is None


def test_points_far_outside_a_distorted_lens_are_not_folded_back_into_its_image():
    """A barrel radtan polynomial maps points far off-axis back into the image (k1 = -0.3: x/z = 2 lands at
    x_d = -0.4): a wide RGB camera's edge pixels must stay uncovered, not take thermal values from the far side."""
    modal = CameraModel(80, 60, K(40, 39.5, 29.5), "radtan", (-0.3, 0.0, 0.0, 0.0, 0.0)).check("m")
    u, v = modal.project(np.array([2.0]), np.array([0.0]), np.array([1.0]))
    assert 0 <= u[0] < 80  # the polynomial alone folds it in
    u, v = modal.project(np.array([2.0]), np.array([0.0]), np.array([1.0]), modal.field_radius2())
    assert np.isnan(u[0])
    wide = CameraModel(80, 60, K(18, 39.5, 29.5))  # about 130 degrees across
    out = Registration("rig", rig(wide, modal, np.eye(3), (0.0, 0.0, 0.0)), ModalityScaling("thermal"))(
        np.full((60, 80), 7.0, np.float32), (60, 80))
    assert np.isnan(out.image[30, :5]).all() and np.isnan(out.image[30, -5:]).all() and out.image[30, 40] == 7.0
