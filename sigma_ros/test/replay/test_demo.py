"""`make demo` (python -m sigma_ros.replay.demo) end to end, short: it runs, and its printed summary, report files and
overlays agree with each other and with the bag it recorded."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from replay_helpers import SIZE, tiny_checkpoint  # noqa: E402
from ros_tools import private_domain_id  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own


def bundled_model() -> Path | None:
    try:
        from sigma_core.assets import demo_checkpoint
    except ImportError:
        return None
    path = Path(demo_checkpoint())
    return path if path.is_file() else None


def test_demo_runs_end_to_end_and_reports(tmp_path):
    out = tmp_path / "demo_output"
    out.mkdir()
    (out / "thesis.txt").write_text("mine")  # the demo must leave what it did not write
    bundled = bundled_model()
    # The bundled model is what `make demo` runs; before it exists, a tiny model exercises the same pipeline.
    # The bundled model runs at the size it was trained for (the demo's default); the tiny one on smaller images.
    model_args = [] if bundled else ["--checkpoint", str(tiny_checkpoint(tmp_path / "tiny.pt")),
                                     "--size", str(SIZE[0]), str(SIZE[1])]
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), OMP_NUM_THREADS="1")
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)  # the demo must pick the shipped profile itself
    done = subprocess.run(
        [sys.executable, "-m", "sigma_ros.replay.demo", "--seconds", "2", "--output", str(out), "--device", "cpu",
         *model_args],
        env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert f"ROS_DOMAIN_ID={DOMAIN_ID}" in text and "fastdds_large_images.xml" in text

    summary = json.loads((out / "summary.json").read_text())
    m = re.search(r"frames segmented : (\d+) of (\d+) synchronized pairs \((\d+) dropped\)", text)
    assert m, text
    frames, pairs, dropped = map(int, m.groups())
    assert (frames, pairs, dropped) == (summary["frames"], summary["expected_pairs"], summary["dropped"])
    # How many pairs the model keeps up with depends on the machine's load (the rest are dropped and counted);
    # the newest pair is never replaced, so at least one is always segmented.
    assert frames >= 1 and frames + dropped == pairs
    # 2 s of RGB at 30 Hz and thermal at 9 Hz were recorded and replayed.
    assert summary["rgb_messages"] == 60 and summary["modal_messages"] == 18 and pairs >= 15
    assert summary["latency_ms"]["count"] == frames and summary["latency_ms"]["p50"] > 0
    assert re.search(r"latency +: p50 [\d.]+ ms, p95 [\d.]+ ms", text)
    # The terminal prints 2 decimals of what the JSON keeps 3 of (8.8449 prints 8.84 and is kept as 8.845).
    assert summary["fps"] > 0 and abs(float(re.search(r"([\d.]+) FPS", text)[1]) - summary["fps"]) <= 0.0051
    metrics = summary["metrics"]
    assert metrics is not None and summary["frames_scored"] == frames
    assert abs(float(re.search(r"mIoU ([\d.]+)%", text)[1]) - 100 * metrics["miou"]) <= 0.051
    names = [c["class"] for c in metrics["per_class"]]
    assert all(re.search(rf"^    {re.escape(n)} ", text, re.M) for n in names), "per-class lines"
    if bundled:  # it must segment the synthetic world far above content-blind chance
        from sigma_core.engine.metrics import chance_miou

        chance = chance_miou(np.array([c["pixels"] for c in metrics["per_class"]]))
        assert metrics["miou"] > max(0.25, 2 * chance["uniform"], 2 * chance["majority"]), (metrics["miou"], chance)

    # The report and the overlay frames are where the demo says.
    report = re.search(r"Report: (\S+report\.md)", text)
    assert report and Path(report.group(1)) == (out / "report.md").resolve()
    for name in ("report.md", "report.html", "latency.png", "class_iou.png", "frames.png", "node.log"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == frames
    from sigma_core.data.bags import open_bag, stamp_ns

    with open_bag(out / "synthetic_bag") as reader:
        conns = [c for c in reader.connections if c.topic == "/camera/color/image_raw"]
        rgb_stamps = {stamp_ns(reader.deserialize(raw, c.msgtype)) for c, _, raw in reader.messages(conns)}
    assert {int(p.stem) for p in overlays} <= rgb_stamps
    assert (out / "thesis.txt").read_text() == "mine"
    listed = (out / ".sigma_demo_files").read_text().splitlines()
    assert listed[0] == "complete" and "thesis.txt" not in listed and "report.md" in listed
    assert {f"overlays/{p.name}" for p in overlays} <= set(listed)


def test_demo_depth_option_runs_the_bundled_depth_model_on_a_depth_bag(tmp_path):
    """Issue 22: `make demo ARGS="--modality depth"`: the bundled depth model on a synthetic RGB-depth bag (16UC1
    millimetres, CameraInfo), scored against the bag's labels, without start-up warnings in the node's log."""
    out = tmp_path / "demo_depth"
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "sigma_ros.replay.demo", "--modality", "depth", "--seconds", "2", "--output", str(out),
         "--device", "cpu"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sigma_nano_synthetic_depth.pt (depth)" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"]["modality"] == "depth" and summary["frames_scored"] >= 1
    assert summary["metrics"]["miou"] >= 0.6, summary["metrics"]
    node_log = (out / "node.log").read_text()
    assert "sigma_nano_synthetic_depth.pt (8 classes, depth)" in node_log
    assert "WARN" not in node_log, node_log  # no "no messages for 3 s" while the bag is being recorded


def test_demo_fails_loudly_without_a_model_and_touches_nothing(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "thesis.txt").write_text("mine")
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID))
    for output in (out, tmp_path / "new"):
        done = subprocess.run(
            [sys.executable, "-m", "sigma_ros.replay.demo", "--seconds", "1", "--output", str(output),
             "--checkpoint", str(tmp_path / "missing.pt")], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "missing.pt" in done.stderr
    assert [p.name for p in out.iterdir()] == ["thesis.txt"] and (out / "thesis.txt").read_text() == "mine"
    assert not (tmp_path / "new").exists()


def test_arguments_the_node_would_refuse_are_refused_before_anything_starts(tmp_path):
    """Issue 21, fault 9: --size 100000 100000 was a numpy MemoryError traceback; --size 2 2, --slop -1 and
    --queue-size 0 were refused only by the node, 30 s later."""
    cases = {("--size", "100000", "100000"): "--size must be [height, width] of 4..8192 pixels",
             ("--size", "2", "2"): "--size must be [height, width] of 4..8192 pixels, got [2, 2]",
             ("--slop", "-1"): "--slop must be > 0, got -1.0", ("--queue-size", "0"): "--queue-size must be >= 1"}
    for args, expected in cases.items():
        done = subprocess.run([sys.executable, "-m", "sigma_ros.replay.demo", "--output", str(tmp_path / "out"), *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and done.stderr == f"sigma-demo: {expected}" + done.stderr.split(expected)[1], \
            done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_rerun_removes_only_what_the_demo_wrote(tmp_path):
    from sigma_ros.replay.demo import MANIFEST, DemoError, prepare_output, record_output

    out = tmp_path / "out"
    before = prepare_output(out)
    # what a run writes, and what the user adds meanwhile (also inside the demo's folders)
    for rel in ("report.md", "node.log", "overlays/1.png", "overlays/2.png", "synthetic_bag/metadata.yaml"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("demo")
    record_output(out, before)
    (out / "thesis.txt").write_text("mine")
    (out / "overlays" / "keep.png").write_text("mine")
    prepare_output(out)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == [MANIFEST, "overlays", "overlays/keep.png", "thesis.txt"]
    # the started manifest lists only what the next run may create: not the user's overlays folder
    assert "overlays" not in (out / MANIFEST).read_text().split()
    # a run killed before listing its files: the folders it made (absent before it) go, other files stay
    (out / "synthetic_bag").mkdir()
    (out / "synthetic_bag" / "bag_0.db3").write_text("demo")
    (out / "player.log").write_text("demo")
    prepare_output(out)
    assert not (out / "synthetic_bag").exists() and not (out / "player.log").exists()
    assert (out / "thesis.txt").is_file() and (out / "overlays" / "keep.png").is_file()
    # a file of the user's where the demo would write: refused, nothing removed
    (out / MANIFEST).unlink()
    (out / "report.md").write_text("my report")
    with pytest.raises(DemoError, match="report.md, which the demo did not write"):
        prepare_output(out)
    assert (out / "report.md").read_text() == "my report"
    (out / "report.md").unlink()
    (out / "synthetic_bag").mkdir()  # a bag folder of the user's: the demo's bag needs a new one
    with pytest.raises(DemoError, match="synthetic_bag"):
        prepare_output(out)
    with pytest.raises(DemoError, match="is a file"):
        prepare_output(out / "thesis.txt")


def test_the_demo_report_carries_the_nodes_warnings(tmp_path):
    """Issue 22 attack: `sigma-demo --modality depth --checkpoint <thermal model>` ran with only a warning in the
    node's log; the demo's summary and report now carry the node's warnings (rclpy's real console format)."""
    from sigma_ros.replay.demo import node_warnings

    code = ("import rclpy; rclpy.init(); n = rclpy.create_node('sigma_segmentation'); "
            "n.get_logger().info('ready'); n.get_logger().warning(\"modality 'depth' overrides the checkpoint's\"); "
            "n.get_logger().warning(\"modality 'depth' overrides the checkpoint's\"); n.get_logger().error('bad')")
    log = tmp_path / "node.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, timeout=60, check=True,
                       env=dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID)))
    assert node_warnings(log) == ["modality 'depth' overrides the checkpoint's", "bad"], log.read_text()
    assert node_warnings(tmp_path / "missing.log") == []
