"""Compressed camera input and user-chosen output QoS, on one real node process.

The node runs with ``input.transport:=compressed`` and ``output.qos:=best_effort``, ``output.depth:=2``,
with its base topics remapped as a user would (``rgb/image:=/cam/color``): it must hear JPEG RGB on
``/cam/color/compressed`` and 16-bit PNG thermal on ``/cam/thermal/compressed``, answer with masks stamped
and sized like the RGB, and publish them best effort (a reliable subscriber cannot match) while the
class map stays reliable and transient local.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from node_helpers import H, W, start_node  # noqa: E402
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from sigma_core.data.bags import stamp_ns  # noqa: E402
from sigma_core.data.image_encoding import encode_compressed  # noqa: E402
from sigma_msgs.msg import SegmentationStats  # noqa: E402
from sigma_ros.node.image_conversion import image_msg_to_array  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own
NS = "/c"


def compressed(arr, encoding, fmt, stamp) -> CompressedImage:
    msg = CompressedImage()
    msg.format, data = encode_compressed(arr, encoding, fmt)
    msg.data = data
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = "color_optical"
    return msg


@pytest.fixture(scope="module")
def node(tmp_path_factory, checkpoints, harness):
    proc = start_node(tmp_path_factory, NS, {"checkpoint": checkpoints["thermal"], "input.transport": "compressed",
                                             "input.qos": "best_effort",  # issue 21, fault 9: was refused
                                             "output.qos": "best_effort", "output.depth": 2}, DOMAIN_ID,
                      args=("-r", "rgb/image:=/cam/color", "-r", "modal/image:=/cam/thermal"))
    harness.subscribe(Image, f"{NS}/segmentation/mask", reliability=ReliabilityPolicy.BEST_EFFORT)
    harness.subscribe(SegmentationStats, f"{NS}/segmentation/stats", reliability=ReliabilityPolicy.RELIABLE)
    rgb_pub = harness.publisher(CompressedImage, "/cam/color/compressed")
    thermal_pub = harness.publisher(CompressedImage, "/cam/thermal/compressed")
    yield harness, proc, rgb_pub, thermal_pub
    proc.kill()


def test_jpeg_rgb_and_16bit_png_thermal_give_masks_stamped_like_the_rgb(node):
    harness, proc, rgb_pub, thermal_pub = node
    rng = np.random.default_rng(5)
    sent = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len({stamp_ns(m) for m in harness.messages(f"{NS}/segmentation/mask")}
                                              & set(sent)) < 5:
        stamp = time.time_ns()
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        thermal = rng.integers(20000, 40000, (H // 2, W // 2), dtype=np.uint16)  # 16 bits, a smaller camera
        rgb_pub.publish(compressed(rgb, "rgb8", "jpeg", stamp))
        thermal_pub.publish(compressed(thermal, "mono16", "png", stamp + 2_000_000))
        sent.append(stamp)
        time.sleep(0.15)
    masks = harness.messages(f"{NS}/segmentation/mask")
    assert len({stamp_ns(m) for m in masks} & set(sent)) >= 5, proc.log()
    for m in masks:
        assert stamp_ns(m) in sent and m.header.frame_id == "color_optical"
        assert (m.height, m.width, m.encoding) == (H, W, "mono8")
        assert image_msg_to_array(m).max() < 4
    assert "in: /cam/color/compressed, /cam/thermal/compressed" in proc.log()
    assert "input compressed, QoS best_effort" in proc.log()
    # A corrupt JPEG is reported and skipped; the node keeps serving.
    stamp = time.time_ns()
    bad = compressed(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8", "jpeg", stamp)
    bad.data = bad.data[:40]
    rgb_pub.publish(bad)
    thermal_pub.publish(compressed(rng.integers(0, 65535, (H, W), dtype=np.uint16), "mono16", "png", stamp))
    assert proc.wait_log("could not decode CompressedImage", timeout=10), proc.log()
    assert proc.proc.poll() is None


def png_bomb(width: int, height: int) -> bytes:
    """A valid grey PNG of zeros declaring width x height: ~0.25 MB for 16000x16000 (256 MB decoded, 768 MB as RGB)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    rows = b"\0" * (width + 1) * 500  # filter byte + a row of zeros, 500 rows at a time
    idat = b"".join(deflate.compress(rows) for _ in range(height // 500)) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def resident_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def test_decompression_bombs_are_refused_unread_and_the_node_keeps_segmenting(node):
    """Fault 1 of issue 21: a 0.25 MB PNG declaring 16000x16000 is refused from its header (counted and logged),
    costs no memory, and the next good pair is segmented."""
    harness, proc, rgb_pub, thermal_pub = node
    rng = np.random.default_rng(11)
    bomb = png_bomb(16000, 16000)
    rss_before = resident_mb(proc.proc.pid)
    for _ in range(3):
        stamp = time.time_ns()
        for pub in (rgb_pub, thermal_pub):
            msg = compressed(np.zeros((H, W), np.uint16), "mono16", "png", stamp)
            msg.data = bomb
            pub.publish(msg)
        time.sleep(0.1)
    assert proc.wait_log("declares 16000x16000 = 256,000,000 pixels, above the limit of 16,777,216", timeout=10), \
        proc.log()
    assert "[image_too_large:" in proc.log() and "input.max_pixels" in proc.log()
    sent = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not set(sent) & {stamp_ns(m) for m in harness.messages(
            f"{NS}/segmentation/mask")}:
        stamp = time.time_ns()
        rgb_pub.publish(compressed(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8", "jpeg", stamp))
        thermal_pub.publish(compressed(rng.integers(20000, 40000, (H, W), dtype=np.uint16), "mono16", "png", stamp))
        sent.append(stamp)
        time.sleep(0.15)
    assert set(sent) & {stamp_ns(m) for m in harness.messages(f"{NS}/segmentation/mask")}, proc.log()
    assert resident_mb(proc.proc.pid, "VmHWM") < rss_before + 512, (rss_before, resident_mb(proc.proc.pid, "VmHWM"))


def test_best_effort_output_qos_is_honoured(node):
    harness, proc, _, _ = node
    infos = harness.node.get_publishers_info_by_topic(f"{NS}/segmentation/mask")
    assert infos, proc.log()
    qos = infos[0].qos_profile
    assert qos.reliability == ReliabilityPolicy.BEST_EFFORT  # (DDS discovery does not carry the history depth)
    assert "out: /c/segmentation/* (best_effort, depth 2)" in proc.log()
    latched = harness.node.get_publishers_info_by_topic(f"{NS}/segmentation/class_map")[0].qos_profile
    assert latched.reliability == ReliabilityPolicy.RELIABLE and latched.durability == DurabilityPolicy.TRANSIENT_LOCAL
    # The masks reached the best-effort subscriber (previous test); a reliable subscriber cannot match.
    assert harness.messages(f"{NS}/segmentation/mask")
    assert harness.messages(f"{NS}/segmentation/stats") == []


def test_depth_over_compressed_depth_gives_masks(tmp_path_factory, checkpoints, harness):
    """Depth models hear image_transport's compressedDepth (12-byte header + 16-bit PNG, millimetres)."""
    import struct

    import cv2

    ns = "/cd"
    proc = start_node(tmp_path_factory, ns, {"checkpoint": checkpoints["depth"], "input.transport": "compressed"},
                      DOMAIN_ID)
    try:
        harness.subscribe(Image, f"{ns}/segmentation/mask")
        rgb_pub = harness.publisher(CompressedImage, f"{ns}/rgb/image/compressed")
        depth_pub = harness.publisher(CompressedImage, f"{ns}/modal/image/compressedDepth")
        rng = np.random.default_rng(9)
        sent = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not set(sent) & {stamp_ns(m) for m in harness.messages(
                f"{ns}/segmentation/mask")}:
            stamp = time.time_ns()
            depth_mm = rng.integers(300, 8000, (H, W)).astype(np.uint16)
            _, png = cv2.imencode(".png", depth_mm)
            msg = CompressedImage(format="16UC1; compressedDepth png", data=struct.pack("<iff", 0, 0.0, 0.0)
                                  + png.tobytes())
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            rgb_pub.publish(compressed(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8", "jpeg", stamp))
            depth_pub.publish(msg)
            sent.append(stamp)
            time.sleep(0.2)
        masks = [m for m in harness.messages(f"{ns}/segmentation/mask") if stamp_ns(m) in sent]
        assert masks, proc.log()
        assert (masks[-1].height, masks[-1].width) == (H, W)
        assert f"in: {ns}/rgb/image/compressed, {ns}/modal/image/compressedDepth" in proc.log()
    finally:
        proc.kill()
