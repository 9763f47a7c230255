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
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402

from sigma_core.data.bags import stamp_ns  # noqa: E402
from sigma_core.data.pairing import ApproximateTimePairer  # noqa: E402
from sigma_msgs.msg import ClassMap, SegmentationStats  # noqa: E402
from sigma_ros.node.image_conversion import array_to_image_msg, image_msg_to_array  # noqa: E402
from sigma_ros.node.point_cloud import POINT_DTYPE  # noqa: E402

PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_images.xml"
DOMAIN_ID = 150 + os.getpid() % 60  # private to this test module's run
H, W = 64, 80
CLASSES = ["road", "car", "person", "sky"]
FX, FY, CX, CY = 60.0, 55.0, 39.5, 31.5


# --- fixtures: checkpoints, the harness node in this process, node processes -------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny thermal and a tiny depth checkpoint (the same random network), written once per module."""
    import torch

    from sigma_core import SigmaConfig, build_sigma, save_checkpoint
    from sigma_core.data.modality import ModalityScaling

    torch.manual_seed(0)
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=len(CLASSES))
    model = build_sigma(cfg).eval()
    root = tmp_path_factory.mktemp("ckpt")
    thermal = save_checkpoint(root / "thermal.pt", model, cfg, class_names=CLASSES, modality="thermal")
    depth = save_checkpoint(root / "depth.pt", model, cfg, class_names=CLASSES, modality="depth",
                            scaling=ModalityScaling(modality="depth", max_range=8.0))
    return {"thermal": Path(thermal), "depth": Path(depth)}


class Harness:
    """An rclpy node spinning in a background thread: publishers for the inputs, collectors for the outputs."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node("sigma_test_harness", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.got: dict[str, list] = defaultdict(list)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                return

    def publisher(self, msg_type, topic):
        return self.node.create_publisher(msg_type, topic, 10)

    def subscribe(self, msg_type, topic, latched=False):
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        if latched:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)

        def collect(msg):
            with self.lock:
                self.got[topic].append(msg)

        return self.node.create_subscription(msg_type, topic, collect, qos)

    def messages(self, topic) -> list:
        with self.lock:
            return list(self.got[topic])

    def clear(self, *topics):
        with self.lock:
            for t in topics:
                self.got[t].clear()

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


class NodeProcess:
    """``python -m sigma_ros.node`` in namespace ``ns``; its log goes to a file we can read while it runs."""

    def __init__(self, log_dir: Path, ns: str, params: dict):
        self.ns = ns
        self.log_path = log_dir / f"{ns.strip('/')}.log"
        env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE),
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
        cmd = [sys.executable, "-m", "sigma_ros.node", "--ros-args", "-r", f"__ns:={ns}",
               "-p", f"warmup.size:=[{H}, {W}]"]
        for name, value in params.items():
            cmd += ["-p", f"{name}:={value}"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(0.05)
        return False

    def wait_ready(self, timeout: float = 90.0):
        assert self.wait_log("ready:", timeout), f"node {self.ns} did not start:\n{self.log()}"

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig``; (exit code, seconds to exit)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def start_node(tmp_path_factory, ns, params) -> NodeProcess:
    node = NodeProcess(tmp_path_factory.mktemp("logs"), ns, params)
    node.wait_ready()
    return node


# --- stream helpers ----------------------------------------------------------------------------------------


def image(arr, encoding, stamp, frame_id="camera") -> Image:
    msg = array_to_image_msg(arr, encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


class Streams:
    """Publishers for one node's inputs, with stamps in integer nanoseconds on the wall clock."""

    def __init__(self, h: Harness, ns: str):
        self.h = h
        self.rgb = h.publisher(Image, f"{ns}/rgb/image")
        self.modal = h.publisher(Image, f"{ns}/modal/image")
        self.info = h.publisher(CameraInfo, f"{ns}/modal/camera_info")
        self.rng = np.random.default_rng(7)

    def rgb_frame(self, shape=(H, W)):
        return self.rng.integers(0, 256, (*shape, 3), dtype=np.uint8)

    def thermal_frame(self, shape=(H, W)):
        return self.rng.integers(0, 65535, shape, dtype=np.uint16)

    def until_served(self, mask_topic: str, modal=None, timeout: float = 30.0):
        """Publish pairs every 0.1 s until the node answers (DDS discovery done), then forget those masks."""
        modal = modal or (lambda: image(self.thermal_frame(), "mono16", stamp))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.h.messages(mask_topic):
            stamp = time.time_ns()
            self.rgb.publish(image(self.rgb_frame(), "rgb8", stamp))
            self.modal.publish(modal() if callable(modal) else modal)
            time.sleep(0.1)
        assert self.h.messages(mask_topic), f"no mask on {mask_topic} within {timeout} s"
        time.sleep(0.3)


def run_schedule(base_ns: int, events):
    """events: [(t seconds after wall time base_ns, callable)], each called at its time (stamps = send times)."""
    for t, fire in sorted(events, key=lambda e: e[0]):
        delay = (base_ns - time.time_ns()) / 1e9 + t
        if delay > 0:
            time.sleep(delay)
        fire()


# --- the thermal node -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thermal_node(tmp_path_factory, checkpoints, harness):
    node = start_node(tmp_path_factory, "/t", {
        "checkpoint": checkpoints["thermal"], "sync.slop": 0.015, "input.silent_warning_s": 1.0,
    })
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
    harness.wait_for(lambda: last in {stamp_ns(m) for m in harness.messages("/t/segmentation/stats")}, timeout=10)

    masks = harness.messages("/t/segmentation/mask")
    stats = harness.messages("/t/segmentation/stats")
    assert len(masks) >= 0.5 * len(expected), f"{len(masks)} masks for {len(expected)} pairs:\n{node.log()}"
    print(f"{len(masks)} masks for {len(expected)} pairs, {stats[-1].frames_dropped} dropped")
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
    assert stats[-1].frames_processed > stats[0].frames_processed
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
    from rclpy.parameter import Parameter

    import sigma_ros.node.segmentation_node as node_module

    monkeypatch.setattr(node_module, "_POST_SET_CALLBACKS", False)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = node_module.SigmaSegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoints["thermal"])), Parameter("device", value="cpu"),
        Parameter("warmup.size", value=[32, 32])])
    try:
        assert node.set_parameters([Parameter("output.overlay_alpha", value=0.25)])[0].successful
        assert not node.set_parameters([Parameter("output.overlay_alpha", value=2.0)])[0].successful
        assert node._alpha == 0.25
        palette = list(range(12))
        assert node.set_parameters([Parameter("output.palette", value=palette)])[0].successful
        np.testing.assert_array_equal(node._palette.reshape(-1), palette)
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
    for rgb, modal in sends:
        streams.rgb.publish(rgb)
        streams.modal.publish(modal)
        time.sleep(0.1)
    served = {stamps[2], stamps[3], *stamps[4:]}
    assert harness.wait_for(lambda: served <= {stamp_ns(m) for m in harness.messages("/t/segmentation/mask")}, 10), (
        f"good frames were not all served: {node.log()}")
    masks = harness.messages("/t/segmentation/mask")
    assert all((m.height, m.width) == (H, W) for m in masks)
    assert stamps[0] not in {stamp_ns(m) for m in masks} and stamps[1] not in {stamp_ns(m) for m in masks}
    log = node.log()
    assert "/t/rgb/image: unsupported encoding 'yuv422'" in log
    assert "/t/rgb/image: rgb8 image 80x64" in log and "needs 15360 bytes" in log
    assert "/t/modal/image is 40x32 but /t/rgb/image is 80x64: resizing" in log
    assert "/t/rgb/image: stamp" in log and "is not after the previous" in log
    assert node.proc.poll() is None


def test_a_silent_stream_is_named(harness, thermal_node):
    node, streams = thermal_node
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and "no messages on /t/modal/image" not in node.log():
        streams.rgb.publish(image(streams.rgb_frame(), "rgb8", time.time_ns()))
        time.sleep(1 / 30)
    assert "no messages on /t/modal/image" in node.log()
    assert "no messages on /t/rgb/image" not in node.log()


def test_sigint_shuts_down_cleanly(thermal_node):
    node, _ = thermal_node
    code, seconds = node.stop(signal.SIGINT)
    assert code == 0 and seconds < 5, f"exit {code} after {seconds:.1f} s:\n{node.log()}"
    assert "Traceback" not in node.log()


# --- the depth node ---------------------------------------------------------------------------------------


def test_depth_gives_labelled_points_one_per_valid_pixel(tmp_path_factory, checkpoints, harness):
    node = start_node(tmp_path_factory, "/d", {"checkpoint": checkpoints["depth"], "input.qos": "reliable"})
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
                return mm
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
            time.sleep(0.25)
        assert harness.wait_for(
            lambda: set(sent) <= {stamp_ns(m) for m in harness.messages("/d/segmentation/points")}, 10), node.log()
        clouds = {stamp_ns(m): m for m in harness.messages("/d/segmentation/points")}
        masks = {stamp_ns(m): image_msg_to_array(m) for m in harness.messages("/d/segmentation/mask")}
        for s, depth in sent.items():
            cloud, mask = clouds[s], masks[s]
            metres = depth.astype(np.float32) / (1000 if depth.dtype == np.uint16 else 1)
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
        code, seconds = node.stop(signal.SIGTERM)
        assert code == 0 and seconds < 5, f"SIGTERM: exit {code} after {seconds:.1f} s:\n{node.log()}"
    finally:
        node.kill()


# --- a model slower than the camera -----------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_slow_model_drops_frames_without_backlog(tmp_path_factory, checkpoints, harness):
    node = start_node(tmp_path_factory, "/s", {"checkpoint": checkpoints["thermal"], "debug.min_inference_ms": 150.0})
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
        assert len(stats) >= 8, node.log()
        latency = np.array([s.latency_ms for s in stats])
        quarter = len(latency) // 4
        # Each frame waits at most one forward pass: latency stays ~1-2 forwards and does not grow.
        assert latency.max() < 1000, latency
        assert latency[-quarter:].mean() < latency[:quarter].mean() + 150, latency
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
    node = start_node(tmp_path_factory, ns, {"checkpoint": checkpoint, "dataset": classes})
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
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), OMP_NUM_THREADS="1")
    cases = [
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
