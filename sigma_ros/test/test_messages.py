"""sigma_msgs: the three messages import and cross real DDS between two processes."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
from ros_tools import private_domain_id  # noqa: E402

from sigma_msgs.msg import ClassMap, ClassStat, SegmentationStats  # noqa: E402

PUBLISHER = textwrap.dedent(
    """
    import time
    import rclpy
    from rclpy.qos import QoSProfile, DurabilityPolicy
    from sigma_msgs.msg import ClassMap, ClassStat, SegmentationStats

    rclpy.init()
    node = rclpy.create_node("msg_publisher")
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    cmap_pub = node.create_publisher(ClassMap, "class_map", latched)
    stats_pub = node.create_publisher(SegmentationStats, "stats", 10)
    cmap = ClassMap(ids=[0, 1, 2], names=["road", "person", "car"], colors=[0, 0, 0, 220, 20, 60, 0, 0, 142])
    cmap.header.frame_id = "camera"
    cmap_pub.publish(cmap)
    stats = SegmentationStats(model="sigma-nano", modality="thermal", valid_pixels=12, width=4, height=3,
                              inference_ms=1.5, latency_ms=2.5, sync_skew_ms=-3.0, frames_processed=7,
                              frames_dropped=2)
    stats.header.stamp.sec = 42
    stats.classes = [ClassStat(id=i, name=n, pixel_count=4, fraction=1 / 3, mean_confidence=0.5)
                     for i, n in enumerate(["road", "person", "car"])]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats_pub.publish(stats)
        rclpy.spin_once(node, timeout_sec=0.05)
    """
)


@pytest.fixture
def domain_env():
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(private_domain_id())
    os.environ["ROS_DOMAIN_ID"] = env["ROS_DOMAIN_ID"]
    return env


def test_messages_have_documented_defaults():
    assert ClassMap().ignore_id == 255
    stats = SegmentationStats()
    assert stats.frames_dropped == 0 and stats.classes == []
    assert ClassStat(id=3, name="car").name == "car"


def test_messages_round_trip_between_processes(domain_env):
    from rclpy.qos import DurabilityPolicy, QoSProfile

    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=domain_env)
    rclpy.init()
    try:
        node = rclpy.create_node("msg_subscriber")
        got = {}
        node.create_subscription(SegmentationStats, "stats", lambda m: got.setdefault("stats", m), 10)
        # Subscribing late: transient local must still deliver the class map.
        time.sleep(1.0)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(ClassMap, "class_map", lambda m: got.setdefault("cmap", m), latched)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(got) < 2:
            rclpy.spin_once(node, timeout_sec=0.1)
        assert "stats" in got and "cmap" in got, f"received only {sorted(got)}"
        stats, cmap = got["stats"], got["cmap"]
        assert stats.header.stamp.sec == 42 and stats.model == "sigma-nano" and stats.modality == "thermal"
        assert [c.name for c in stats.classes] == ["road", "person", "car"]
        assert sum(c.pixel_count for c in stats.classes) == stats.valid_pixels
        assert stats.sync_skew_ms == pytest.approx(-3.0) and stats.frames_dropped == 2
        assert list(cmap.ids) == [0, 1, 2] and list(cmap.names) == ["road", "person", "car"]
        assert list(cmap.colors[3:6]) == [220, 20, 60] and cmap.ignore_id == 255
        node.destroy_node()
    finally:
        rclpy.shutdown()
        publisher.kill()
        publisher.wait(timeout=10)
