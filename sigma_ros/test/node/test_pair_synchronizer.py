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


def _schedule(seed: int):
    """(stamp ns, stream) in arrival order: RGB 30 Hz, thermal 9 Hz jittered, 10% lost, arrivals up to 40 ms late
    (so out of stamp order across and within streams), at a wall-clock epoch."""
    rng = random.Random(seed)
    base = 1_765_000_000 * 10**9
    sent = [(base + round(i * 1e9 / 30), 0) for i in range(150)]
    sent += [(base + round(i * 1e9 / 9 + rng.uniform(-6e6, 6e6)), 1) for i in range(45)]
    kept = [e for e in sent if rng.random() > 0.1]
    return [e for _, e in sorted((stamp + rng.uniform(0, 40e6), (stamp, stream)) for stamp, stream in kept)]


def _pairs(schedule, use_message_filters: bool, queue_size: int, slop: float):
    pairs = []
    sync = PairSynchronizer(queue_size, slop, lambda a, b: pairs.append((a.header.stamp, b.header.stamp)),
                            use_message_filters=use_message_filters)
    for stamp, stream in schedule:
        msg = Image()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        (sync.add_rgb if stream == 0 else sync.add_modal)(msg)
    return sync.backend, [((a.sec, a.nanosec), (b.sec, b.nanosec)) for a, b in pairs]


@pytest.mark.parametrize("seed,queue_size,slop", [(1, 10, 0.02), (2, 3, 0.05), (3, 1, 0.03)])
def test_message_filters_makes_the_same_pairs(seed, queue_size, slop):
    """Differential: message_filters.ApproximateTimeSynchronizer (two inputs) and our fallback policy, fed the
    same late, lossy, out-of-order streams, make the same pairs in the same order (small queues: evictions too)."""
    require("message_filters")
    schedule = _schedule(seed)
    backend, theirs = _pairs(schedule, True, queue_size, slop)
    assert backend == "message_filters"
    _, ours = _pairs(schedule, False, queue_size, slop)
    assert len(ours) > 10 and ours == theirs


def test_documented_difference_stamps_closer_than_a_float_step():
    """The one difference: message_filters keys its queues by integer nanoseconds, our policy by float seconds,
    whose step at today's epoch is 2**-22 s (~0.24 us). Two frames of one stream stamped 100 ns apart are two
    messages to message_filters and one (the later replaces the earlier) to us. No camera stamps frames that close."""
    require("message_filters")
    base = 1_765_000_000 * 10**9
    schedule = [(base, 1), (base + 100, 1), (base + 1_000_000, 0), (base + 2_000_000, 0)]
    _, theirs = _pairs(schedule, True, 10, 0.01)
    _, ours = _pairs(schedule, False, 10, 0.01)
    assert len(theirs) == 2 and len(ours) == 1
