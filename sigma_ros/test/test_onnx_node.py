"""The node deployed without PyTorch: a node process where ``import torch`` fails loads a sigma-export file and
publishes the masks the torch node publishes for the same bag."""
from __future__ import annotations

import json
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
from ros_tools import private_domain_id  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from sigma_core.data.bags import BagWriter, open_bag, stamp_ns  # noqa: E402
from sigma_ros.node.image_conversion import image_msg_to_array  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own
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


def blocking(root, *packages: str) -> str:
    """A PYTHONPATH whose sitecustomize makes importing any of ``packages`` fail (torch: TORCH_BLOCKER)."""
    folder = root / f"no_{'_'.join(packages)}"
    folder.mkdir(exist_ok=True)
    code = TORCH_BLOCKER if packages == ("torch",) else TORCH_BLOCKER.replace(
        'name == "torch" or name.startswith("torch.")', f"name.split('.')[0] in {set(packages)!r}")
    (folder / "sitecustomize.py").write_text(code)
    return os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])


def test_node_and_replay_without_onnxruntime_name_the_install_command(tmp_path):
    """No onnxruntime installed: the node exits 2 and sigma-replay-eval exits 2, each with one line giving the pip
    command, before anything else (no bag is read, no report folder written)."""
    import onnx
    from onnx import TensorProto, helper

    from sigma_core.onnx_runtime import KEY_PREFIX

    graph = helper.make_graph([helper.make_node("Add", ["rgb", "modal"], ["logits"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, "H", "W"])
                               for n in ("rgb", "modal")],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for key, value in {"format": '"sigma-onnx/1"', "model": '"toy"', "classes": '["a", "b", "c"]',
                       "palette": "[[0, 0, 0], [1, 1, 1], [2, 2, 2]]", "modality": '{"modality": "thermal"}',
                       "normalization": '{"mean": [0, 0, 0], "std": [1, 1, 1]}', "input_size": "null",
                       "precision": '"fp32"', "source_checkpoint": '"x.pt"', "sigma_core_version": '"0"'}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = KEY_PREFIX + key, value
    onnx.save(model, str(tmp_path / "m.onnx"))
    env = dict(os.environ, PYTHONPATH=blocking(tmp_path, "onnxruntime"), ROS_DOMAIN_ID=str(DOMAIN_ID))
    for cmd in ([sys.executable, "-m", "sigma_ros.node", "--ros-args", "-p", f"checkpoint:={tmp_path / 'm.onnx'}"],
                [sys.executable, "-m", "sigma_ros.replay.replay_eval", str(tmp_path / "no_bag"), "--rgb-topic", "/a",
                 "--modal-topic", "/b", "--checkpoint", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "report")]):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        out = run.stdout + run.stderr
        assert run.returncode == 2 and "Traceback" not in out, out
        lines = [line for line in out.splitlines() if "pip install onnxruntime" in line]
        assert len(lines) == 1 and "needs ONNX Runtime, which is not installed" in lines[0], out
    assert not (tmp_path / "report").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny thermal checkpoint and its export fixed at the bag's size (a file for any size is covered in
    sigma_core; a fixed one exports in a fraction of the time), written once for the module."""
    from sigma_core.cli.export import main as export_main

    root = tmp_path_factory.mktemp("onnx_node")
    ckpt = write_checkpoints(root)["thermal"]
    onnx_file = root / "thermal.onnx"
    assert export_main([str(ckpt), "--out", str(onnx_file), "--height", str(H), "--width", str(W)]) == 0
    return root, ckpt, onnx_file


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_node_without_torch_runs_an_exported_model_like_the_torch_node(exported, tmp_path_factory, monkeypatch):
    """The ONNX node runs its scans on the native kernel (torch blocked in its process). Also: it is given
    warmup.size 96x120, a size its fixed-size file refuses; it warms up at the file's
    64x80, the only size it runs at (every image is resized to it), where it exited 2 ('set warmup.size to the
    camera's size', which the file refused as well: the demo could not run such a file)."""
    root, ckpt, onnx_file = exported
    write_bag(root / "bag")

    no_torch_path = blocking(root, "torch")
    check = subprocess.run([sys.executable, "-c", "import torch"], env=dict(os.environ, PYTHONPATH=no_torch_path),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "blocked" in check.stderr

    remaps = ("-r", f"rgb/image:={RGB_TOPIC}", "-r", f"modal/image:={THERMAL_TOPIC}")
    torch_node = start_node(tmp_path_factory, "/t", {"checkpoint": ckpt, "device": "cpu"}, DOMAIN_ID, args=remaps)
    monkeypatch.setenv("PYTHONPATH", no_torch_path)  # only for the ONNX node's process
    try:
        onnx_node = start_node(tmp_path_factory, "/o", {"checkpoint": onnx_file, "device": "cpu",
                                                        "warmup.size": "[96, 120]"}, DOMAIN_ID, args=remaps,
                               warmup=False)
    except AssertionError:
        torch_node.kill()
        raise
    monkeypatch.undo()
    harness = Harness(DOMAIN_ID)
    try:
        assert "ONNX Runtime" in onnx_node.log() and "CPUExecutionProvider" in onnx_node.log()
        # the scans on the native kernel inside ONNX Runtime (onnx_scan_ops), torch blocked
        assert "with the native scan kernel" in onnx_node.log() and "scan backend native" in onnx_node.log()
        assert f"warming up at {H}x{W}" in onnx_node.log()
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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replay_evaluation_of_an_exported_model_without_torch(exported):
    """sigma-replay-eval scores an .onnx file in a process where `import torch` fails (its confusion counts and
    report imported torch at module level: ImportError traceback before any work): every pair segmented, a report."""
    root, _, onnx_file = exported
    if not (root / "bag").exists():
        write_bag(root / "bag")
    run = subprocess.run([sys.executable, "-m", "sigma_ros.replay.replay_eval", str(root / "bag"), "--rgb-topic",
                          RGB_TOPIC, "--modal-topic", THERMAL_TOPIC, "--checkpoint", str(onnx_file), "--out",
                          str(root / "report"), "--device", "cpu"],
                         env=dict(os.environ, PYTHONPATH=blocking(root, "torch"), OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout + run.stderr
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["frames"] == FRAMES, summary


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_runs_a_depth_onnx_file_without_torch(exported, tmp_path):
    """The demo (`--modality depth`: 16UC1 bag, CameraInfo, the node's depth path) with an .onnx file, demo and node
    both in processes where `import torch` fails: they imported it for the synthetic recording, the evaluator's
    confusion counts and torch.device (ImportError traceback before anything ran). The file is the module's export
    with its metadata made a depth model's (the weights do not know their modality)."""
    import onnx

    from sigma_core.onnx_runtime import KEY_PREFIX

    root, _, onnx_file = exported
    model = onnx.load(str(onnx_file))
    for entry in model.metadata_props:
        if entry.key == KEY_PREFIX + "modality":
            entry.value = json.dumps({"modality": "depth", "range": None, "max_range": 8.0})
    depth_file = tmp_path / "depth.onnx"
    onnx.save(model, str(depth_file))
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=blocking(tmp_path, "torch"), OMP_NUM_THREADS="1",
               ROS_DOMAIN_ID=str(private_domain_id()))
    run = subprocess.run([sys.executable, "-m", "sigma_ros.replay.demo", "--modality", "depth", "--seconds", "2",
                          "--size", "48", "60", "--output", str(out), "--device", "cpu", "--checkpoint",
                          str(depth_file)], env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    node_log = (out / "node.log").read_text()
    assert "ONNX Runtime" in node_log and "Traceback" not in node_log + run.stderr, node_log
    assert f"warming up at {H}x{W}" in node_log  # the file's fixed size, not the demo's 48x60 bag
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"]["modality"] == "depth" and summary["frames"] >= 1, summary
