"""segmentation_stats: per-class counts, fractions and mean confidence of a mask."""
import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
from std_msgs.msg import Header  # noqa: E402

from sigma_ros.node.segmentation_stats import count_classes, stats_msg  # noqa: E402


def test_counts_fractions_and_confidence():
    mask = np.array([[0, 0, 1], [2, 255, 1]], np.uint8)
    conf = np.array([[0.5, 0.7, 0.9], [0.4, 0.1, 0.3]], np.float32)
    counts = count_classes(mask, conf, num_classes=4)
    assert counts.pixel_count.tolist() == [2, 2, 1, 0] and counts.valid_pixels == 5
    np.testing.assert_allclose(counts.mean_confidence, [0.6, 0.6, 0.4, 0.0], rtol=1e-6)

    header = Header(frame_id="cam")
    msg = stats_msg(header, counts, ["road", "car", "person", "sky"], model="m", modality="thermal", width=3,
                    height=2, inference_ms=4.0, latency_ms=6.0, sync_skew_ms=-1.0, frames_processed=3,
                    frames_dropped=1)
    assert [c.name for c in msg.classes] == ["road", "car", "person", "sky"]
    assert [c.id for c in msg.classes] == [0, 1, 2, 3]
    assert sum(c.pixel_count for c in msg.classes) == msg.valid_pixels == 5
    assert sum(c.fraction for c in msg.classes) == pytest.approx(1.0)
    assert msg.classes[3].fraction == 0.0 and msg.classes[3].mean_confidence == 0.0
    assert (msg.width, msg.height, msg.frames_dropped, msg.header.frame_id) == (3, 2, 1, "cam")


def test_all_invalid_gives_zero_fractions():
    counts = count_classes(np.full((2, 2), 255, np.uint8), np.ones((2, 2), np.float32), 3)
    msg = stats_msg(Header(), counts, ["a", "b", "c"], model="m", modality="depth", width=2, height=2,
                    inference_ms=0, latency_ms=0, sync_skew_ms=0, frames_processed=1, frames_dropped=0)
    assert msg.valid_pixels == 0 and all(c.fraction == 0.0 for c in msg.classes)
