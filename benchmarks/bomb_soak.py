#!/usr/bin/env python3
"""The node's resident memory while it is fed decompression bombs at 10 Hz between good frames.

Starts the node (``python -m sigma_ros.node``, ``input.transport:=compressed``) with a tiny random
model, publishes good JPEG RGB + 16-bit PNG thermal pairs at ``--good-rate`` Hz for ``--warmup``
seconds (the steady state), then for ``--seconds`` keeps the good pairs going and adds bombs at
``--bomb-rate`` Hz between them: a 0.25 MB PNG declaring 16000x16000 (256 M pixels) on the RGB
topic and a JPEG whose frame header declares 65000x65000 on the thermal topic, in turn. The
node's VmRSS is sampled every 50 ms and its VmHWM (peak) read at the end.

Prints: steady-state RSS (median over the warm-up), the largest RSS sampled while bombs came,
the peak (VmHWM) minus the steady state, bombs sent and refused (the node's ``image_too_large``
count), good pairs sent and masks received for them. Goal (issue 21): peak < steady + 512 MB and a
mask for (nearly) every good pair.

    python benchmarks/bomb_soak.py --seconds 60
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

NS = "/soak"


def png_bomb(width: int, height: int) -> bytes:
    """A valid grey PNG of zeros declaring width x height (16000x16000: about 0.25 MB, 256 MB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    rows = b"\0" * (width + 1) * 500
    idat = b"".join(deflate.compress(rows) for _ in range(height // 500)) + deflate.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def jpeg_bomb(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    at = jpeg.find(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long bombs come (default 60)")
    parser.add_argument("--warmup", type=float, default=10.0, help="good pairs only before, seconds (default 10)")
    parser.add_argument("--bomb-rate", type=float, default=10.0, help="bombs per second (default 10)")
    parser.add_argument("--good-rate", type=float, default=5.0, help="good pairs per second (default 5)")
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
    from sensor_msgs.msg import CompressedImage, Image

    from sigma_core.data.bags import stamp_ns
    from sigma_core.data.image_encoding import encode_compressed

    sys.path.insert(0, str(Path(__file__).parent))
    from node_latency import make_checkpoint

    workdir = Path(tempfile.mkdtemp(prefix="sigma_bomb_soak_"))
    h, w = 96, 128
    checkpoint = make_checkpoint(workdir, (h, w))
    log_path = workdir / "node.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "sigma_ros.node", "--ros-args", "-r", f"__ns:={NS}", "-p", f"checkpoint:={checkpoint}",
           "-p", "device:=cpu", "-p", "input.transport:=compressed", "-p", f"warmup.size:=[{h}, {w}]"]
    log_file = open(log_path, "w")
    node_proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    rclpy.init()
    node = rclpy.create_node("bomb_soak_bench")
    received: set[int] = set()
    lock = threading.Lock()

    def on_mask(msg):
        with lock:
            received.add(stamp_ns(msg))

    node.create_subscription(Image, f"{NS}/segmentation/mask", on_mask, QoSProfile(depth=50,
                             reliability=ReliabilityPolicy.RELIABLE))
    pub_rgb = node.create_publisher(CompressedImage, f"{NS}/rgb/image/compressed", 10)
    pub_modal = node.create_publisher(CompressedImage, f"{NS}/modal/image/compressed", 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    rng = np.random.default_rng(0)
    rgb_fmt, rgb_data = encode_compressed(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "rgb8", "jpeg")
    modal_fmt, modal_data = encode_compressed(rng.integers(20000, 40000, (h, w), dtype=np.uint16), "mono16", "png")
    bombs = [(pub_rgb, "png", png_bomb(16000, 16000)), (pub_modal, "jpeg", jpeg_bomb(rgb_data, 65000, 65000))]

    def message(fmt: str, data: bytes, stamp: int) -> CompressedImage:
        msg = CompressedImage(format=fmt, data=data)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return msg

    def good_pair() -> int:
        stamp = time.time_ns()
        pub_rgb.publish(message(rgb_fmt, rgb_data, stamp))
        pub_modal.publish(message(modal_fmt, modal_data, stamp))
        return stamp

    samples: list[tuple[float, float]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append((time.monotonic(), rss_mb(node_proc.pid)))
            time.sleep(0.05)

    good_sent: list[int] = []
    bombs_sent = 0
    try:
        deadline = time.monotonic() + 180
        while "ready:" not in log_path.read_text():
            if node_proc.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text(), file=sys.stderr)
                raise SystemExit("the node did not start")
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:  # discovery
            good_pair()
            time.sleep(0.2)
        if not received:
            raise SystemExit(f"no mask from the node within 60 s; log: {log_path}")
        threading.Thread(target=sample, daemon=True).start()
        t0 = time.monotonic()
        bomb_start = t0 + args.warmup
        end = bomb_start + args.seconds
        next_good, next_bomb = t0, bomb_start
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_good:
                stamp = good_pair()
                if now >= bomb_start:
                    good_sent.append(stamp)
                next_good += 1.0 / args.good_rate
            if now >= next_bomb:
                pub, fmt, data = bombs[bombs_sent % len(bombs)]
                pub.publish(message(fmt, data, time.time_ns()))
                bombs_sent += 1
                next_bomb += 1.0 / args.bomb_rate
            time.sleep(max(0.0, min(next_good, next_bomb) - time.monotonic()))
        time.sleep(2.0)
        sampling.set()
        peak = rss_mb(node_proc.pid, "VmHWM")
        responsive = node_proc.poll() is None
    finally:
        sampling.set()
        node_proc.send_signal(signal.SIGINT)
        try:
            code = node_proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node_proc.kill()
            code = None
        log_file.close()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()  # wakes the spinner: a daemon thread still in rclpy's wait at exit aborts the process
        spinner.join(timeout=5.0)
        node.destroy_node()

    log = log_path.read_text()
    refused = [int(n) for n in re.findall(r"\[image_too_large: (\d+) so far\]", log)]
    steady = float(np.median([r for t, r in samples if t < bomb_start]))
    during = max(r for t, r in samples if t >= bomb_start)
    with lock:
        masked = len(set(good_sent) & received)
    result = {
        "steady_rss_mb": round(steady, 1), "max_rss_during_bombs_mb": round(during, 1),
        "peak_vmhwm_mb": round(peak, 1), "peak_minus_steady_mb": round(peak - steady, 1),
        "bombs_sent": bombs_sent, "bombs_refused_logged_count": max(refused, default=0),
        "good_pairs_sent": len(good_sent), "masks_for_good_pairs": masked,
        "alive_during": responsive, "exit_code_after_sigint": code,
        "load": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = peak - steady < 512 and masked >= 0.9 * len(good_sent) and responsive
    print("OK: peak < steady + 512 MB and masks for the good pairs" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
