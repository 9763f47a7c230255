"""Offline replay evaluation: same metrics as sigma-evaluate on the dataset sigma-extract makes from the bag;
the output bag holds the node's topics; the report and the command line behave."""
from __future__ import annotations

import csv
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

    s = replayed.summary
    # Labelled extraction keeps every labelled RGB frame with its nearest thermal frame (RGB is labelled at 30 Hz,
    # thermal runs at 9 Hz): a superset of the node's pairs, which it holds with the same thermal frames.
    with open(world["dataset"] / "pairs.csv", newline="") as f:
        extracted = {int(r["rgb_stamp_ns"]): int(r["modal_stamp_ns"]) for r in csv.DictReader(f)}
    assert set(replayed.modal_stamp) < set(extracted) and s.frames == s.frames_scored > 5
    assert all(extracted[rgb] == modal for rgb, modal in replayed.modal_stamp.items())
    (world["dataset"] / "replayed.txt").write_text("".join(f"{st}\n" for st in sorted(replayed.modal_stamp)))
    out = world["root"] / "evaluate"
    rc = evaluate_main([str(world["ckpt"]), "data.num_workers=0", "--data-root", str(world["dataset"]),
                        "--preset", "custom", "--split", "replayed", "--device", "cpu", "--out", str(out)])
    assert rc in (0, None)
    evaluated = json.loads((out / "report.json").read_text())
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


def test_a_label_topic_with_more_classes_than_the_model_is_refused_with_one_line(world, tmp_path, capsys):
    """The tiny model predicts the synthetic world's 8 classes; a label topic with ids up to 11 (a 12-class
    labelling) would be scored on fewer pixels without a word: it is an error naming topic, value and count."""
    from sigma_core.data.bags import BagWriter, message_to_array, open_bag, read_messages, stamp_ns

    rec = world["record"]
    relabelled = tmp_path / "twelve_classes"
    with open_bag(rec.path) as reader, BagWriter(relabelled, "sqlite3") as out:
        for conn, log_ns, msg in read_messages(reader, reader.connections, rec.path):
            if conn.topic == rec.label_topic:
                label = np.array(message_to_array(msg)[0])
                label[:4, :4] = 11
                msg = out.image(stamp_ns(msg), msg.header.frame_id, label, "mono8")
            elif conn.msgtype != "sensor_msgs/msg/Image":
                continue
            else:
                arr, enc = message_to_array(msg)
                msg = out.image(stamp_ns(msg), msg.header.frame_id, np.array(arr), enc)
            out.write(conn.topic, log_ns, msg)
    rc = main([str(relabelled), "--checkpoint", str(world["ckpt"]), "--rgb-topic", rec.rgb_topic,
               "--modal-topic", rec.modal_topic, "--label-topic", rec.label_topic, "--device", "cpu",
               "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"ns on {rec.label_topic} holds label value 11, but the dataset has 8 classes" in err
    assert "the model predicts 8 classes (background, road, building, vegetation, ...)" in err
    assert not (tmp_path / "report").exists()


def test_label_folder_of_indexed_pngs_is_read_as_class_ids(world, tmp_path):
    """An annotation tool's palette PNGs in --label-dir score exactly like the grey ones sigma-extract wrote."""
    import cv2
    from PIL import Image

    rec = world["record"]
    indexed = tmp_path / "Label"
    indexed.mkdir()
    for path in sorted((world["dataset"] / "Label").glob("*.png"))[:30]:
        img = Image.fromarray(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), mode="P")
        img.putpalette([(37 * i) % 256 for i in range(768)])
        img.save(indexed / path.name)
    grey = replay_bag(ReplayOptions(rec.path, rec.rgb_topic, rec.modal_topic, label_dir=world["dataset"] / "Label",
                                    max_pairs=4), world["seg"])
    by_index = replay_bag(ReplayOptions(rec.path, rec.rgb_topic, rec.modal_topic, label_dir=indexed, max_pairs=4),
                          world["seg"])
    assert by_index.summary.frames_scored == grey.summary.frames_scored == 4
    for stamp, cm in grey.confusion.items():
        np.testing.assert_array_equal(by_index.confusion[stamp], cm)


def _relabelled_bag(rec, path, make_label):
    """rec's bag with every label message replaced by ``make_label(bag_writer, stamp, frame_id, ids)``."""
    from sigma_core.data.bags import BagWriter, message_to_array, open_bag, read_messages, stamp_ns

    with open_bag(rec.path) as reader, BagWriter(path, "sqlite3") as out:
        for conn, log_ns, msg in read_messages(reader, reader.connections, rec.path):
            if conn.msgtype != "sensor_msgs/msg/Image":
                continue
            arr, enc = message_to_array(msg)
            if conn.topic == rec.label_topic:
                msg = make_label(out, stamp_ns(msg), msg.header.frame_id, np.array(arr))
            else:
                msg = out.image(stamp_ns(msg), msg.header.frame_id, np.array(arr), enc)
            out.write(conn.topic, log_ns, msg)
    return path


def test_label_topic_is_read_as_class_ids_or_refused_never_by_its_first_channel(world, tmp_path, capsys):
    """A colour label topic (bgr8: class colours) was scored by its blue channel, a misread without a word: it is
    a one-line error. An indexed-PNG CompressedImage label topic scores exactly like the mono8 one."""
    import io

    from PIL import Image

    from sigma_core.data.synthetic import world_description

    rec = world["record"]
    palette = np.array(world_description("thermal")["palette"], np.uint8)

    def colour(out, stamp, frame_id, ids):
        return out.image(stamp, frame_id, palette[ids][..., ::-1].copy(), "bgr8")

    def indexed(out, stamp, frame_id, ids):
        img = Image.fromarray(ids, mode="P")
        img.putpalette(palette.reshape(-1).tolist())
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return out.compressed_image(stamp, frame_id, "png", buf.getvalue())

    rc = main([str(_relabelled_bag(rec, tmp_path / "colour", colour)), "--checkpoint", str(world["ckpt"]),
               "--rgb-topic", rec.rgb_topic, "--modal-topic", rec.modal_topic, "--label-topic", rec.label_topic,
               "--device", "cpu", "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"ns on {rec.label_topic} is bgr8" in err and "a colour image: its values are not class ids" in err
    grey = replay_bag(ReplayOptions(rec.path, rec.rgb_topic, rec.modal_topic, label_topic=rec.label_topic,
                                    max_pairs=4), world["seg"])
    by_index = replay_bag(ReplayOptions(_relabelled_bag(rec, tmp_path / "indexed", indexed), rec.rgb_topic,
                                        rec.modal_topic, label_topic=rec.label_topic, max_pairs=4), world["seg"])
    assert by_index.summary.frames_scored == grey.summary.frames_scored == 4
    for stamp, cm in grey.confusion.items():
        np.testing.assert_array_equal(by_index.confusion[stamp], cm)


def test_published_checkpoint_needs_and_takes_a_dataset(world, published_parity, tmp_path, capsys):
    """The parity network as a published file: --dataset (a class list) makes it run; its Segmenter gives the
    fixture's logits; without --dataset the tool stops with one line naming the presets."""
    import torch

    from sigma_ros.segmentation_step import load_segmenter  # the node's loader, which replay runs too

    rec, checkpoint = world["record"], published_parity["checkpoint"]
    fixture = published_parity["fixture"]
    seg = load_segmenter(str(checkpoint), "cpu", "fp32", dataset=str(published_parity["classes"]))
    torch.testing.assert_close(seg.logits(fixture["rgb"], fixture["x"]), fixture["logits"], atol=1e-5, rtol=0)
    args = [str(rec.path), "--checkpoint", str(checkpoint), "--rgb-topic", rec.rgb_topic, "--modal-topic",
            rec.modal_topic, "--device", "cpu", "--max-pairs", "3", "--no-html", "--out", str(tmp_path / "report")]
    assert main(args + ["--dataset", str(published_parity["classes"])]) == 0
    out = capsys.readouterr().out
    assert "architecture inferred from its keys" in out and (tmp_path / "report" / "report.md").is_file()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mfnet, pst900, nyudepthv2, sunrgbd" in err


def test_non_finite_logits_give_no_mask_and_are_counted(world):
    """A model whose logits overflow (here: an infinite class weight) must not have its frames scored as masks;
    the replay goes on, counts them as dropped and says why (before: a traceback from sigma-replay-eval)."""
    import torch

    from sigma_core import Segmenter

    seg = Segmenter.from_checkpoint(str(world["ckpt"]), device="cpu", precision="fp32")
    with torch.no_grad():
        seg.model.decode_head.output.weight[1] = float("inf")
    rec = world["record"]
    result = replay_bag(ReplayOptions(rec.path, rec.rgb_topic, rec.modal_topic, label_dir=world["dataset"] / "Label",
                                      max_pairs=3), seg)
    summary = result.summary
    assert summary.expected_pairs == 3 and summary.frames == 0 and summary.frames_scored == 0
    assert summary.dropped == 3 and summary.metrics is None
    assert any("3 of 3 pairs got NaN/infinite logits" in note for note in summary.notes), summary.notes


def test_a_bag_holding_fewer_messages_than_it_declares_is_an_error_or_a_warning(world, tmp_path, capsys):
    """Issue 21, fault 3 in sigma-replay-eval: a bag whose index (here metadata.yaml) declares more RGB messages than
    it holds is an error naming both counts; --allow-partial scores what can be read and warns. Fault 9:
    --max-pairs below 1 is refused."""
    import shutil

    rec = world["record"]
    bag = tmp_path / "short_bag"
    shutil.copytree(rec.path, bag)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    for topic in meta["rosbag2_bagfile_information"]["topics_with_message_count"]:
        if topic["topic_metadata"]["name"] == rec.rgb_topic:
            held = topic["message_count"]
            topic["message_count"] = held + 5  # what the recorder wrote, of which 5 were lost
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    args = [str(bag), "--checkpoint", str(world["ckpt"]), "--rgb-topic", rec.rgb_topic, "--modal-topic",
            rec.modal_topic, "--out", str(tmp_path / "report"), "--device", "cpu", "--no-html"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"holds fewer messages than its index declares ({rec.rgb_topic}: {held} of {held + 5} read)" in err
    assert "--allow-partial" in err and not (tmp_path / "report").exists()
    assert main(args + ["--allow-partial"]) == 0
    assert f"warning (--allow-partial): bag {bag} holds fewer messages" in capsys.readouterr().err
    assert main(args + ["--max-pairs", "-5"]) == 2
    assert "--max-pairs must be >= 1" in capsys.readouterr().err


def test_a_report_folder_holding_a_users_files_is_refused_before_replaying(world, tmp_path, capsys):
    """Issue 21, fault 5: `sigma-replay-eval --out DIR` replaced a report.md it did not write."""
    rec = world["record"]
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    args = [str(rec.path), "--checkpoint", str(world["ckpt"]), "--rgb-topic", rec.rgb_topic, "--modal-topic",
            rec.modal_topic, "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    assert "holds report.md that no replay report wrote" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "my own notes" and sorted(p.name for p in out.iterdir()) == ["report.md"]
    fresh = tmp_path / "fresh"
    assert main([*args[:-3], str(fresh), "--device", "cpu"]) == 0
    assert main([*args[:-3], str(fresh), "--device", "cpu"]) == 0  # a replay report of its own is renewed


def test_a_depth_bag_replayed_through_a_thermal_model_is_named_with_the_fix(world, tmp_path, capsys):
    """Issue 22 attack: the node names a depth camera fed to a thermal model; sigma-replay-eval scored such a bag
    without a word. The same evidence (topic name, 16UC1, no-return zeros) now gives the same advice."""
    from replay_helpers import SIZE

    from sigma_core.data.synthetic import write_bag

    bag = write_bag(tmp_path / "depth_bag", seconds=0.5, seed=3, modality="depth", size=SIZE).path
    topics = ["--rgb-topic", "/camera/color/image_raw", "--modal-topic", "/camera/depth/image_rect_raw"]
    assert main([str(bag), "--checkpoint", str(world["ckpt"]), *topics, "--max-pairs", "1", "--out",
                 str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "/camera/depth/image_rect_raw looks like a depth camera" in out and "is a thermal model" in out
    assert "sigma_nano_synthetic_depth.pt" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert any("looks like a depth camera" in n for n in summary["notes"])
    # the thermal bag through the same model: no such note
    record = world["record"]
    assert main([str(record.path), "--checkpoint", str(world["ckpt"]), "--rgb-topic", record.rgb_topic,
                 "--modal-topic", record.modal_topic, "--max-pairs", "1", "--out", str(tmp_path / "t")]) == 0
    assert "looks like a depth camera" not in capsys.readouterr().out
