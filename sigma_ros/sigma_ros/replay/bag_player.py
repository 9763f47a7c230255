"""Play a bag's topics into the ROS graph with their recorded timing, using rclpy only.

Where ``ros2 bag play`` exists it does the same job; this player exists for
machines without ``rosbag2`` (our pip-installed ROS) and for the replay
evaluation, so that a bag can be pushed through the live node anywhere.

Messages are read with ``rosbags`` and published as the raw CDR bytes stored in
the bag (no deserialisation), on the recorded topic names (remap with
``--ros-args -r /from:=/to``). Timing follows the bag's log (receive) times:
message i leaves at ``start + (t_i - t_0) / rate``. Optionally ``/clock``
carries the bag time, for nodes run with ``use_sim_time:=true``.

Usage::

    bag_player BAG [--topics /a /b] [--rate 2.0] [--loop] [--start-offset 1.5] [--clock [HZ]]
               [--wait-for-subscribers [/camera/color/image_raw=2 ...]] [--wait-for-publisher /segmentation/class_map]
               [--delay 0.5]
               [--ros-args -r /camera/rgb:=/rgb/image]
"""
from __future__ import annotations

from .. import ros_env  # noqa: F401  (before rclpy: the pip ROS wheels' library path)

# isort: split
import argparse
import contextlib
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

CLOCK_TOPIC = "/clock"


@dataclass
class PlaybackStats:
    """What one playback did. Times in seconds; lateness is actual minus planned publish time."""

    published: dict[str, int] = field(default_factory=dict)  # messages per topic
    bag_seconds: float = 0.0  # log-time span played (all loops together)
    wall_seconds: float = 0.0
    lateness_ms: list[float] = field(default_factory=list)
    loops: int = 0

    def describe(self) -> str:
        late = np.asarray(self.lateness_ms) if self.lateness_ms else np.zeros(1)
        counts = ", ".join(f"{t}: {n}" for t, n in sorted(self.published.items()))
        return (
            f"played {sum(self.published.values())} messages ({counts}) in {self.wall_seconds:.2f} s wall "
            f"for {self.bag_seconds:.2f} s of bag; lateness p50 {np.percentile(late, 50):.2f} ms, "
            f"p95 {np.percentile(late, 95):.2f} ms, max {late.max():.2f} ms"
        )


def message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' -> the rclpy message class; ImportError naming the type if it is not installed."""
    parts = msgtype.split("/")
    if len(parts) == 2:  # ROS 1 style 'pkg/Type'
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ImportError(f"cannot make a message class from type name {msgtype!r}")
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise ImportError(
            f"message type {msgtype} is not installed in this Python ({err}); install its package or leave "
            "its topic out with --topics"
        ) from None


class BagPlayer:
    """Publishes a bag through an rclpy node.

    bag: rosbag2 folder or file (sqlite3 or MCAP) or ROS 1 ``.bag``.
    topics: topics to play (default: all). rate: speed factor (2.0 = twice as fast).
    start_offset: seconds of the bag to skip at the start. clock_hz: publish ``/clock``
    with the bag time at this rate while playing (0: off). qos: ``reliable`` (matches
    reliable and best-effort subscribers) or ``sensor_data`` (best effort).
    """

    def __init__(
        self,
        node: Any,
        bag: str | Path,
        topics: Optional[Sequence[str]] = None,
        rate: float = 1.0,
        loop: bool = False,
        start_offset: float = 0.0,
        clock_hz: float = 0.0,
        qos: str = "reliable",
        queue_depth: int = 100,
    ):
        from rclpy.qos import QoSProfile, qos_profile_sensor_data

        from sigma_core.data.bags import bag_topics, describe_topics, open_bag

        if not rate > 0:
            raise ValueError(f"rate (--rate) must be > 0, got {rate}")
        if start_offset < 0:
            raise ValueError(f"start_offset (--start-offset) must be >= 0 seconds, got {start_offset}")
        if clock_hz < 0:
            raise ValueError(f"clock rate (--clock) must be >= 0 Hz, got {clock_hz}")
        if qos not in ("reliable", "sensor_data"):
            raise ValueError(f"qos must be 'reliable' or 'sensor_data', got {qos!r}")
        self.node, self.bag, self.rate, self.loop = node, Path(bag), float(rate), bool(loop)
        self.start_offset, self.clock_hz = float(start_offset), float(clock_hz)
        self._stack = contextlib.ExitStack()
        self._reader = self._stack.enter_context(open_bag(self.bag))
        available = bag_topics(self._reader)
        wanted = list(topics) if topics else sorted(available)
        missing = [t for t in wanted if t not in available]
        if missing:
            listing = describe_topics(self._reader)
            self._stack.close()
            raise ValueError(f"bag {self.bag} has no topic {', '.join(missing)}; its topics are: {listing}")
        self.topics = wanted
        self._connections = [c for c in self._reader.connections if c.topic in wanted]
        profile = qos_profile_sensor_data if qos == "sensor_data" else QoSProfile(depth=queue_depth)
        self._publishers: dict[str, Any] = {}
        for topic in wanted:
            self._publishers[topic] = node.create_publisher(message_class(available[topic]), topic, profile)
        self._clock_pub = None
        if self.clock_hz > 0:
            from rosgraph_msgs.msg import Clock

            self._clock_pub = node.create_publisher(Clock, CLOCK_TOPIC, QoSProfile(depth=1))
        self.stats = PlaybackStats(published={t: 0 for t in wanted})

    # --- set-up helpers ---------------------------------------------------------------------------

    def wait_for_subscribers(self, timeout: float, minimum: Optional[dict[str, int]] = None,
                             settle: float = 1.0) -> bool:
        """Wait until every played topic has matched its subscribers (bounded by ``timeout`` s), then ``settle``
        s more; True if they all did.

        A topic needs at least ``minimum[topic]`` subscriptions (default 1) and every subscription the
        graph knows of; give the count where several processes must all hear the first message (a node and
        an evaluator on the same camera topic). A subscriber that this publisher counts may not yet have
        matched the publisher in turn, and a volatile subscription misses what is sent before that: hence
        the settle time.
        """
        minimum = dict(minimum or {})
        unknown = [t for t in minimum if t not in self._publishers]
        if unknown:
            raise ValueError(f"--wait-for-subscribers names {', '.join(unknown)}, which this player does not play "
                             f"({', '.join(self._publishers)})")
        deadline = time.monotonic() + timeout

        def waiting() -> list[str]:
            return [f"{t} ({p.get_subscription_count()} of {minimum.get(t, 1)})" for t, p in self._publishers.items()
                    if p.get_subscription_count() < max(minimum.get(t, 1), self.node.count_subscribers(p.topic_name))]

        while time.monotonic() < deadline:
            if not waiting():
                time.sleep(settle)
                return True
            time.sleep(0.05)
        self.node.get_logger().warning(f"subscribers not matched after {timeout:.1f} s on: {', '.join(waiting())}")
        return False

    def wait_for_publishers(self, topics: Sequence[str], timeout: float) -> bool:
        """Wait until each of ``topics`` has a publisher (e.g. a node's latched output that says it is ready)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = [t for t in topics if self.node.count_publishers(t) < 1]
            if not missing:
                return True
            time.sleep(0.05)
        self.node.get_logger().warning(f"no publisher after {timeout:.1f} s on: {', '.join(missing)}")
        return False

    # --- playback ---------------------------------------------------------------------------------

    def _publish_clock(self, bag_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_ns), 1_000_000_000)
        self._clock_pub.publish(msg)

    def _sleep_until(self, wall_target: float, bag_at) -> None:
        """Sleep until ``wall_target`` (perf_counter s), publishing /clock at clock_hz meanwhile."""
        period = 1.0 / self.clock_hz if self._clock_pub is not None else None
        while True:
            now = time.perf_counter()
            remaining = wall_target - now
            if remaining <= 0:
                return
            if period is not None:
                if now >= self._next_clock:
                    self._publish_clock(bag_at(now))
                    self._next_clock = now + period
                remaining = min(remaining, max(self._next_clock - now, 0.0))
            # Sleep most of the way, then yield in short steps: time.sleep overshoots by ~0.1-1 ms.
            time.sleep(remaining - 0.0005 if remaining > 0.002 else 0.0001)

    def _ros1_converters(self) -> dict[str, Any]:
        """topic -> function from ROS 1 bytes to ROS 2 CDR bytes (headers lose ``seq``, field names follow ROS 2)."""
        from rosbags.convert.converter import generate_message_converter
        from rosbags.typesys import Stores, get_typestore

        ros2, cache = get_typestore(Stores.ROS2_KILTED), {}
        return {
            c.topic: generate_message_converter(self._reader.typestore, ros2, c.msgtype, c.msgtype, cache,
                                                src_is2=False, dst_is2=True)
            for c in self._connections
        }

    def play(self, should_stop=lambda: False) -> PlaybackStats:
        """Play once (or until ``should_stop()`` with ``loop``); returns the statistics."""
        reader, stats, context = self._reader, self.stats, self.node.context
        bag_start = reader.start_time + int(self.start_offset * 1e9)
        if bag_start >= reader.end_time:
            raise ValueError(
                f"start offset {self.start_offset:.3f} s is past the end of {self.bag} "
                f"({(reader.end_time - reader.start_time) / 1e9:.3f} s long)"
            )
        from sigma_core.data.bags import read_raw_messages

        convert = None if reader.is2 else self._ros1_converters()
        self._next_clock = 0.0
        wall_begin = time.perf_counter()
        while context.ok() and not should_stop():
            loop_wall0 = time.perf_counter()
            first: Optional[int] = None
            last = bag_start
            for conn, t_ns, raw in read_raw_messages(reader, self._connections, self.bag, start=bag_start):
                if first is None:
                    first = t_ns
                target = loop_wall0 + (t_ns - first) / 1e9 / self.rate
                self._sleep_until(target, lambda now, f=first, w=loop_wall0: f + int((now - w) * self.rate * 1e9))
                if should_stop() or not context.ok():
                    break
                data = bytes(raw) if convert is None else bytes(convert[conn.topic](raw))
                if self._clock_pub is not None:
                    self._publish_clock(t_ns)
                self._publishers[conn.topic].publish(data)
                stats.lateness_ms.append((time.perf_counter() - target) * 1e3)
                stats.published[conn.topic] += 1
                last = t_ns
            stats.loops += 1
            if first is not None:
                stats.bag_seconds += (last - first) / 1e9
            if not self.loop:
                break
        stats.wall_seconds = time.perf_counter() - wall_begin
        return stats

    def close(self) -> None:
        self._stack.close()


def parse_minimum(items: Sequence[str]) -> dict[str, int]:
    """['/rgb=2', '/labels=1'] -> {'/rgb': 2, '/labels': 1}; ValueError naming a malformed item."""
    out = {}
    for item in items:
        topic, sep, count = item.rpartition("=")
        if not sep or not topic or not count.isdigit():
            raise ValueError(f"--wait-for-subscribers takes TOPIC=N items, got {item!r}")
        out[topic] = int(count)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bag_player",
        description="Publish a bag's topics with their recorded timing (rclpy; no rosbag2 needed).",
    )
    p.add_argument("bag", help="rosbag2 folder/file (sqlite3 or MCAP) or ROS 1 .bag")
    p.add_argument("--topics", nargs="+", help="topics to play (default: all)")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1.0)")
    p.add_argument("--loop", action="store_true", help="play again from the start until interrupted")
    p.add_argument("--start-offset", type=float, default=0.0, help="seconds of the bag to skip")
    p.add_argument(
        "--clock", type=float, nargs="?", const=40.0, default=0.0, metavar="HZ",
        help="publish /clock with the bag time (default 40 Hz when given) for use_sim_time nodes",
    )
    p.add_argument("--qos", choices=("reliable", "sensor_data"), default="reliable")
    p.add_argument("--wait-for-subscribers", nargs="*", metavar="TOPIC=N", default=None,
                   help="wait until every topic has a subscriber (TOPIC=N: at least N on TOPIC) before playing")
    p.add_argument("--wait-for-publisher", action="append", default=[], metavar="TOPIC",
                   help="first wait until TOPIC has a publisher, e.g. /segmentation/class_map (the node is ready)")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="seconds to wait for subscribers/publishers")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to sleep before the first message")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.utilities import remove_ros_args

    argv = list(sys.argv if argv is None else ["bag_player", *argv])
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = rclpy.create_node("bag_player")
    player = None
    try:
        player = BagPlayer(
            node, args.bag, topics=args.topics, rate=args.rate, loop=args.loop,
            start_offset=args.start_offset, clock_hz=args.clock, qos=args.qos,
        )
        if args.wait_for_publisher:
            player.wait_for_publishers(args.wait_for_publisher, args.wait_timeout)
        if args.wait_for_subscribers is not None:
            player.wait_for_subscribers(args.wait_timeout, parse_minimum(args.wait_for_subscribers))
        if args.delay > 0:
            time.sleep(args.delay)
        node.get_logger().info(f"playing {args.bag} ({', '.join(player.topics)}) at rate {args.rate}")
        stats = player.play()
        node.get_logger().info(stats.describe())
        return 0
    except (ValueError, OSError, ImportError) as err:  # BagError is a ValueError
        print(f"bag_player: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if player is not None:
            player.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
