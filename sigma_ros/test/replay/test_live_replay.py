"""Live replay: bag_player -> the node (own processes) -> replay evaluator (this process), on a private domain.

Checks what the node guarantees, whatever the machine's load: every mask's stamp is a bag RGB stamp and
its modality partner a bag modality stamp within the slop; every mask equals the offline segmentation of
the pair the node made (the same as offline replay's where the pairing agrees: arrival order decides close
calls); pairs, masks and drops add up. Waits are on events with bounded timeouts.
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
from ros_tools import private_domain_id  # noqa: E402

from sigma_core.engine.metrics import compute_metrics  # noqa: E402
from sigma_ros.replay.live_evaluator import EvaluatorOptions, ReplayEvaluator  # noqa: E402
from sigma_ros.replay.replay_eval import ReplayOptions, replay_bag  # noqa: E402

DOMAIN_ID = private_domain_id()  # this module's own
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
         "--idle-timeout", "5", "--duration", "300", "--no-html"],
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
            env=env, capture_output=True, text=True, timeout=240)
        assert player.returncode == 0, player.stderr
        # Done when every pair has its mask, or nothing came for 5 s (the node dropped the rest).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not evaluator.all_answered() and evaluator.idle_for() < 5.0:
            time.sleep(0.1)
        summary = evaluator.summary()
        cli_out, _ = cli.communicate(timeout=120)
        result = {"cli_rc": cli.returncode, "cli_out": cli_out,
                  "cli_summary": json.loads((root / "cli_report" / "summary.json").read_text()),
                  "record": record, "ckpt": ckpt, "summary": summary, "masks": dict(evaluator.masks),
                  "confusion": dict(evaluator.confusion), "node_skew_ms": dict(evaluator.node_skew_ms),
                  "expected": dict(evaluator.expected), "unknown": evaluator.unknown_masks, "root": root,
                  "node_dropped": evaluator.node_dropped}
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
    # How many pairs the model keeps up with depends on the machine's load (the rest are dropped and counted);
    # the newest pair is never replaced, so at least the last one is always segmented.
    assert s.frames >= 1, s
    rgb_stamps = set(rec.stamps(rec.rgb_topic))
    assert set(live["masks"]) <= rgb_stamps and live["unknown"] == 0
    assert len(live["masks"]) == s.frames, "one mask per stamp"
    assert live["node_rc"] == 0, "the node shuts down cleanly on SIGINT"


def node_pairs(live) -> dict[int, int]:
    """RGB stamp -> modality stamp of each pair the node segmented (from its stats' sync skew), ns."""
    rec = live["record"]
    modal_stamps = np.array(sorted(rec.stamps(rec.modal_topic)))
    pairs = {}
    for rgb, skew_ms in live["node_skew_ms"].items():
        modal = modal_stamps[np.argmin(np.abs(modal_stamps - (rgb - skew_ms * 1e6)))]
        assert abs((rgb - modal) / 1e6 - skew_ms) < 1e-3, f"the node paired {rgb} with no bag modality frame"
        pairs[rgb] = int(modal)
    return pairs


def test_pairs_and_drops_add_up(live, offline):
    s, rec = live["summary"], live["record"]
    slop_ns = 0.05e9
    # Every message of the bag was heard (reliable QoS, subscribers matched before playing).
    assert s.rgb_messages == offline.summary.rgb_messages and s.modal_messages == offline.summary.modal_messages
    # The evaluator pairs what it received with the node's policy; arrival order decides close calls, so the pairs
    # may differ from offline replay's, but each is a valid pair and (thermal windows do not overlap at 9 Hz with
    # a 50 ms slop) every thermal frame finds a partner in any order, up to the ends of the bag.
    rgb_stamps, modal_stamps = set(rec.stamps(rec.rgb_topic)), set(rec.stamps(rec.modal_topic))
    for pairs in (live["expected"], node_pairs(live)):
        assert all(rgb in rgb_stamps and modal in modal_stamps and abs(rgb - modal) < slop_ns
                   for rgb, modal in pairs.items())
        assert len(set(pairs.values())) == len(pairs), "a thermal frame in two pairs"
    assert abs(s.expected_pairs - offline.summary.frames) <= 2
    assert s.expected_pairs >= s.modal_messages - 2
    # The node segments or drops (counted) each pair it makes: masks + drops = its pairs = the expected pairs.
    assert set(live["masks"]) <= set(live["node_skew_ms"]) and s.frames == len(live["masks"]), "stats per mask"
    assert abs(s.frames + live["node_dropped"] - s.expected_pairs) <= 2
    assert len(s.latency_ms) == s.frames and 0 < min(s.latency_ms)


def test_live_accuracy_equals_offline_on_the_frames_not_dropped(live, offline):
    s = live["summary"]
    pairs = node_pairs(live)
    # Frames the node paired as offline replay did: the same masks, the same confusion.
    same_pair = [st for st in live["masks"] if offline.modal_stamp.get(st) == pairs.get(st)]
    for st in same_pair:
        np.testing.assert_array_equal(live["masks"][st], offline.masks[st])
    # Frames paired otherwise (a close call decided by arrival order): the mask of the pair the node made.
    other = [st for st in live["masks"] if st not in same_pair]
    if other:
        import torch

        from sigma_core import Segmenter
        from sigma_core.data.bags import message_to_array, open_bag

        torch.set_num_threads(1)
        rec = live["record"]
        wanted = {rec.rgb_topic: set(other), rec.modal_topic: {pairs[st] for st in other}}
        images = {}
        with open_bag(rec.path) as reader:
            for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
                msg = reader.deserialize(raw, conn.msgtype)
                st = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
                if st in wanted[conn.topic]:
                    images[conn.topic, st] = message_to_array(msg)[0]
        seg = Segmenter.from_checkpoint(str(live["ckpt"]), device="cpu", precision="fp32")
        for st in other:
            mask, _ = seg(images[rec.rgb_topic, st], images[rec.modal_topic, pairs[st]])
            np.testing.assert_array_equal(live["masks"][st], mask)
    print(f"{len(same_pair)} of {s.frames} masks paired as offline replay, {len(other)} otherwise")
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
