"""pair_synchronizer: RGB/modality pairing by stamp, our policy and (where installed) message_filters agree."""
import random

import pytest

pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
from ros_tools import require  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sigma_ros.node.pair_synchronizer import PairSynchronizer, stamp_seconds  # noqa: E402


def _img(t: float) -> Image:
    msg = Image()
    msg.header.stamp.sec = int(t)
    msg.header.stamp.nanosec = int(round((t - int(t)) * 1e9))
    return msg


def _feed(use_message_filters: bool):
    """RGB at 30 Hz, thermal at 9 Hz with jittered stamps, arriving interleaved by time."""
    rng = random.Random(3)
    events = [(i / 30, 0) for i in range(90)] + [(i / 9 + rng.uniform(-0.004, 0.004), 1) for i in range(27)]
    events.sort()
    pairs = []
    sync = PairSynchronizer(10, 0.02, lambda a, b: pairs.append((stamp_seconds(a), stamp_seconds(b))),
                            use_message_filters=use_message_filters)
    for t, stream in events:
        (sync.add_rgb if stream == 0 else sync.add_modal)(_img(10 + t))
    return sync.backend, pairs


def test_our_policy_pairs_thermal_frames_within_slop_once_each():
    backend, pairs = _feed(use_message_filters=False)
    assert backend == "sigma_core"
    assert len(pairs) >= 25
    assert all(abs(rgb - modal) < 0.02 for rgb, modal in pairs)
    assert len({p[0] for p in pairs}) == len({p[1] for p in pairs}) == len(pairs)  # nothing used twice
    assert [p[0] for p in pairs] == sorted(p[0] for p in pairs)


def test_message_filters_agrees_where_installed():
    require("message_filters")
    backend, theirs = _feed(use_message_filters=True)
    assert backend == "message_filters"
    _, ours = _feed(use_message_filters=False)
    assert len(theirs) >= 0.9 * len(ours)
    assert set(theirs) & set(ours)
