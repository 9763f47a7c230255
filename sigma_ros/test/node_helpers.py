"""Shared pieces of the node's real-process tests (importable from every test folder: conftest.py's folder is on
sys.path): tiny checkpoints, a harness node in the test process, node
processes (``python -m sigma_ros.node``) with their logs, and camera stream helpers.

Images are 64x80 and the model is the smallest Sigma (dims 32, one block per stage) to keep the 2-core CI
machine responsive. Every test module passes its own private ROS domain id.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from sigma_ros.node.image_conversion import array_to_image_msg

PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_images.xml"
H, W = 64, 80
CLASSES = ["road", "car", "person", "sky"]


def write_checkpoints(root: Path) -> dict[str, Path]:
    """A tiny thermal and a tiny depth checkpoint (the same random network), written once per module."""
    import torch

    from sigma_core import SigmaConfig, build_sigma, save_checkpoint
    from sigma_core.data.modality import ModalityScaling

    torch.manual_seed(0)
    cfg = SigmaConfig(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=len(CLASSES))
    model = build_sigma(cfg).eval()
    thermal = save_checkpoint(root / "thermal.pt", model, cfg, class_names=CLASSES, modality="thermal")
    depth = save_checkpoint(root / "depth.pt", model, cfg, class_names=CLASSES, modality="depth",
                            scaling=ModalityScaling(modality="depth", max_range=8.0))
    return {"thermal": Path(thermal), "depth": Path(depth)}


class Harness:
    """An rclpy node spinning in a background thread: publishers for the inputs, collectors for the outputs."""

    def __init__(self, domain_id: int):
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("sigma_test_harness", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.got: dict[str, list] = defaultdict(list)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                return

    def publisher(self, msg_type, topic):
        return self.node.create_publisher(msg_type, topic, 10)

    def subscribe(self, msg_type, topic, latched=False, reliability=ReliabilityPolicy.RELIABLE):
        qos = QoSProfile(depth=50, reliability=reliability)
        if latched:
            qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)

        def collect(msg):
            with self.lock:
                self.got[topic].append(msg)

        return self.node.create_subscription(msg_type, topic, collect, qos)

    def messages(self, topic) -> list:
        with self.lock:
            return list(self.got[topic])

    def clear(self, *topics):
        with self.lock:
            for t in topics:
                self.got[t].clear()

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


class NodeProcess:
    """``python -m sigma_ros.node`` in namespace ``ns``; its log goes to a file we can read while it runs."""

    def __init__(self, log_dir: Path, ns: str, params: dict, domain_id: int, warmup: bool = True, args: tuple = (),
                 env: Optional[dict] = None):
        """args: more ``--ros-args`` (remappings ``-r from:=to``); env: more environment variables."""
        extra_env = env or {}
        self.ns = ns
        self.log_path = log_dir / f"{ns.strip('/')}.log"
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE),
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0", **extra_env)
        cmd = [sys.executable, "-m", "sigma_ros.node", "--ros-args", "-r", f"__ns:={ns}"]
        if warmup:
            cmd += ["-p", f"warmup.size:=[{H}, {W}]"]
        for name, value in params.items():
            cmd += ["-p", f"{name}:={value}"]
        cmd += list(args)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                return text in self.log()
            time.sleep(0.05)
        return False

    def count(self, text: str) -> int:
        return self.log().count(text)

    def wait_exit(self, timeout: float) -> tuple[Optional[int], float]:
        """(exit code or None if still running after ``timeout`` s, seconds waited)."""
        start = time.monotonic()
        try:
            return self.proc.wait(timeout=timeout), time.monotonic() - start
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - start

    def wait_ready(self, timeout: float = 90.0, text: str = "ready:"):
        assert self.wait_log(text, timeout), f"node {self.ns} did not start:\n{self.log()}"

    def stop(self, sig=signal.SIGINT, timeout: float = 10.0) -> tuple[int, float]:
        """Send ``sig``; (exit code, seconds to exit)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def start_node(tmp_path_factory, ns, params, domain_id: int, ready: str = "ready:", **kwargs) -> NodeProcess:
    """A node process that has logged ``ready`` (a lifecycle node: "lifecycle node: waiting for configure")."""
    node = NodeProcess(tmp_path_factory.mktemp("logs"), ns, params, domain_id, **kwargs)
    node.wait_ready(text=ready)
    return node


def image(arr, encoding, stamp, frame_id="camera") -> Image:
    msg = array_to_image_msg(arr, encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.header.frame_id = frame_id
    return msg


class Streams:
    """Publishers for one node's inputs, with stamps in integer nanoseconds on the wall clock."""

    def __init__(self, h: Harness, ns: str, thermal_values: tuple[int, int] = (0, 65535)):
        self.h = h
        self.thermal_values = thermal_values  # uniform raw thermal values in [low, high)
        self.rgb = h.publisher(Image, f"{ns}/rgb/image")
        self.modal = h.publisher(Image, f"{ns}/modal/image")
        self.info = h.publisher(CameraInfo, f"{ns}/modal/camera_info")
        self.rng = np.random.default_rng(7)

    def rgb_frame(self, shape=(H, W)):
        return self.rng.integers(0, 256, (*shape, 3), dtype=np.uint8)

    def thermal_frame(self, shape=(H, W)):
        return self.rng.integers(*self.thermal_values, shape, dtype=np.uint16)

    def until_served(self, mask_topic: str, modal=None, timeout: float = 30.0):
        """Publish pairs every 0.1 s until the node answers (DDS discovery done), then forget those masks."""
        modal = modal or (lambda: image(self.thermal_frame(), "mono16", stamp))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.h.messages(mask_topic):
            stamp = time.time_ns()
            self.rgb.publish(image(self.rgb_frame(), "rgb8", stamp))
            self.modal.publish(modal() if callable(modal) else modal)
            time.sleep(0.1)
        assert self.h.messages(mask_topic), f"no mask on {mask_topic} within {timeout} s"
        time.sleep(0.3)


def run_schedule(base_ns: int, events):
    """events: [(t seconds after wall time base_ns, callable)], each called at its time (stamps = send times)."""
    for t, fire in sorted(events, key=lambda e: e[0]):
        delay = (base_ns - time.time_ns()) / 1e9 + t
        if delay > 0:
            time.sleep(delay)
        fire()
