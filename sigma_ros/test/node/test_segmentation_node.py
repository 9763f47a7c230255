"""The sigma_segmentation node end to end: a real node process, real DDS, a tiny real checkpoint.

Each node runs as ``python -m sigma_ros.node`` in its own process and namespace; this process
publishes camera streams and listens to the outputs through rclpy on a test-private ROS domain.
Images are 64x80 and the model is the smallest Sigma (dims 32, one block per stage) to keep the
2-core CI machine responsive.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from node_helpers import (  # noqa: E402, I001
    CLASSES,
    H,
    Streams,
    W,
    image,
    run_schedule,
    start_node,
)
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from sigma_core.data.bags import stamp_ns  # noqa: E402
from sigma_core.data.pairing import ApproximateTimePairer  # noqa: E402
from sigma_msgs.msg import ClassMap, SegmentationStats  # noqa: E402
from sigma_ros.node.image_conversion import image_msg_to_array  # noqa: E402
from sigma_ros.node.point_cloud import POINT_DTYPE  # noqa: E402

from ros_tools import private_domain_id  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own
FX, FY, CX, CY = 60.0, 55.0, 39.5, 31.5


# --- the thermal node -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thermal_node(tmp_path_factory, checkpoints, harness):
    node = start_node(tmp_path_factory, "/t", {
        "checkpoint": checkpoints["thermal"], "sync.slop": 0.015, "input.silent_warning_s": 1.0,
    }, DOMAIN_ID)
    ns = "/t"
    for topic, typ in [("mask", Image), ("stats", SegmentationStats), ("overlay", Image),
                       ("color_mask", Image), ("confidence", Image)]:
        harness.subscribe(typ, f"{ns}/segmentation/{topic}")
    streams = Streams(harness, ns)
    streams.until_served(f"{ns}/segmentation/mask")
    yield node, streams
    node.kill()


def test_masks_carry_the_paired_rgb_stamps_and_consistent_stats(harness, thermal_node):
    node, streams = thermal_node
    topics = [f"/t/segmentation/{t}" for t in ("mask", "stats", "overlay", "color_mask", "confidence")]
    # The node's counters before this run, once the start-up pairs are all done (no stats for 1 s).
    quiet_since, seen = time.monotonic(), len(harness.messages("/t/segmentation/stats"))
    deadline = time.monotonic() + 20
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
        time.sleep(0.05)
        if len(harness.messages("/t/segmentation/stats")) != seen:
            quiet_since, seen = time.monotonic(), len(harness.messages("/t/segmentation/stats"))
    before = harness.messages("/t/segmentation/stats")[-1]
    harness.clear(*topics)
    base = time.time_ns() + 100_000_000
    rng = np.random.default_rng(1)
    rgb_stamps = [base + round(i * 1e9 / 30) for i in range(75)]  # 2.5 s at 30 Hz
    modal_stamps = [base + round(k * 1e9 / 9 + rng.uniform(-3e6, 3e6)) for k in range(22)]  # 9 Hz, jittered
    # slop 15 ms: exactly one RGB frame (the nearest, <= 14.1 ms away) can pair with each thermal frame.
    pairer = ApproximateTimePairer(queue_size=10, slop=0.015)
    expected = {}
    events = []
    for s in rgb_stamps:
        events.append(((s - base) / 1e9, lambda s=s: streams.rgb.publish(image(streams.rgb_frame(), "rgb8", s))))
    for s in modal_stamps:
        events.append(((s - base) / 1e9, lambda s=s: streams.modal.publish(image(streams.thermal_frame(), "mono16",
                                                                                     s))))
    for s, stream in sorted([(s, 0) for s in rgb_stamps] + [(s, 1) for s in modal_stamps]):
        pair = pairer.add(stream, s / 1e9, s)
        if pair is not None:
            expected[pair.first] = pair.second
    assert len(expected) == len(modal_stamps)
    run_schedule(base, events)
    # The last pair is never replaced by a newer one, so it is always served: wait for it.
    last = max(expected)
    assert harness.wait_for(lambda: last in {stamp_ns(m) for m in harness.messages("/t/segmentation/mask")}
                            and last in {stamp_ns(m) for m in harness.messages("/t/segmentation/stats")}, 60)

    masks = harness.messages("/t/segmentation/mask")
    stats = harness.messages("/t/segmentation/stats")
    # How many pairs the model keeps up with depends on the machine's load; what the node guarantees is that
    # every pair is segmented or counted as dropped (the pairing is order independent at this slop).
    processed, dropped = (stats[-1].frames_processed - before.frames_processed,
                          stats[-1].frames_dropped - before.frames_dropped)
    assert processed == len(masks) and processed + dropped == len(expected), (processed, dropped, len(expected))
    print(f"{len(masks)} masks for {len(expected)} pairs, {dropped} dropped")
    for m in masks:
        assert stamp_ns(m) in expected, "a mask's stamp is not the stamp of a paired RGB frame"
        assert (m.height, m.width, m.encoding, m.header.frame_id) == (H, W, "mono8", "camera")
        ids = image_msg_to_array(m)
        assert set(np.unique(ids).tolist()) <= set(range(len(CLASSES))) | {255}
    by_stamp = {stamp_ns(s): s for s in stats}
    assert set(by_stamp) >= {stamp_ns(m) for m in masks}
    for stamp, s in by_stamp.items():
        assert (s.width, s.height, s.modality) == (W, H, "thermal")
        assert [c.name for c in s.classes] == CLASSES
        assert sum(c.pixel_count for c in s.classes) == s.valid_pixels == H * W
        assert sum(c.fraction for c in s.classes) == pytest.approx(1.0, abs=1e-5)
        assert s.sync_skew_ms == pytest.approx((stamp - expected[stamp]) / 1e6, abs=1e-3)
        assert s.inference_ms > 0 and s.latency_ms >= s.inference_ms
    # Outputs computed only for subscribers: these three have one here, so they were produced.
    for topic, encoding in [("overlay", "rgb8"), ("color_mask", "rgb8"), ("confidence", "32FC1")]:
        got = harness.messages(f"/t/segmentation/{topic}")
        assert got and got[-1].encoding == encoding and stamp_ns(got[-1]) in expected
    conf = image_msg_to_array(harness.messages("/t/segmentation/confidence")[-1])
    assert conf.shape == (H, W) and 1 / len(CLASSES) - 1e-6 <= conf.min() and conf.max() <= 1 + 1e-6


def test_class_map_reaches_a_late_subscriber(harness, thermal_node):
    harness.subscribe(ClassMap, "/t/segmentation/class_map", latched=True)
    assert harness.wait_for(lambda: harness.messages("/t/segmentation/class_map"), timeout=10)
    cmap = harness.messages("/t/segmentation/class_map")[-1]
    assert list(cmap.names) == CLASSES and list(cmap.ids) == [0, 1, 2, 3]
    assert len(cmap.colors) == 3 * len(CLASSES) and cmap.ignore_id == 255


def _set_parameter(harness, name, value, type_):
    client = harness.node.create_client(SetParameters, "/t/sigma_segmentation/set_parameters")
    assert client.wait_for_service(timeout_sec=10)
    field = {ParameterType.PARAMETER_DOUBLE: "double_value",
             ParameterType.PARAMETER_INTEGER_ARRAY: "integer_array_value"}[type_]
    request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=ParameterValue(type=type_,
                                                                                           **{field: value}))])
    future = client.call_async(request)
    assert harness.wait_for(future.done, timeout=10)
    harness.node.destroy_client(client)
    return future.result().results[0]


def test_runtime_parameters_apply_without_post_set_callbacks(checkpoints, monkeypatch):
    """Humble has no post-set parameter callbacks: the validating callback applies valid values itself."""
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    import sigma_ros.node.segmentation_node as node_module

    if hasattr(Node, "add_post_set_parameters_callback"):
        monkeypatch.delattr(Node, "add_post_set_parameters_callback")  # as on Humble
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = node_module.SigmaSegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoints["thermal"])), Parameter("device", value="cpu"),
        Parameter("warmup.size", value=[32, 32])])
    try:
        assert node.set_parameters([Parameter("output.overlay_alpha", value=0.25)])[0].successful
        assert not node.set_parameters([Parameter("output.overlay_alpha", value=2.0)])[0].successful
        assert node.cfg.overlay_alpha == 0.25
        palette = list(range(12))
        assert node.set_parameters([Parameter("output.palette", value=palette)])[0].successful
        np.testing.assert_array_equal(node._palette.reshape(-1), palette)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_next_pair_is_decoded_while_the_model_runs_and_the_newest_wins(checkpoints):
    """The decode thread prepares the next pair while the model runs on the current one (one waiting slot,
    latest wins, counted as dropped); the ready line names the thread count."""
    import torch
    from rclpy.parameter import Parameter

    import sigma_ros.node.segmentation_node as node_module

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = node_module.SigmaSegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoints["thermal"])), Parameter("device", value="cpu"),
        Parameter("warmup.size", value=[32, 32]), Parameter("debug.min_inference_ms", value=2000.0),
        Parameter("threads", value=1)])
    rng = np.random.default_rng(0)

    def pair():
        stamp = time.time_ns()
        return (image(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8", stamp),
                image(rng.integers(0, 65535, (H, W), dtype=np.uint16), "mono16", stamp))

    def wait_for(condition, timeout=1.5):
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        return condition()

    try:
        assert "1 CPU thread(s) (asked for)" in node._describe() and torch.get_num_threads() == 1
        node._on_pair(*pair())  # into the model (2 s)
        assert wait_for(lambda: node._prepared._item is None and node._mailbox._item is None)
        node._on_pair(*pair())
        assert wait_for(lambda: node._prepared._item is not None)  # decoded while the model runs
        waiting = node._prepared._item
        node._on_pair(*pair())
        assert wait_for(lambda: node._prepared._item is not waiting)  # the newer pair replaced it
        assert node.frames_processed == 0 and node._frames_dropped() == 1
        assert isinstance(waiting.pair.rgb, np.ndarray) and waiting.pair.rgb.shape == (H, W, 3)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_palette_and_alpha_change_at_run_time(harness, thermal_node):
    harness.subscribe(ClassMap, "/t/segmentation/class_map", latched=True)
    palette = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]
    assert _set_parameter(harness, "output.palette", palette, ParameterType.PARAMETER_INTEGER_ARRAY).successful
    assert harness.wait_for(
        lambda: any(list(m.colors) == palette for m in harness.messages("/t/segmentation/class_map")), timeout=10)
    bad = _set_parameter(harness, "output.palette", [1, 2, 3], ParameterType.PARAMETER_INTEGER_ARRAY)
    assert not bad.successful and "4 classes" in bad.reason
    assert _set_parameter(harness, "output.overlay_alpha", 1.0, ParameterType.PARAMETER_DOUBLE).successful
    bad = _set_parameter(harness, "output.overlay_alpha", 2.0, ParameterType.PARAMETER_DOUBLE)
    assert not bad.successful and "overlay_alpha" in bad.reason
    # With alpha 1 the overlay is the colour mask in the new palette.
    _, streams = thermal_node
    harness.clear("/t/segmentation/overlay", "/t/segmentation/mask")
    stamp = time.time_ns()
    streams.rgb.publish(image(streams.rgb_frame(), "rgb8", stamp))
    streams.modal.publish(image(streams.thermal_frame(), "mono16", stamp))
    assert harness.wait_for(lambda: any(stamp_ns(m) == stamp for m in harness.messages("/t/segmentation/overlay"))
                            and any(stamp_ns(m) == stamp for m in harness.messages("/t/segmentation/mask")), 10)
    over = next(m for m in harness.messages("/t/segmentation/overlay") if stamp_ns(m) == stamp)
    mask = next(m for m in harness.messages("/t/segmentation/mask") if stamp_ns(m) == stamp)
    np.testing.assert_array_equal(image_msg_to_array(over), np.asarray(palette, np.uint8).reshape(-1, 3)[
        image_msg_to_array(mask)])


def test_bad_input_is_logged_and_good_frames_keep_flowing(harness, thermal_node):
    node, streams = thermal_node
    harness.clear("/t/segmentation/mask")
    t0 = time.time_ns()
    stamps = [t0 + i * 100_000_000 for i in range(8)]
    good = streams.rgb_frame()
    yuv = image(np.zeros((H, W, 2), np.uint8).reshape(H, W * 2), "mono8", stamps[0])
    yuv.encoding, yuv.width, yuv.step = "yuv422", W, W * 2
    truncated = image(good, "rgb8", stamps[1])
    truncated.data = truncated.data[: len(truncated.data) // 2]
    sends = [
        (yuv, image(streams.thermal_frame(), "mono16", stamps[0])),
        (truncated, image(streams.thermal_frame(), "mono16", stamps[1])),
        # A thermal camera of another resolution: resized to the RGB size, still segmented.
        (image(good, "rgb8", stamps[2]), image(streams.thermal_frame((H // 2, W // 2)), "mono16", stamps[2])),
        (image(good, "rgb8", stamps[3]), image(streams.thermal_frame(), "mono16", stamps[3])),
        # Out of order: older than the frame before.
        (image(good, "rgb8", stamps[2] - 50_000_000), image(streams.thermal_frame(), "mono16", stamps[2] - 50_000_000)),
    ] + [(image(good, "rgb8", s), image(streams.thermal_frame(), "mono16", s)) for s in stamps[4:]]
    served = [None, None, stamps[2], stamps[3], None, *stamps[4:]]  # the mask each send must give, if any
    for (rgb, modal), stamp in zip(sends, served):
        streams.rgb.publish(rgb)
        streams.modal.publish(modal)
        # One pair at a time: the node serves the newest pair, so a busy machine may replace one sent too soon.
        if stamp is not None:
            assert harness.wait_for(lambda s=stamp: s in {stamp_ns(m) for m in harness.messages(
                "/t/segmentation/mask")}, 10), f"good frame {stamp} not served: {node.log()}"
    masks = harness.messages("/t/segmentation/mask")
    assert all((m.height, m.width) == (H, W) for m in masks)
    assert stamps[0] not in {stamp_ns(m) for m in masks} and stamps[1] not in {stamp_ns(m) for m in masks}
    log = node.log()
    assert "/t/rgb/image: unsupported encoding 'yuv422'" in log
    assert "/t/rgb/image: rgb8 image 80x64" in log and "needs 15360 bytes" in log
    assert "/t/modal/image is 40x32 but /t/rgb/image is 80x64: resizing" in log
    assert "/t/rgb/image: stamp" in log and "is not after the previous" in log
    # A thermal camera of another aspect ratio is another camera: segmented (stretched), and said so
    later = stamps[-1] + 100_000_000
    streams.rgb.publish(image(good, "rgb8", later))
    streams.modal.publish(image(streams.thermal_frame((40, 40)), "mono16", later))
    assert harness.wait_for(lambda: later in {stamp_ns(m) for m in harness.messages("/t/segmentation/mask")}, 10)
    assert node.wait_log("two different cameras", 5) and "set registration.mode (rig or homography)" in node.log()
    assert node.proc.poll() is None


def test_a_silent_stream_is_named(harness, thermal_node):
    node, streams = thermal_node
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and "no messages on /t/modal/image" not in node.log():
        streams.rgb.publish(image(streams.rgb_frame(), "rgb8", time.time_ns()))
        time.sleep(1 / 30)
    assert "no messages on /t/modal/image" in node.log()
    # (a pause between tests may log "no messages on /t/rgb/image or /t/modal/image": both silent, not one)
    assert "no messages on /t/rgb/image for" not in node.log()


def test_sigint_shuts_down_cleanly(thermal_node):
    node, _ = thermal_node
    code, seconds = node.stop(signal.SIGINT, timeout=30)
    # Bounded, not timed: a loaded machine may take seconds to finish the frame in hand and shut DDS down.
    assert code == 0 and seconds < 20, f"exit {code} after {seconds:.1f} s:\n{node.log()}"
    assert "Traceback" not in node.log()


# --- the depth node ---------------------------------------------------------------------------------------


def test_depth_gives_labelled_points_one_per_valid_pixel(tmp_path_factory, checkpoints, harness):
    """16UC1 in an Intel L515's 0.25 mm units (depth.units, issue 21 fault 9: no node parameter existed, and scaling
    depth.max_range fixed the mask but not the points) and 32FC1 metres give points at the right distance."""
    quarter_mm = 0.00025
    node = start_node(tmp_path_factory, "/d", {"checkpoint": checkpoints["depth"], "input.qos": "reliable",
                                               "depth.units": quarter_mm}, DOMAIN_ID)
    try:
        for topic, typ in [("mask", Image), ("points", PointCloud2), ("stats", SegmentationStats)]:
            harness.subscribe(typ, f"/d/segmentation/{topic}")
        streams = Streams(harness, "/d")
        info = CameraInfo(width=W, height=H, k=[FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0])
        info.header.frame_id = "depth_optical"
        rng = np.random.default_rng(3)

        def depth_pair(encoding):
            mm = rng.integers(300, 8000, (H, W)).astype(np.uint16)
            mm[rng.random((H, W)) < 0.2] = 0  # no return
            if encoding == "16UC1":
                return mm * np.uint16(4)  # quarter millimetres
            metres = mm.astype(np.float32) / 1000
            metres[rng.random((H, W)) < 0.1] = np.nan
            return metres

        # Discovery: publish until a cloud comes back (points are computed only for a matched subscriber).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not harness.messages("/d/segmentation/points"):
            s = time.time_ns()
            streams.info.publish(info)
            streams.rgb.publish(image(streams.rgb_frame(), "rgb8", s))
            streams.modal.publish(image(depth_pair("16UC1"), "16UC1", s))
            time.sleep(0.1)
        assert harness.messages("/d/segmentation/points"), f"no points:\n{node.log()}"

        sent = {}
        for encoding in ["16UC1", "32FC1", "16UC1", "32FC1"]:
            s = time.time_ns()
            depth = depth_pair(encoding)
            sent[s] = depth
            streams.info.publish(info)
            streams.rgb.publish(image(streams.rgb_frame(), "rgb8", s, frame_id="color_optical"))
            streams.modal.publish(image(depth, encoding, s, frame_id="depth_optical"))
            # One at a time: a pair sent while the model is busy may be replaced by the next (counted as dropped).
            assert harness.wait_for(
                lambda s=s: s in {stamp_ns(m) for m in harness.messages("/d/segmentation/points")}, 30), node.log()
        clouds = {stamp_ns(m): m for m in harness.messages("/d/segmentation/points")}
        masks = {stamp_ns(m): image_msg_to_array(m) for m in harness.messages("/d/segmentation/mask")}
        for s, depth in sent.items():
            cloud, mask = clouds[s], masks[s]
            metres = depth.astype(np.float32) * np.float32(quarter_mm if depth.dtype == np.uint16 else 1)
            valid = np.isfinite(metres) & (metres > 0)
            assert cloud.width * cloud.height == valid.sum() and cloud.header.frame_id == "depth_optical"
            points = np.frombuffer(bytes(cloud.data), POINT_DTYPE)
            order = np.cumsum(valid.reshape(-1)) - 1  # index of each valid pixel among the points
            for v, u in zip(*np.nonzero(valid)):
                if (v * 7 + u) % 97:  # a spread-out sample of pixels
                    continue
                p = points[order[v * W + u]]
                z = metres[v, u]
                assert p["z"] == pytest.approx(z, rel=1e-6)
                assert p["x"] == pytest.approx((u - CX) * z / FX, rel=1e-5, abs=1e-6)
                assert p["y"] == pytest.approx((v - CY) * z / FY, rel=1e-5, abs=1e-6)
                assert p["label"] == mask[v, u]
        stats = harness.messages("/d/segmentation/stats")[-1]
        assert stats.modality == "depth" and stats.valid_pixels == H * W
        # A depth frame that is mostly without returns is still segmented, and reported.
        s = time.time_ns()
        streams.rgb.publish(image(streams.rgb_frame(), "rgb8", s))
        streams.modal.publish(image(np.zeros((H, W), np.uint16), "16UC1", s))
        assert harness.wait_for(lambda: s in {stamp_ns(m) for m in harness.messages("/d/segmentation/mask")}, 10)
        assert "/d/modal/image: 100% of depth pixels are 0/NaN/inf" in node.log()
        code, seconds = node.stop(signal.SIGTERM, timeout=30)
        assert code == 0 and seconds < 20, f"SIGTERM: exit {code} after {seconds:.1f} s:\n{node.log()}"
    finally:
        node.kill()


# --- a model slower than the camera -----------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_slow_model_drops_frames_without_backlog(tmp_path_factory, checkpoints, harness):
    node = start_node(tmp_path_factory, "/s", {"checkpoint": checkpoints["thermal"], "debug.min_inference_ms": 150.0},
                      DOMAIN_ID)
    try:
        harness.subscribe(SegmentationStats, "/s/segmentation/stats")
        harness.subscribe(Image, "/s/segmentation/mask")
        streams = Streams(harness, "/s")
        streams.until_served("/s/segmentation/mask")
        harness.clear("/s/segmentation/stats")
        rss_before = _rss_mb(node.proc.pid)
        rgb, thermal = streams.rgb_frame(), streams.thermal_frame()
        start = time.monotonic()
        while time.monotonic() - start < 4.0:  # 30 Hz pairs for a model that manages < 7 Hz
            s = time.time_ns()
            streams.rgb.publish(image(rgb, "rgb8", s))
            streams.modal.publish(image(thermal, "mono16", s))
            time.sleep(1 / 30)
        rss_after = _rss_mb(node.proc.pid)
        harness.wait_for(lambda: False, 0.5)
        stats = harness.messages("/s/segmentation/stats")
        assert len(stats) >= 4, node.log()
        latency = np.array([s.latency_ms for s in stats])
        frame_ms = max(150.0, max(s.inference_ms for s in stats))  # one forward, padded to 150 ms
        quarter = len(latency) // 4
        # Each frame waits at most one forward pass: latency stays ~1-2 forwards and does not grow (a backlog
        # would reach seconds in 4 s); the margins are for a loaded machine's scheduling, not the model.
        assert latency.max() < 2 * frame_ms + 1000, latency
        assert latency[-quarter:].mean() < latency[:quarter].mean() + 2 * frame_ms, latency
        assert stats[-1].frames_dropped > stats[0].frames_dropped + 30
        assert rss_after - rss_before < 50, f"RSS grew {rss_before:.0f} -> {rss_after:.0f} MB"
    finally:
        node.kill()


def test_missing_checkpoint_fails_at_start_up_naming_it(tmp_path):
    missing = tmp_path / "nope.pt"
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID))
    result = subprocess.run([sys.executable, "-m", "sigma_ros.node", "--ros-args", "-p", f"checkpoint:={missing}"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"no such file '{missing}'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


# --- published Sigma checkpoints ---------------------------------------------------------------------------


def test_published_checkpoint_with_a_dataset_segments_like_sigma_core(tmp_path_factory, harness, published_parity):
    """The parity network saved as the published code saves it, with a class list as ``dataset``: the node
    publishes exactly the mask and confidence sigma_core computes (whose logits match the fixture to 1e-5)."""
    import torch

    from sigma_core import Segmenter

    checkpoint, classes, fixture = (published_parity[k] for k in ("checkpoint", "classes", "fixture"))
    seg = Segmenter.from_checkpoint(checkpoint, dataset=classes)
    torch.testing.assert_close(seg.logits(fixture["rgb"], fixture["x"]), fixture["logits"], atol=1e-5, rtol=0)
    ns = "/pub"
    node = start_node(tmp_path_factory, ns, {"checkpoint": checkpoint, "dataset": classes}, DOMAIN_ID)
    try:
        assert "published Sigma checkpoint, architecture inferred from its keys" in node.log()
        for topic in ("mask", "confidence"):
            harness.subscribe(Image, f"{ns}/segmentation/{topic}")
        streams = Streams(harness, ns)
        streams.until_served(f"{ns}/segmentation/mask")
        rgb, thermal, stamp = streams.rgb_frame(), streams.thermal_frame(), time.time_ns()
        streams.rgb.publish(image(rgb, "rgb8", stamp))
        streams.modal.publish(image(thermal, "mono16", stamp))

        def served(topic):
            return [m for m in harness.messages(f"{ns}/segmentation/{topic}") if stamp_ns(m) == stamp]

        assert harness.wait_for(lambda: served("mask") and served("confidence"), 20), node.log()
        mask, confidence = seg(rgb, thermal)
        np.testing.assert_array_equal(image_msg_to_array(served("mask")[0]), mask)
        np.testing.assert_allclose(image_msg_to_array(served("confidence")[0]), confidence, atol=1e-6)
        assert len(np.unique(mask)) > 1
    finally:
        node.kill()


def test_unusable_checkpoints_fail_at_start_up_naming_the_reason(tmp_path, published_parity):
    damaged = tmp_path / "damaged.pth"
    data = bytearray(published_parity["checkpoint"].read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0x5A for b in data[middle:middle + 4096])  # 4 KiB of flipped bytes
    damaged.write_bytes(bytes(data))
    broken_yaml = tmp_path / "dataset.yaml"
    broken_yaml.write_text("classes: [a, b\n")  # issue 21, fault 4: was "invalid configuration: configure failed"
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), OMP_NUM_THREADS="1")
    cases = [
        ({"checkpoint": published_parity["checkpoint"], "dataset": broken_yaml},
         f"dataset file {broken_yaml} is not valid YAML; fix it where the parser stopped: while parsing a flow "
         "sequence"),
        ({"checkpoint": published_parity["checkpoint"]}, "name the dataset it was trained on: a preset (mfnet, "),
        ({"checkpoint": damaged, "dataset": "mfnet"}, f"checkpoint {damaged} is damaged: member"),
        ({"checkpoint": published_parity["checkpoint"], "dataset": "sunrgbd"}, "predicts 9 classes but dataset "
                                                                                "'SUNRGBD' has 37"),
    ]
    for params, expected in cases:
        cmd = [sys.executable, "-m", "sigma_ros.node", "--ros-args"]
        for name, value in params.items():
            cmd += ["-p", f"{name}:={value}"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        output = result.stderr + result.stdout
        assert result.returncode == 2, output
        assert expected in output and "Traceback" not in output
