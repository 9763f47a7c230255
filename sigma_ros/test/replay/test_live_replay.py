"""Live replay: bag_player -> the node (own processes) -> replay evaluator (this process), on a private domain.

Checks what the issue asks: every mask's stamp is a bag RGB stamp; accuracy on the frames that were
not dropped equals the offline replay's on the same frames; drops and pairs add up.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from replay_helpers import SIZE, synthetic_bag, tiny_checkpoint  # noqa: E402

from sigma_core.engine.metrics import compute_metrics  # noqa: E402
from sigma_ros.replay.live_evaluator import EvaluatorOptions, ReplayEvaluator  # noqa: E402
from sigma_ros.replay.replay_eval import ReplayOptions, replay_bag  # noqa: E402

DOMAIN_ID = 40 + os.getpid() % 30  # private to this module (other test modules use other ranges)
PROFILE = Path(__file__).resolve().parents[2] / "config" / "fastdds_large_images.xml"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Replay a 3 s synthetic bag live through a node process; return the bag, checkpoint and evaluator results."""
    root = tmp_path_factory.mktemp("live")
    record = synthetic_bag(root / "bag", seconds=3.0, seed=11)
    ckpt = tiny_checkpoint(root / "tiny.pt")
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE),
               OMP_NUM_THREADS="1")
    node_log = open(root / "node.log", "w")
    node = subprocess.Popen(
        [sys.executable, "-m", "sigma_ros.node", "--ros-args", "-p", f"checkpoint:={ckpt}", "-p", "device:=cpu",
         "-p", f"warmup.size:=[{SIZE[0]}, {SIZE[1]}]",
         "-r", f"rgb/image:={record.rgb_topic}", "-r", f"modal/image:={record.modal_topic}"],
        env=env, stdout=node_log, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=DOMAIN_ID)
    evaluator = ReplayEvaluator(EvaluatorOptions(rgb_topic=record.rgb_topic, modal_topic=record.modal_topic,
                                                 label_topic=record.label_topic, keep_masks=True,
                                                 overlay_dir=root / "overlays"), context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(evaluator)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.05)
            except Exception:
                return

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    # The replay_evaluator command as well (what the launch file runs), measuring the same replay.
    cli = subprocess.Popen(
        [sys.executable, "-m", "sigma_ros.replay.live_evaluator", "--rgb-topic", record.rgb_topic, "--modal-topic",
         record.modal_topic, "--label-topic", record.label_topic, "--out", str(root / "cli_report"),
         "--idle-timeout", "2", "--duration", "120", "--no-html"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert evaluator.class_map_event.wait(90), (root / "node.log").read_text()[-3000:]
        deadline = time.monotonic() + 30  # both evaluators subscribed to the masks before the replay starts
        while evaluator.count_subscribers("/segmentation/mask") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        player = subprocess.run(
            [sys.executable, "-m", "sigma_ros.replay.bag_player", str(record.path),
             "--topics", record.rgb_topic, record.modal_topic, record.label_topic,
             "--wait-for-publisher", "/segmentation/class_map", "--wait-timeout", "60",
             # the node and both evaluators hear every camera frame; both evaluators every label
             "--wait-for-subscribers", f"{record.rgb_topic}=3", f"{record.modal_topic}=3",
             f"{record.label_topic}=2"],
            env=env, capture_output=True, text=True, timeout=60)
        assert player.returncode == 0, player.stderr
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not evaluator.all_answered() and evaluator.idle_for() < 2.0:
            time.sleep(0.1)
        summary = evaluator.summary()
        cli_out, _ = cli.communicate(timeout=30)
        result = {"cli_rc": cli.returncode, "cli_out": cli_out,
                  "cli_summary": json.loads((root / "cli_report" / "summary.json").read_text()),
                  "record": record, "ckpt": ckpt, "summary": summary, "masks": dict(evaluator.masks),
                  "confusion": dict(evaluator.confusion), "node_skew_ms": dict(evaluator.node_skew_ms),
                  "expected": dict(evaluator.expected), "unknown": evaluator.unknown_masks, "root": root}
    finally:
        stop.set()
        thread.join(timeout=5)
        node.send_signal(signal.SIGINT)
        try:
            node_rc = node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            node_rc = None
        node_log.close()
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=5)
        evaluator.destroy_node()
        rclpy.try_shutdown(context=context)
    result["node_rc"] = node_rc
    return result


@pytest.fixture(scope="module")
def offline(live):
    import torch

    from sigma_core import Segmenter

    torch.set_num_threads(1)  # as the node process (OMP_NUM_THREADS=1): the same arithmetic, the same masks

    rec = live["record"]
    seg = Segmenter.from_checkpoint(str(live["ckpt"]), device="cpu", precision="fp32")
    return replay_bag(ReplayOptions(rec.path, rec.rgb_topic, rec.modal_topic, label_topic=rec.label_topic,
                                    keep_masks=True), seg)


def test_every_mask_stamp_is_a_bag_rgb_stamp(live):
    rec, s = live["record"], live["summary"]
    assert s.frames >= 10, f"only {s.frames} masks came back"
    rgb_stamps = set(rec.stamps(rec.rgb_topic))
    assert set(live["masks"]) <= rgb_stamps and live["unknown"] == 0
    assert len(live["masks"]) == s.frames, "one mask per stamp"
    assert live["node_rc"] == 0, "the node shuts down cleanly on SIGINT"


def test_pairs_and_drops_add_up(live, offline):
    s = live["summary"]
    # The evaluator pairs the streams it received with the node's policy: the pairs offline replay makes
    # (up to close calls that the arrival order decides).
    agree = sum(1 for rgb, modal in live["expected"].items() if offline.modal_stamp.get(rgb) == modal)
    assert agree >= 0.9 * len(offline.modal_stamp)
    assert abs(s.expected_pairs - offline.summary.frames) <= 2
    assert s.frames <= s.expected_pairs and s.frames + s.dropped == s.expected_pairs
    assert s.rgb_messages == offline.summary.rgb_messages and s.modal_messages == offline.summary.modal_messages
    assert len(s.latency_ms) == s.frames and 0 < min(s.latency_ms) and np.median(s.latency_ms) < 3000


def test_live_accuracy_equals_offline_on_the_frames_not_dropped(live, offline):
    s = live["summary"]
    # Frames the node paired as offline (the node's skew equals the offline pair's skew).
    same_pair = [st for st in live["masks"]
                 if st in offline.modal_stamp
                 and abs(live["node_skew_ms"][st] - (st - offline.modal_stamp[st]) / 1e6) < 1e-3]
    assert len(same_pair) >= 0.9 * s.frames
    for st in same_pair:
        np.testing.assert_array_equal(live["masks"][st], offline.masks[st])
    assert set(live["confusion"]) == set(live["masks"]), "every mask scored against its label"
    offline_cm = sum(offline.confusion[st] for st in same_pair)
    live_cm = sum(live["confusion"][st] for st in same_pair)
    np.testing.assert_array_equal(live_cm, offline_cm)
    if len(same_pair) == s.frames:
        live_miou, offline_miou = s.metrics.miou, compute_metrics(offline_cm).miou
        assert live_miou == pytest.approx(offline_miou, abs=1e-12)


def test_replay_evaluator_command_measures_the_same_replay(live):
    s, cli = live["summary"], live["cli_summary"]
    assert live["cli_rc"] == 0, live["cli_out"]
    assert "Sigma live replay summary" in live["cli_out"] and "report:" in live["cli_out"]
    assert cli["rgb_messages"] == s.rgb_messages and cli["modal_messages"] == s.modal_messages
    assert cli["frames"] == s.frames and cli["frames_scored"] == s.frames_scored
    assert cli["metrics"]["miou"] == pytest.approx(s.metrics.miou, abs=1e-12)


def test_overlays_written_for_every_mask(live):
    files = sorted((live["root"] / "overlays").glob("*.png"))
    assert {int(f.stem) for f in files} == set(live["masks"])
