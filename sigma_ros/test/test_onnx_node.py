"""The node deployed without PyTorch: a node process where ``import torch`` fails loads a sigma-export file and
publishes the masks the torch node publishes for the same bag."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
pytest.importorskip("onnxruntime")
from node_helpers import H, Harness, W, start_node, write_checkpoints  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sigma_core.data.bags import BagWriter, open_bag, stamp_ns  # noqa: E402
from sigma_ros.node.image_conversion import image_msg_to_array  # noqa: E402

DOMAIN_ID = 150 + os.getpid() % 30
RGB_TOPIC, THERMAL_TOPIC = "/cam/rgb", "/cam/thermal"
FRAMES = 6

# Found first on PYTHONPATH, Python runs it at start-up: every later `import torch` raises ImportError.
TORCH_BLOCKER = '''import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked: this process stands for an install without PyTorch")
        return None


sys.meta_path.insert(0, _NoTorch())
'''


def write_bag(path):
    rng = np.random.default_rng(24)
    base = 1_700_000_000_000_000_000
    with BagWriter(path) as bag:
        for i in range(FRAMES):
            stamp = base + i * 200_000_000
            bag.write(RGB_TOPIC, stamp, bag.image(stamp, "color", rng.integers(0, 256, (H, W, 3), np.uint8), "rgb8"))
            thermal = rng.integers(18000, 42000, (H, W), dtype=np.uint16)
            bag.write(THERMAL_TOPIC, stamp + 1, bag.image(stamp + 2_000_000, "thermal", thermal, "mono16"))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_node_without_torch_runs_an_exported_model_like_the_torch_node(tmp_path_factory, monkeypatch):
    from sigma_core.cli.export import main as export_main

    root = tmp_path_factory.mktemp("onnx_node")
    ckpt = write_checkpoints(root)["thermal"]
    onnx_file = root / "thermal.onnx"
    # Fixed at the bag's size: the export CI runs stays short (a file for any size is covered in sigma_core).
    assert export_main([str(ckpt), "--out", str(onnx_file), "--height", str(H), "--width", str(W)]) == 0
    write_bag(root / "bag")

    blocker = root / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(TORCH_BLOCKER)
    no_torch_path = os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])
    check = subprocess.run([sys.executable, "-c", "import torch"], env=dict(os.environ, PYTHONPATH=no_torch_path),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "blocked" in check.stderr

    remaps = ("-r", f"rgb/image:={RGB_TOPIC}", "-r", f"modal/image:={THERMAL_TOPIC}")
    torch_node = start_node(tmp_path_factory, "/t", {"checkpoint": ckpt, "device": "cpu"}, DOMAIN_ID, args=remaps)
    monkeypatch.setenv("PYTHONPATH", no_torch_path)  # only for the ONNX node's process
    try:
        onnx_node = start_node(tmp_path_factory, "/o", {"checkpoint": onnx_file, "device": "cpu"}, DOMAIN_ID,
                               args=remaps)
    except AssertionError:
        torch_node.kill()
        raise
    monkeypatch.undo()
    harness = Harness(DOMAIN_ID)
    try:
        assert "ONNX Runtime" in onnx_node.log() and "CPUExecutionProvider" in onnx_node.log()
        for ns in ("/t", "/o"):
            harness.subscribe(Image, f"{ns}/segmentation/mask")
        publishers = {t: harness.publisher(Image, t) for t in (RGB_TOPIC, THERMAL_TOPIC)}
        with open_bag(root / "bag") as reader:
            messages = [(raw, reader.deserialize(raw, conn.msgtype)) for conn, _, raw in reader.messages()]
        for (rgb_raw, rgb_msg), (thermal_raw, _) in zip(messages[::2], messages[1::2]):
            stamp = stamp_ns(rgb_msg)

            def served(stamp=stamp):
                return all(any(stamp_ns(m) == stamp for m in harness.messages(f"{ns}/segmentation/mask"))
                           for ns in ("/t", "/o"))

            deadline = time.monotonic() + 40  # a pair again if a copy was lost (best-effort input)
            while time.monotonic() < deadline and not served():
                publishers[RGB_TOPIC].publish(rgb_raw)
                publishers[THERMAL_TOPIC].publish(thermal_raw)
                harness.wait_for(served, timeout=3)
            assert served(), f"torch node:\n{torch_node.log()}\nONNX node:\n{onnx_node.log()}"
        masks = {ns: {stamp_ns(m): image_msg_to_array(m).copy() for m in harness.messages(f"{ns}/segmentation/mask")}
                 for ns in ("/t", "/o")}
    finally:
        harness.close()
        torch_node.kill()
        onnx_node.kill()
    assert len(masks["/o"]) == FRAMES and set(masks["/o"]) == set(masks["/t"])
    for stamp, mask in masks["/t"].items():
        assert (masks["/o"][stamp] == mask).mean() >= 0.999, f"mask at {stamp} differs"
    assert "Traceback" not in onnx_node.log()
