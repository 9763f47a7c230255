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
    python benchmarks/node_latency.py --checkpoint bundled --rate 15 --threads 2 --seconds 40 \
        --baseline-rev e255c92 --rounds 2      # the bundled nano model, against the node before issue 23

``--baseline-rev`` runs the node of an older revision (its sigma_core and sigma_ros from a temporary git
worktree, ahead of the installed packages on PYTHONPATH; the messages are this checkout's) alternately with
this checkout's, and prints the ratio of masks per second and both latency p95s.

Without ``--checkpoint`` a tiny random Sigma (dims 32, one block per stage) is written
to a temporary directory, running at ``--net-size`` (default 48x64) so that a CPU
can get close to camera rates; pass a real checkpoint and ``--device cuda`` on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

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


def run_node(args, checkpoint: Optional[Path], workdir: Path, tag: str, source_root: Optional[Path], ros) -> dict:
    """One benchmark run: start the node (from ``source_root``'s sources if given, else the installed ones), publish
    for ``args.seconds``, stop it; returns the measurements. ``ros``: this process's publishers and receive state."""
    log_path = workdir / f"node_{tag}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)
    if args.threads:  # else each revision's own default (since issue 23: all CPUs but one)
        env["OMP_NUM_THREADS"] = str(args.threads)
    if source_root is not None:  # an older revision's packages ahead of the installed ones
        paths = [str(source_root / "sigma_core"), str(source_root / "sigma_ros")]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "sigma_ros.node", "--ros-args", "-r", f"__ns:={NS}",
           "-p", f"device:={args.device}", "-p", f"warmup.size:=[{args.height}, {args.width}]"]
    if checkpoint is not None:
        cmd += ["-p", f"checkpoint:={checkpoint}"]
    log_file = open(log_path, "w")
    node_proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    sent, received, forward, node_latency, dropped, lock = (ros[k] for k in (
        "sent", "received", "forward", "node_latency", "dropped", "lock"))
    for table in (sent, received, forward, node_latency):
        table.clear()
    publish = ros["publish"]
    try:
        deadline = time.monotonic() + 180
        while "ready:" not in log_path.read_text():
            if node_proc.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text(), file=sys.stderr)
                raise SystemExit(f"the node ({tag}) did not start")
            time.sleep(0.1)
        ready = next(line for line in log_path.read_text().splitlines() if "ready:" in line)
        # Discovery: publish until the node answers, then start clean.
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            publish(time.time_ns())
            time.sleep(0.2)
        if not received:
            raise SystemExit(f"no mask from the node ({tag}) within 60 s; log: {log_path}")
        time.sleep(max(1.0, args.settle))
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

    with lock:
        stamps = sorted(s for s in received if s in sent and s in forward)
        latency = np.array([(received[s] - s) / 1e6 for s in stamps])
        fwd = np.array([forward[s] for s in stamps])
        inside = np.array([node_latency[s] for s in stamps])
        drops = dropped[0] - dropped_before
        # Masks per second over the publishing window: masks whose pair was sent within it.
        masks_per_s = len(stamps) / args.seconds
    overhead = latency - fwd
    quarter = max(1, len(stamps) // 4)
    growth = float(latency[-quarter:].mean() - latency[:quarter].mean()) if len(stamps) >= 4 else float("nan")
    return {
        "setup": tag, "ready_line": ready.split("ready:", 1)[1].strip()[:200],
        "size": f"{args.width}x{args.height}", "rate_hz": args.rate, "seconds": args.seconds,
        "threads": args.threads, "checkpoint": str(checkpoint or "bundled"), "device": args.device,
        "sent": len(sent), "segmented": len(stamps), "dropped": drops, "masks_per_s": masks_per_s,
        "latency_ms": percentiles(latency), "forward_ms": percentiles(fwd), "overhead_ms": percentiles(overhead),
        "node_reported_latency_ms": percentiles(inside),
        "latency_first_quarter_ms": float(latency[:quarter].mean()) if len(stamps) else float("nan"),
        "latency_last_quarter_ms": float(latency[-quarter:].mean()) if len(stamps) else float("nan"),
        "latency_growth_ms": growth,
        "load_1min": os.getloadavg()[0],
    }


def print_result(result: dict) -> None:
    print(f"[{result['setup']}] sigma_node end-to-end, {result['size']} rgb8 + mono16 at {result['rate_hz']:g} Hz for "
          f"{result['seconds']:g} s, {result['threads'] or 'its default'} thread(s) ({result['device']}; model "
          f"forward includes pre/post-processing); load {result['load_1min']:.1f}")
    print(f"  ready: {result['ready_line']}")
    print(f"  pairs sent {result['sent']}, segmented {result['segmented']} ({result['masks_per_s']:.2f} masks/s), "
          f"dropped while busy {result['dropped']}")
    for name in ("latency_ms", "forward_ms", "overhead_ms", "node_reported_latency_ms"):
        p = result[name]
        print(f"  {name:26s} p50 {p['p50']:8.1f}  p95 {p['p95']:8.1f}  max {p['max']:8.1f}")
    print(f"  latency first quarter {result['latency_first_quarter_ms']:.1f} ms, last quarter "
          f"{result['latency_last_quarter_ms']:.1f} ms: growth {result['latency_growth_ms']:+.1f} ms")


def baseline_tree(rev: str, workdir: Path) -> Path:
    """A detached git worktree of this repository at ``rev`` (removed at the end by the caller)."""
    repo = Path(__file__).resolve().parents[1]
    tree = workdir / f"baseline_{rev[:12]}"
    done = subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-q", str(tree), rev],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"--baseline-rev {rev}: git worktree add failed: {done.stderr.strip()}")
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to publish (default 60)")
    parser.add_argument("--rate", type=float, default=30.0, help="pairs per second (default 30)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--checkpoint", help="Sigma checkpoint, or 'bundled' for the node's bundled thermal model; "
                                             "default: a tiny random one (see --net-size)")
    parser.add_argument("--net-size", default="48x64", help="HxW the default tiny model runs at (default 48x64)")
    parser.add_argument("--device", default="cpu", help="node device parameter (default cpu)")
    from sigma_core.model_io import threads_from_environment

    try:
        threads_default = threads_from_environment() or 1
    except ValueError as e:  # one line, never a traceback
        parser.error(str(e))
    parser.add_argument("--threads", type=int, default=threads_default,
                        help="the node's torch threads, given as OMP_NUM_THREADS (default: $OMP_NUM_THREADS, else "
                             "1); 0: none given, each node's own default")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="also run the node of this git revision (a temporary worktree) in the same run, "
                             "alternating with this checkout's, and print the ratios")
    parser.add_argument("--rounds", type=int, default=1, help="alternations with --baseline-rev (default 1)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between the first mask and the measured window (default 1)")
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
    if args.checkpoint == "bundled":
        checkpoint = None
    else:
        checkpoint = Path(args.checkpoint).resolve() if args.checkpoint else make_checkpoint(workdir, (net_h, net_w))

    rclpy.init()
    node = rclpy.create_node("node_latency_bench")
    ros = {"sent": {}, "received": {}, "forward": {}, "node_latency": {}, "dropped": [0], "lock": threading.Lock()}
    lock, received, forward, node_latency, dropped = (ros[k] for k in (
        "lock", "received", "forward", "node_latency", "dropped"))

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

    ros["publish"] = publish
    setups: list[tuple[str, Optional[Path]]] = [("this checkout", None)]
    tree = None
    results = []
    try:
        if args.baseline_rev:
            tree = baseline_tree(args.baseline_rev, workdir)
            setups.insert(0, (f"baseline {args.baseline_rev}", tree))
        for _ in range(args.rounds if args.baseline_rev else 1):
            for tag, source_root in setups:
                result = run_node(args, checkpoint, workdir, tag, source_root, ros)
                print_result(result)
                results.append(result)
    finally:
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()  # wakes the spinner: a daemon thread still in rclpy's wait at exit aborts the process
        spinner.join(timeout=5.0)
        node.destroy_node()
        if tree is not None:
            subprocess.run(["git", "-C", str(tree), "worktree", "remove", "--force", str(tree)], capture_output=True)

    if args.baseline_rev:
        base = [r for r in results if r["setup"] != "this checkout"]
        ours = [r for r in results if r["setup"] == "this checkout"]
        rate = statistics.median(r["masks_per_s"] for r in ours) / statistics.median(r["masks_per_s"] for r in base)
        p95_ours = statistics.median(r["latency_ms"]["p95"] for r in ours)
        p95_base = statistics.median(r["latency_ms"]["p95"] for r in base)
        print(f"this checkout vs {args.baseline_rev} (medians of {len(ours)} run(s) each): masks/s x{rate:.2f} "
              f"({rate - 1:+.0%}), latency p95 {p95_ours:.0f} ms vs {p95_base:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
