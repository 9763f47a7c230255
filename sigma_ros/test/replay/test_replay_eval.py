"""Offline replay evaluation: same metrics as sigma-evaluate on the dataset sigma-extract makes from the bag;
the output bag holds the node's topics; the report and the command line behave."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
from replay_helpers import synthetic_bag, tiny_checkpoint  # noqa: E402

from sigma_ros.replay.replay_eval import ReplayOptions, main, replay_bag  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 1.5 s synthetic bag, the tiny checkpoint, its Segmenter, and the bag extracted with sigma-extract."""
    from sigma_core import Segmenter
    from sigma_core.cli.extract import main as extract_main
    from sigma_core.data.synthetic import world_description

    root = tmp_path_factory.mktemp("replay")
    record = synthetic_bag(root / "bag", seconds=1.5)
    ckpt = tiny_checkpoint(root / "tiny.pt")
    classes = root / "world.yaml"
    classes.write_text(yaml.safe_dump(world_description("thermal")))
    dataset = root / "dataset"
    rc = extract_main([str(record.path), "-o", str(dataset), "--rgb-topic", record.rgb_topic, "--modal-topic",
                       record.modal_topic, "--label-topic", record.label_topic, "--classes", str(classes), "--quiet",
                       "--test-fraction", "0"])  # every frame in train.txt: the replay segments them all
    assert rc in (0, None)
    seg = Segmenter.from_checkpoint(str(ckpt), device="cpu", precision="fp32")
    return {"root": root, "record": record, "ckpt": ckpt, "dataset": dataset, "seg": seg}


@pytest.fixture(scope="module")
def replayed(world):
    """Offline replay with the label topic, writing an output bag; masks kept."""
    rec = world["record"]
    opts = ReplayOptions(rec.path, rec.rgb_topic, rec.modal_topic, label_topic=rec.label_topic,
                         output_bag=world["root"] / "out_bag", keep_masks=True)
    return replay_bag(opts, world["seg"], out_dir=world["root"] / "report")


def test_offline_replay_equals_evaluate_on_the_extracted_dataset(world, replayed):
    from sigma_core.cli.evaluate import main as evaluate_main

    out = world["root"] / "evaluate"
    rc = evaluate_main([str(world["ckpt"]), "data.num_workers=0", "--data-root", str(world["dataset"]),
                        "--preset", "custom", "--split", "train", "--device", "cpu", "--out", str(out)])
    assert rc in (0, None)
    evaluated = json.loads((out / "report.json").read_text())
    s = replayed.summary
    # The extracted frames are exactly the pairs the replay segmented (same pairing policy, same labels).
    extracted = {int(line) for line in (world["dataset"] / "train.txt").read_text().split()}
    assert extracted == set(replayed.modal_stamp) and s.frames == len(extracted) == s.frames_scored > 5
    assert evaluated["images"] == s.frames
    ours = s.metrics.to_dict()
    assert ours["confusion_matrix"] == evaluated["metrics"]["confusion_matrix"]
    assert ours["miou"] == pytest.approx(evaluated["metrics"]["miou"], abs=1e-12)
    for a, b in zip(ours["per_class"], evaluated["metrics"]["per_class"], strict=True):
        assert a["class"] == b["class"]
        assert (a["iou"] is None and b["iou"] is None) or a["iou"] == pytest.approx(b["iou"], abs=1e-12)


def test_label_folder_scores_like_the_label_topic(world, replayed):
    rec = world["record"]
    opts = ReplayOptions(rec.path, rec.rgb_topic, rec.modal_topic, label_dir=world["dataset"] / "Label",
                         max_pairs=4)
    by_folder = replay_bag(opts, world["seg"])
    assert by_folder.summary.frames_scored == 4
    for stamp, cm in by_folder.confusion.items():
        np.testing.assert_array_equal(cm, replayed.confusion[stamp])


def test_replay_counts_pairs_skew_and_timing(world, replayed):
    rec, s = world["record"], replayed.summary
    rgb_stamps = rec.stamps(rec.rgb_topic)
    modal_stamps = rec.stamps(rec.modal_topic)
    assert s.rgb_messages == len(rgb_stamps) and s.modal_messages == len(modal_stamps)
    assert s.unpaired_rgb == len(rgb_stamps) - s.frames and s.unpaired_modal == len(modal_stamps) - s.frames
    assert set(replayed.modal_stamp) <= set(rgb_stamps) and set(replayed.modal_stamp.values()) <= set(modal_stamps)
    skews = [(r - m) / 1e6 for r, m in replayed.modal_stamp.items()]
    assert sorted(s.sync_skew_ms) == pytest.approx(sorted(skews)) and max(map(abs, skews)) < 50.0
    assert len(s.inference_ms) == s.frames and min(s.inference_ms) > 0
    assert sum(s.class_pixels.values()) == s.frames * 64 * 96


def test_output_bag_holds_the_node_topics(world, replayed):
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader

    from sigma_core.data.bags import message_to_array, stamp_ns
    from sigma_msgs.msg import SegmentationStats

    by_topic: dict[str, list] = {}
    with AnyReader([world["root"] / "out_bag"]) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {"/segmentation/mask": "sensor_msgs/msg/Image",
                         "/segmentation/color_mask": "sensor_msgs/msg/Image",
                         "/segmentation/stats": "sigma_msgs/msg/SegmentationStats",
                         "/segmentation/class_map": "sigma_msgs/msg/ClassMap"}
        for conn, _, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append(raw)
        masks = {}
        for raw in by_topic["/segmentation/mask"]:
            msg = reader.deserialize(raw, "sensor_msgs/msg/Image")
            masks[stamp_ns(msg)] = message_to_array(msg)[0]
    assert set(masks) == set(replayed.masks)
    for stamp, mask in masks.items():
        np.testing.assert_array_equal(mask, replayed.masks[stamp])
    # The stats are real sigma_msgs CDR: rclpy reads them, and so does a reader that only has the bag's definitions.
    stats = [deserialize_message(bytes(raw), SegmentationStats) for raw in by_topic["/segmentation/stats"]]
    from rosbags.typesys import Stores, get_typestore

    from sigma_ros.replay.replay_eval import register_sigma_msgs

    store = get_typestore(Stores.ROS2_KILTED)
    register_sigma_msgs(store)
    generic = store.deserialize_cdr(by_topic["/segmentation/stats"][0], "sigma_msgs/msg/SegmentationStats")
    assert generic.valid_pixels == stats[0].valid_pixels and [c.name for c in generic.classes][:2] == [
        c.name for c in stats[0].classes][:2]
    assert len(stats) == len(masks) and len(by_topic["/segmentation/class_map"]) == 1
    for st in stats:
        assert sum(c.pixel_count for c in st.classes) == st.valid_pixels == 64 * 96
        assert sum(c.fraction for c in st.classes) == pytest.approx(1.0, abs=1e-5)
        counts = np.bincount(replayed.masks[stamp_ns(st)].reshape(-1), minlength=len(st.classes))
        assert [c.pixel_count for c in st.classes] == counts.tolist()


def test_report_files_and_summary(world, replayed):
    from sigma_ros.replay.report import format_summary, write_report

    paths = write_report(replayed.summary, world["root"] / "report")
    for key in ("json", "markdown", "html", "latency", "class_iou", "frames"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    md = paths["markdown"].read_text()
    assert "![Latency](latency.png)" in md and "| road |" in md
    assert '<img src="frames.png"' in paths["html"].read_text()
    saved = json.loads(paths["json"].read_text())
    assert saved["frames"] == replayed.summary.frames and saved["metrics"]["miou"] == replayed.summary.metrics.miou
    text = format_summary(replayed.summary)
    assert f"mIoU {100 * replayed.summary.metrics.miou:.1f}%" in text and "person" in text


def test_command_line_names_missing_topics(world, capsys):
    rec = world["record"]
    rc = main([str(rec.path), "--checkpoint", str(world["ckpt"]), "--rgb-topic", "/no/such/topic",
               "--modal-topic", rec.modal_topic, "--device", "cpu", "--out", str(world["root"] / "cli")])
    err = capsys.readouterr().err
    assert rc == 2 and "/no/such/topic" in err and rec.rgb_topic in err
