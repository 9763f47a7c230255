"""segmentation_step: the one per-frame path of the node and offline replay.

The identity test replays one bag two ways: its messages published to a real node process (one pair
at a time, so none is dropped) and ``sigma-replay-eval``'s ``replay_bag`` offline, both with the same
checkpoint. The thermal camera is smaller than the RGB (where the two used to disagree: nearest vs
bilinear resizing); every mask must be identical, pixel for pixel.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from sigma_ros.node.parameters import ConfigError
from sigma_ros.segmentation_step import count_classes, load_registration, load_segmenter, segment_pair

H, W = 64, 80


def test_the_step_imports_no_ros():
    code = ("import sys, sigma_ros.segmentation_step; "
            "sys.exit(any(m.startswith(('rclpy', 'sensor_msgs')) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_registration_loads_without_torch(tmp_path):
    """An ONNX-only node (no torch installed) registers too: reading a calibration and warping import no torch."""
    from sigma_core.data.calibration import Calibration, CameraModel, save_calibration

    camera = CameraModel(W, H, np.array([[60.0, 0, 39.5], [0, 60.0, 31.5], [0, 0, 1]]))
    save_calibration(Calibration("rig", "", camera, camera, np.eye(3), np.array([0.05, 0, 0])), tmp_path / "r.yaml")
    code = ("import sys, numpy as np; from sigma_core.data.modality import ModalityScaling; "
            "from sigma_ros.segmentation_step import load_registration; "
            f"r = load_registration(None, {str(tmp_path / 'r.yaml')!r}, ModalityScaling('thermal')); "
            f"r(np.zeros(({H}, {W}), np.uint8), ({H}, {W})); sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_loader_names_the_checkpoint_and_the_reason(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=f"cannot run checkpoint '{bad}' on device 'cpu' with precision fp32"):
        load_segmenter(str(bad), "cpu", "fp32")
    with pytest.raises(ConfigError, match="no such file"):
        load_segmenter(str(tmp_path / "missing.pt"), "cpu")


def test_step_resizes_the_modality_as_the_segmenter_and_counts_classes(tmp_path):
    import torch
    from node_helpers import write_checkpoints

    torch.set_num_threads(1)
    seg = load_segmenter(str(write_checkpoints(tmp_path)["thermal"]), "cpu", thermal_range=(20000.0, 40000.0))
    assert seg.scaling.range == (20000.0, 40000.0)
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    thermal = rng.integers(20000, 40000, (H // 2, W // 2), dtype=np.uint16)
    result = segment_pair(seg, bgr, "bgr8", thermal)
    mask, confidence = seg(np.ascontiguousarray(bgr[..., ::-1]), thermal)
    np.testing.assert_array_equal(result.mask, mask)
    np.testing.assert_array_equal(result.rgb, bgr[..., ::-1])
    assert result.modal_resized and result.confidence.dtype == np.float32
    assert result.counts.pixel_count.tolist() == count_classes(mask, confidence, 4).pixel_count.tolist()
    assert result.counts.valid_pixels == H * W and result.inference_ms > 0


def test_step_registers_the_modality_and_reports_coverage_or_the_aspect_ratio(tmp_path):
    import torch
    from node_helpers import write_checkpoints

    from sigma_core.data.calibration import Calibration, CameraModel, save_calibration
    from sigma_core.data.registration import Registration

    torch.set_num_threads(1)
    seg = load_segmenter(str(write_checkpoints(tmp_path)["thermal"]), "cpu")
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    thermal = rng.integers(0, 256, (40, 40), dtype=np.uint8)  # square: another camera
    plain = segment_pair(seg, rgb, "rgb8", thermal)
    assert plain.coverage == 1.0 and "registration.mode" in plain.aspect_warning

    K = np.array([[60.0, 0, 39.5], [0, 60.0, 31.5], [0, 0, 1]])
    cal = Calibration("rig", "rig.yaml", CameraModel(W, H, K), CameraModel(40, 40, np.array(
        [[35.0, 0, 19.5], [0, 35.0, 19.5], [0, 0, 1]])), np.eye(3), np.array([0.05, 0.0, 0.0]))
    save_calibration(cal, tmp_path / "rig.yaml")
    registration = load_registration(None, str(tmp_path / "rig.yaml"), seg.scaling, 3.0)
    assert registration.mode == "rig"
    result = segment_pair(seg, rgb, "rgb8", thermal, registration=registration)
    registered = Registration("rig", cal, seg.scaling, 3.0)(thermal, (H, W))
    np.testing.assert_array_equal(result.modal, registered.image)
    np.testing.assert_array_equal(result.mask, seg(rgb, registered.image)[0])
    assert result.coverage == registered.coverage < 1.0 and result.aspect_warning is None
    assert not result.modal_resized
    with pytest.raises(ConfigError, match="unknown distortion model 'kb8'"):
        (tmp_path / "bad.yaml").write_text((tmp_path / "rig.yaml").read_text().replace(
            "distortion_model: none", "distortion_model: kb8", 1))
        load_registration("rig", str(tmp_path / "bad.yaml"), seg.scaling)


# --- the node and offline replay on the same bag ------------------------------------------------------------

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from node_helpers import Harness, start_node, write_checkpoints  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sigma_core.data.bags import BagWriter, open_bag, stamp_ns  # noqa: E402
from sigma_ros.node.image_conversion import image_msg_to_array  # noqa: E402
from sigma_ros.replay.replay_eval import ReplayOptions, replay_bag  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own
RGB_TOPIC, THERMAL_TOPIC = "/cam/rgb", "/cam/thermal"
FRAMES = 8


def _write_bag(path):
    rng = np.random.default_rng(21)
    base = 1_700_000_000_000_000_000
    with BagWriter(path) as bag:
        for i in range(FRAMES):
            stamp = base + i * 200_000_000
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            thermal = rng.integers(18000, 42000, (H // 2, W // 2), dtype=np.uint16)  # a smaller thermal camera
            bag.write(RGB_TOPIC, stamp, bag.image(stamp, "color", rgb, "rgb8"))
            bag.write(THERMAL_TOPIC, stamp + 1, bag.image(stamp + 3_000_000, "thermal", thermal, "mono16"))


def _write_calibration(path):
    """The bag's two cameras as a rig: the 40x32 thermal camera with its own lens, 5 cm right of the RGB one."""
    from sigma_core.data.calibration import Calibration, CameraModel, save_calibration

    rgb = CameraModel(W, H, np.array([[70.0, 0, 39.5], [0, 70.0, 31.5], [0, 0, 1]]))
    thermal = CameraModel(W // 2, H // 2, np.array([[30.0, 0, 19.8], [0, 30.0, 15.2], [0, 0, 1]]), "radtan",
                          (-0.2, 0.05, 0.0, 0.0, 0.0))
    save_calibration(Calibration("rig", "", rgb, thermal, np.eye(3), np.array([-0.05, 0.0, 0.0])), path)
    return path


@pytest.mark.parametrize("registered", [False, True], ids=["stretched", "registered"])
def test_node_and_offline_replay_give_identical_masks_on_the_same_bag(tmp_path_factory, registered):
    import torch

    root = tmp_path_factory.mktemp("identity")
    bag_path = root / "bag"
    _write_bag(bag_path)
    ckpt = write_checkpoints(root)["thermal"]
    params = {"checkpoint": ckpt, "device": "cpu"}
    ns = "/j" if registered else "/i"
    if registered:
        calibration = _write_calibration(root / "rig.yaml")
        params.update({"registration.mode": "rig", "registration.calibration_file": calibration,
                       "registration.distance_m": 2.0})
    harness = Harness(DOMAIN_ID)
    node = start_node(tmp_path_factory, ns, params, DOMAIN_ID,
                      args=("-r", f"rgb/image:={RGB_TOPIC}", "-r", f"modal/image:={THERMAL_TOPIC}"))
    try:
        harness.subscribe(Image, f"{ns}/segmentation/mask")
        publishers = {RGB_TOPIC: harness.publisher(Image, RGB_TOPIC),
                      THERMAL_TOPIC: harness.publisher(Image, THERMAL_TOPIC)}
        deadline = time.monotonic() + 60  # discovery: the node has matched both inputs
        while time.monotonic() < deadline and min(p.get_subscription_count() for p in publishers.values()) < 1:
            time.sleep(0.05)
        assert min(p.get_subscription_count() for p in publishers.values()) >= 1, f"no match in 60 s:\n{node.log()}"
        with open_bag(bag_path) as reader:
            messages = [(conn.topic, raw, reader.deserialize(raw, conn.msgtype))
                        for conn, _, raw in reader.messages()]
        for (rgb_topic, rgb_raw, rgb_msg), (thermal_topic, thermal_raw, _) in zip(messages[::2], messages[1::2]):
            assert (rgb_topic, thermal_topic) == (RGB_TOPIC, THERMAL_TOPIC)
            rgb_stamp = stamp_ns(rgb_msg)

            def served(rgb_stamp=rgb_stamp):
                return any(stamp_ns(m) == rgb_stamp for m in harness.messages(f"{ns}/segmentation/mask"))

            # The bag's raw CDR bytes, one pair at a time. A pair is sent again if the first copy was lost
            # (best-effort input): the node skips a copy it already has (same stamp) and pairs the rest.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not served():
                publishers[RGB_TOPIC].publish(rgb_raw)
                publishers[THERMAL_TOPIC].publish(thermal_raw)
                harness.wait_for(served, timeout=3)
            assert served(), node.log()
        live = {}
        for m in harness.messages(f"{ns}/segmentation/mask"):
            live[stamp_ns(m)] = image_msg_to_array(m).copy()
    finally:
        node.kill()
        harness.close()

    torch.set_num_threads(1)  # as the node process (OMP_NUM_THREADS=1): the same arithmetic
    seg = load_segmenter(str(ckpt), "cpu")
    registration = load_registration("rig", str(calibration), seg.scaling, 2.0) if registered else None
    offline = replay_bag(ReplayOptions(bag_path, RGB_TOPIC, THERMAL_TOPIC, keep_masks=True,
                                       registration=registration), seg)
    assert len(offline.masks) == FRAMES and set(live) == set(offline.masks)
    for stamp, mask in offline.masks.items():
        np.testing.assert_array_equal(live[stamp], mask, err_msg=f"mask at {stamp} differs")
    if registered:  # and the registration changed what the model saw
        plain = replay_bag(ReplayOptions(bag_path, RGB_TOPIC, THERMAL_TOPIC, keep_masks=True), seg)
        assert any((plain.masks[s] != m).any() for s, m in offline.masks.items())
    else:
        assert "/cam/thermal is 40x32 but /cam/rgb is 80x64: resizing" in node.log()
