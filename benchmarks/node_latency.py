#!/usr/bin/env python3
"""End-to-end latency of sigma_node, and the part of it that is the node's own overhead.

Starts the node (``python -m sigma_ros.node``) in its own process, publishes RGB
(rgb8) + thermal (mono16) pairs of ``--width`` x ``--height`` at ``--rate`` Hz for
``--seconds`` from this process, and receives ``segmentation/mask`` and
``segmentation/stats`` here. Per frame:

- latency: mask received here minus the RGB stamp (= the send time, same clock);
- forward: ``inference_ms`` from the node's stats for that frame (the Segmenter call:
  pre-processing, network, upsampling, argmax);
- overhead = latency - forward: transport both ways, conversions, pairing, waiting for
  the inference thread, publishing. When the model is slower than the input rate, a
  frame waits for the forward in progress, so overhead includes up to one forward;
  run with a ``--rate`` the model keeps up with to see the node's own cost.

Also: growth = mean latency of the last quarter of frames minus the first quarter
(a backlog would make it grow with the run), frames sent/segmented/dropped.

    python benchmarks/node_latency.py --seconds 60            # 640x480 at 30 Hz
    python benchmarks/node_latency.py --seconds 20 --rate 5   # below the CPU model's throughput

Without ``--checkpoint`` a tiny random Sigma (dims 32, one block per stage) is written
to a temporary directory, running at ``--net-size`` (default 48x64) so that a CPU
can get close to camera rates; pass a real checkpoint and ``--device cuda`` on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

NS = "/bench"


def make_checkpoint(directory: Path, net_size: tuple[int, int]) -> Path:
    """A tiny random Sigma checkpoint (4 classes, thermal) that runs at ``net_size`` = (H, W)."""
    import torch

    from sigma_core import SigmaConfig, build_sigma, save_checkpoint

    torch.manual_seed(0)
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=4)
    return Path(save_checkpoint(directory / "bench.pt", build_sigma(cfg).eval(), cfg,
                                class_names=["a", "b", "c", "d"], modality="thermal", input_size=net_size))


def percentiles(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "max": float(values.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to publish (default 60)")
    parser.add_argument("--rate", type=float, default=30.0, help="pairs per second (default 30)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--checkpoint", help="Sigma checkpoint; default: a tiny random one (see --net-size)")
    parser.add_argument("--net-size", default="48x64", help="HxW the default tiny model runs at (default 48x64)")
    parser.add_argument("--device", default="cpu", help="node device parameter (default cpu)")
    parser.add_argument("--domain-id", type=int, default=200 + os.getpid() % 30, help="private ROS_DOMAIN_ID")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    from sigma_ros.package_files import fastdds_profile_env

    os.environ.update(fastdds_profile_env())
    from sigma_ros import ros_env  # noqa: F401  (before rclpy)

    # isort: split
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from sigma_core.data.bags import stamp_ns
    from sigma_msgs.msg import SegmentationStats
    from sigma_ros.node.image_conversion import array_to_image_msg

    workdir = Path(tempfile.mkdtemp(prefix="sigma_node_latency_"))
    net_h, net_w = (int(v) for v in args.net_size.lower().split("x"))
    checkpoint = Path(args.checkpoint) if args.checkpoint else make_checkpoint(workdir, (net_h, net_w))
    log_path = workdir / "node.log"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "sigma_ros.node", "--ros-args", "-r", f"__ns:={NS}",
           "-p", f"checkpoint:={checkpoint}", "-p", f"device:={args.device}",
           "-p", f"warmup.size:=[{args.height}, {args.width}]"]
    log_file = open(log_path, "w")
    node_proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    rclpy.init()
    node = rclpy.create_node("node_latency_bench")
    sent: dict[int, float] = {}
    received: dict[int, float] = {}  # stamp ns -> receive time ns
    forward: dict[int, float] = {}
    node_latency: dict[int, float] = {}
    dropped = [0]
    lock = threading.Lock()

    def on_mask(msg):
        now = time.time_ns()
        with lock:
            received[stamp_ns(msg)] = now

    def on_stats(msg):
        stamp = stamp_ns(msg)
        with lock:
            forward[stamp] = msg.inference_ms
            node_latency[stamp] = msg.latency_ms
            dropped[0] = msg.frames_dropped

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, f"{NS}/segmentation/mask", on_mask, qos)
    node.create_subscription(SegmentationStats, f"{NS}/segmentation/stats", on_stats, qos)
    pub_rgb = node.create_publisher(Image, f"{NS}/rgb/image", 10)
    pub_modal = node.create_publisher(Image, f"{NS}/modal/image", 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    rng = np.random.default_rng(0)
    rgb_msg = array_to_image_msg(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8), "rgb8")
    modal_msg = array_to_image_msg(rng.integers(0, 65535, (args.height, args.width), dtype=np.uint16), "mono16")

    def publish(stamp: int) -> None:
        for msg in (rgb_msg, modal_msg):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = "camera"
        pub_rgb.publish(rgb_msg)
        pub_modal.publish(modal_msg)

    try:
        deadline = time.monotonic() + 180
        while "ready:" not in log_path.read_text():
            if node_proc.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text(), file=sys.stderr)
                raise SystemExit("the node did not start")
            time.sleep(0.1)
        # Discovery: publish until the node answers, then start clean.
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            publish(time.time_ns())
            time.sleep(0.2)
        if not received:
            raise SystemExit(f"no mask from the node within 60 s; log: {log_path}")
        time.sleep(1.0)
        with lock:
            received.clear()
            forward.clear()
            node_latency.clear()
        dropped_before = dropped[0]

        period = 1.0 / args.rate
        start = time.monotonic()
        i = 0
        while True:
            due = start + i * period
            if due - start >= args.seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stamp = time.time_ns()
            sent[stamp] = time.monotonic()
            publish(stamp)
            i += 1
        last = max(sent)
        wait_until = time.monotonic() + 10
        while time.monotonic() < wait_until:
            with lock:
                if last in received and last in forward:
                    break
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        node_proc.send_signal(signal.SIGINT)
        try:
            node_proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node_proc.kill()
        log_file.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()

    with lock:
        stamps = sorted(s for s in received if s in sent and s in forward)
        latency = np.array([(received[s] - s) / 1e6 for s in stamps])
        fwd = np.array([forward[s] for s in stamps])
        inside = np.array([node_latency[s] for s in stamps])
        drops = dropped[0] - dropped_before
    overhead = latency - fwd
    quarter = max(1, len(stamps) // 4)
    growth = float(latency[-quarter:].mean() - latency[:quarter].mean()) if len(stamps) >= 4 else float("nan")
    result = {
        "size": f"{args.width}x{args.height}", "rate_hz": args.rate, "seconds": args.seconds,
        "checkpoint": str(checkpoint), "device": args.device,
        "sent": len(sent), "segmented": len(stamps), "dropped": drops,
        "latency_ms": percentiles(latency), "forward_ms": percentiles(fwd), "overhead_ms": percentiles(overhead),
        "node_reported_latency_ms": percentiles(inside),
        "latency_first_quarter_ms": float(latency[:quarter].mean()) if len(stamps) else float("nan"),
        "latency_last_quarter_ms": float(latency[-quarter:].mean()) if len(stamps) else float("nan"),
        "latency_growth_ms": growth,
    }
    print(f"sigma_node end-to-end, {result['size']} rgb8 + mono16 at {args.rate:g} Hz for {args.seconds:g} s "
          f"({args.device}; model forward includes pre/post-processing)")
    print(f"  pairs sent {len(sent)}, segmented {len(stamps)}, dropped while busy {drops}")
    for name in ("latency_ms", "forward_ms", "overhead_ms", "node_reported_latency_ms"):
        p = result[name]
        print(f"  {name:26s} p50 {p['p50']:8.1f}  p95 {p['p95']:8.1f}  max {p['max']:8.1f}")
    print(f"  latency first quarter {result['latency_first_quarter_ms']:.1f} ms, last quarter "
          f"{result['latency_last_quarter_ms']:.1f} ms: growth {growth:+.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
