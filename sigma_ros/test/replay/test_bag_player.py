"""bag_player: publishes a bag's messages byte for byte with the recorded timing, scaled by the rate factor;
start offset, /clock, loop and errors. The player runs in its own process; this one subscribes on a private domain."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from replay_helpers import synthetic_bag  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sigma_core.data.bags import stamp_ns  # noqa: E402
from sigma_ros.node.image_conversion import image_msg_to_array  # noqa: E402
from sigma_ros.replay.bag_player import BagPlayer  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own
PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_images.xml"


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return synthetic_bag(tmp_path_factory.mktemp("player") / "bag", seconds=2.0, seed=5)


@pytest.fixture
def listener():
    """Subscribes to the synthetic bag's topics and /clock; records (receive time, message) per topic."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    node = rclpy.create_node("player_listener", context=context)
    got: dict[str, list] = {}
    lock = threading.Lock()

    def collect(topic):
        def cb(msg):
            now = time.perf_counter()
            with lock:
                got.setdefault(topic, []).append((now, msg))
        return cb

    from sigma_core.data.synthetic import TOPICS

    for key in ("rgb", "thermal", "label"):
        node.create_subscription(Image, TOPICS[key], collect(TOPICS[key]), QoSProfile(depth=200))
    node.create_subscription(Clock, "/clock", collect("/clock"), QoSProfile(depth=500))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=lambda: _spin(executor, context), daemon=True)
    thread.start()
    yield got
    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()
    rclpy.try_shutdown(context=context)
    thread.join(timeout=5)


def _spin(executor, context):
    while context.ok():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:
            return


def _play(bag_path, *extra, timeout=60):
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE))
    cmd = [sys.executable, "-m", "sigma_ros.replay.bag_player", str(bag_path), "--wait-timeout", "20", *extra]
    if "--wait-for-subscribers" not in extra:
        cmd.append("--wait-for-subscribers")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_rate_factor_timing_and_exact_bytes(bag, listener):
    rate = 2.0
    done = _play(bag.path, "--rate", str(rate))
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    log_of = {(t, s): log for log, t, s in bag.messages}
    all_msgs = [(recv, topic, stamp_ns(m)) for topic, items in listener.items() if topic != "/clock"
                for recv, m in items]
    assert len(all_msgs) == len(bag.messages), "reliable playback must deliver every message"
    all_msgs.sort()
    logs = np.array([log_of[(t, s)] for _, t, s in all_msgs], np.float64) / 1e9
    recv = np.array([r for r, _, _ in all_msgs])
    # Arrival times follow the recorded log times divided by the rate (one shared offset).
    planned = (logs - logs[0]) / rate
    error = (recv - recv[0]) - planned
    error -= np.median(error)
    assert np.percentile(np.abs(error), 90) < 0.015 and np.abs(error).max() < 0.1, error
    span_bag = (logs[-1] - logs[0]) / rate
    assert (recv[-1] - recv[0]) == pytest.approx(span_bag, rel=0.05, abs=0.03)
    # Raw CDR bytes go out unchanged: pixels equal the bag's.
    from rosbags.highlevel import AnyReader

    with AnyReader([bag.path]) as reader:
        conn = [c for c in reader.connections if c.topic == bag.rgb_topic][0]
        first = reader.deserialize(next(iter(reader.messages(connections=[conn])))[2], conn.msgtype)
    sent = {stamp_ns(m): m for _, m in listener[bag.rgb_topic]}
    received = image_msg_to_array(sent[stamp_ns(first)])
    np.testing.assert_array_equal(received.reshape(-1), first.data)
    assert "played" in done.stderr + done.stdout


def test_start_offset_and_clock(bag, listener):
    done = _play(bag.path, "--rate", "4", "--start-offset", "1.0", "--clock", "100",
                 "--topics", bag.rgb_topic, bag.modal_topic)
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    start = min(log for log, _, _ in bag.messages)
    expected = [(t, s) for log, t, s in bag.messages if log >= start + 1_000_000_000 and t != bag.label_topic]
    got = [(t, stamp_ns(m)) for t in (bag.rgb_topic, bag.modal_topic) for _, m in listener.get(t, [])]
    assert sorted(got) == sorted(expected) and bag.label_topic not in listener
    clock = [c.clock.sec * 1_000_000_000 + c.clock.nanosec for _, c in listener["/clock"]]
    assert len(clock) >= 20  # ~0.25 s of playback at 100 Hz plus one per message
    assert all(b >= a for a, b in zip(clock, clock[1:])), "bag time must not run backwards"
    end = max(log for log, _, _ in bag.messages)
    assert start + 1_000_000_000 <= clock[0] and clock[-1] <= end


def test_loop_plays_again_until_stopped(bag):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    try:
        node = rclpy.create_node("loop_player", context=context)
        player = BagPlayer(node, bag.path, topics=[bag.modal_topic], rate=50.0, loop=True)
        stats = player.play(should_stop=lambda: player.stats.loops >= 3)
        player.close()
        n = len(bag.stamps(bag.modal_topic))
        assert stats.loops == 3 and stats.published[bag.modal_topic] == 3 * n
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_missing_topic_and_bad_bag_are_named(bag, tmp_path):
    done = _play(bag.path, "--topics", "/no/such/topic", timeout=30)
    assert done.returncode == 2
    assert "/no/such/topic" in done.stderr and bag.rgb_topic in done.stderr
    done = _play(tmp_path / "missing_bag", timeout=30)
    assert done.returncode == 2 and "missing_bag" in done.stderr


def test_ros1_bag_is_converted_to_ros2_messages(tmp_path, listener):
    ros1 = synthetic_bag(tmp_path / "old.bag", seconds=0.5, seed=6, storage="ros1")
    done = _play(ros1.path, "--rate", "4", "--topics", ros1.rgb_topic)
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    got = {stamp_ns(m): m for _, m in listener.get(ros1.rgb_topic, [])}
    assert sorted(got) == sorted(ros1.stamps(ros1.rgb_topic))
    from sigma_core.data.bags import message_to_array, open_bag

    with open_bag(ros1.path) as reader:
        conn = [c for c in reader.connections if c.topic == ros1.rgb_topic][0]
        for _, _, raw in reader.messages(connections=[conn]):
            msg = reader.deserialize(raw, conn.msgtype)
            np.testing.assert_array_equal(image_msg_to_array(got[stamp_ns(msg)]), message_to_array(msg)[0])
            assert got[stamp_ns(msg)].header.frame_id == msg.header.frame_id


def test_subscriber_minimums_are_parsed_and_checked(bag):
    from sigma_ros.replay.bag_player import parse_minimum

    assert parse_minimum(["/a/b=2", "/c=1"]) == {"/a/b": 2, "/c": 1}
    with pytest.raises(ValueError, match="TOPIC=N"):
        parse_minimum(["/a/b"])
    done = _play(bag.path, "--topics", bag.rgb_topic, "--wait-for-subscribers", "/not/played=1", timeout=30)
    assert done.returncode == 2 and "/not/played" in done.stderr


def _bag_with_type(path: Path, msgtype: str) -> Path:
    """A one-message bag whose connection claims the type name ``msgtype`` (a type name is data from the file)."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg("int32 data", msgtype))
    with Writer(path, version=9) as writer:
        conn = writer.add_connection("/odd", msgtype, typestore=store)
        writer.write(conn, 1, store.serialize_cdr(store.types[msgtype](data=1), msgtype))
    return path


def test_type_names_from_the_bag_never_import_other_code(tmp_path):
    """Issue 12, fault 7: 'this/msg/Image' imported the standard library's ``this``; a module in the working
    directory named by the bag ran. Only installed ROS interface packages are imported."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evilpkg" / "msg"
    evil.mkdir(parents=True)
    (tmp_path / "evilpkg" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (evil / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Image: pass\n")
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID))
    for msgtype, expected in [("this/msg/Image", "this is not an installed ROS interface package"),
                              ("evilpkg/msg/Image", "evilpkg is not an installed ROS interface package"),
                              ("sensor_msgs/msg/NoSuchType", "is not installed in this Python")]:
        bag = _bag_with_type(tmp_path / msgtype.replace("/", "_"), msgtype)
        done = subprocess.run([sys.executable, "-m", "sigma_ros.replay.bag_player", str(bag)], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert expected in done.stderr and "--topics" in done.stderr and "Traceback" not in done.stderr
        assert "Beautiful is better than ugly" not in done.stdout, "the Zen of Python: `this` was imported"
        assert not marker.exists(), f"{msgtype}: a module from the working directory ran"


def test_message_class_accepts_only_ros_interface_names():
    from sigma_ros.replay.bag_player import message_class

    assert message_class("sensor_msgs/msg/Image") is Image
    assert message_class("sensor_msgs/Image") is Image  # ROS 1 spelling
    for bad in ["os.path/msg/X", "../x/msg/Y", "sensor_msgs/msg/image", "Sensor/msg/Image", "a/b/c/d", "x"]:
        with pytest.raises(ImportError, match="not a ROS interface name"):
            message_class(bad)


def test_stop_while_waiting_for_subscribers_is_quiet(bag, tmp_path):
    """Issue 12, fault 5: SIGINT while bag_player waits for subscribers printed a traceback."""
    import signal

    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE),
               PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
    log = tmp_path / "player.log"
    for sig in (signal.SIGINT, signal.SIGTERM):
        with open(log, "w") as out:
            # Nine subscribers on the RGB topic will never come: it waits until the signal.
            proc = subprocess.Popen([sys.executable, "-m", "sigma_ros.replay.bag_player", str(bag.path),
                                     "--wait-for-subscribers", f"{bag.rgb_topic}=9", "--wait-timeout", "120"],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while "waiting for subscribers" not in log.read_text() and time.monotonic() < deadline:
                    assert proc.poll() is None, log.read_text()
                    time.sleep(0.05)
                time.sleep(0.3)
                proc.send_signal(sig)
                start = time.monotonic()
                code = proc.wait(timeout=10)
                assert code == 0 and time.monotonic() - start < 5, log.read_text()
                assert "Traceback" not in log.read_text(), log.read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def test_a_corrupt_bag_ends_with_one_line_not_a_traceback(tmp_path):
    ros1 = synthetic_bag(tmp_path / "old.bag", seconds=0.5, seed=7, storage="ros1")
    raw = bytearray(ros1.path.read_bytes())
    op = raw.find(b"op=\x05")  # the first chunk record (op 5): its header length precedes its first field
    assert op > 8 and raw[op - 4:op] == (4).to_bytes(4, "little")
    raw[op - 8:op - 4] = (0x7FFFFFFF).to_bytes(4, "little")
    damaged = tmp_path / "damaged.bag"
    damaged.write_bytes(bytes(raw))
    done = _play(damaged, "--rate", "4", timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("bag_player: ")]
    assert len(errors) == 1 and errors[0].startswith(f"bag_player: cannot read bag {damaged}")
    assert "corrupt or truncated" in errors[0]
