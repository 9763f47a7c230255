"""Bag -> extract -> dataset, on bags recorded from the synthetic world in every storage."""
import csv
import re
import shutil

import cv2
import numpy as np
import pytest
from reference_data import realdata_file

from sigma_core.cli.extract import main as extract_main
from sigma_core.data.bags import BagWriter, message_to_array, open_bag, read_messages, resolve_topic, stamp_ns
from sigma_core.data.dataset import DatasetSpec, RGBXDataset
from sigma_core.data.extraction import ExtractError, ExtractOptions, FramePair, extract, split_by_time
from sigma_core.data.image_encoding import to_rgb8
from sigma_core.data.pairing import ApproximateTimePairer
from sigma_core.data.synthetic import TOPICS, write_bag

RGB, THERMAL, DEPTH, LABEL = TOPICS["rgb"], TOPICS["thermal"], TOPICS["depth"], TOPICS["label"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    return {
        "sqlite3": write_bag(root / "thermal_sqlite", "sqlite3", seconds=2.0, seed=3),
        "mcap": write_bag(root / "compressed_mcap", "mcap", seconds=1.5, seed=4, night=True, rgb_format="jpeg",
                          modal_format="png"),
        "ros1": write_bag(root / "depth.bag", "ros1", seconds=1.5, seed=5, modality="depth"),
    }


def _messages(path, topic):
    """{stamp_ns: (array, encoding)} of every message on a topic, read independently of extraction."""
    out = {}
    with open_bag(path) as r:
        conns = [c for c in r.connections if c.topic == topic]
        for c, _, raw in r.messages(connections=conns):
            msg = r.deserialize(raw, c.msgtype)
            out[stamp_ns(msg)] = message_to_array(msg)
    return out


def _node_pairs(path, rgb_topic, modal_topic, slop=0.05, queue_size=10):
    """What the live node's pairer makes of the bag, fed in bag (receive) order."""
    pairer = ApproximateTimePairer(queue_size=queue_size, slop=slop)
    pairs = []
    with open_bag(path) as r:
        conns = [c for c in r.connections if c.topic in (rgb_topic, modal_topic)]
        for c, _, raw in r.messages(connections=conns):
            st = stamp_ns(r.deserialize(raw, c.msgtype))
            p = pairer.add(0 if c.topic == rgb_topic else 1, st * 1e-9, st)
            if p is not None:
                pairs.append((p.first, p.second))
    return sorted(pairs)


def _labelled_frames(path, rgb_topic, modal_topic, label_topic, slop=0.05):
    """What a labelled extraction must give: each label with the RGB frame of its stamp and the nearest
    modality frame strictly within the slop (found here by brute force over all modality stamps)."""
    rgb, modal, labels = (set(_messages(path, t)) for t in (rgb_topic, modal_topic, label_topic))
    out = []
    for st in sorted(labels):
        best = min(modal, key=lambda m: (abs(m - st), m))
        if st in rgb and abs(best - st) < slop * 1e9:
            out.append((st, best))
    return out


def _pairs_csv(out):
    with open(out / "pairs.csv") as f:
        return [(int(r["rgb_stamp_ns"]), int(r["modal_stamp_ns"]), r["name"], r["split"]) for r in csv.DictReader(f)]


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def test_sqlite3_round_trip_is_pixel_exact_and_pairs_are_the_nodes(bags, tmp_path):
    rec = bags["sqlite3"]
    # the bag is realistic: receive order differs from stamp order across the two sensors
    stamps_in_bag_order = [s for _, t, s in rec.messages if t in (RGB, THERMAL)]
    assert stamps_in_bag_order != sorted(stamps_in_bag_order)

    unlabelled = extract(ExtractOptions(rec.path, tmp_path / "pairs", RGB, THERMAL, progress=False))
    rows = _pairs_csv(tmp_path / "pairs")
    assert [(a, b) for a, b, _, _ in rows] == _node_pairs(rec.path, RGB, THERMAL)
    assert len(rows) == unlabelled.counts["pairs"] == unlabelled.counts["modal_messages"] == 18  # 9 Hz x 2 s

    out = tmp_path / "ds"
    res = extract(ExtractOptions(rec.path, out, RGB, THERMAL, label_topic=LABEL, progress=False))
    rows = _pairs_csv(out)
    # every RGB frame (30 Hz) is labelled: each one near enough to a thermal frame (9 Hz) is kept
    assert [(a, b) for a, b, _, _ in rows] == _labelled_frames(rec.path, RGB, THERMAL, LABEL, res.counts["slop_s"])
    assert len(rows) == res.counts["pairs"] == res.counts["labelled_pairs"] > 18
    assert res.counts["labels_without_modal"] == 60 - len(rows) and res.counts["labels_without_rgb"] == 0
    rgb_msgs, th_msgs, lab_msgs = (_messages(rec.path, t) for t in (RGB, THERMAL, LABEL))
    for rgb_st, th_st, name, _ in rows:
        assert name == str(rgb_st)
        np.testing.assert_array_equal(cv2.cvtColor(_read(out / "RGB" / f"{name}.png"), cv2.COLOR_BGR2RGB),
                                      rgb_msgs[rgb_st][0])
        modal = _read(out / "Modal" / f"{name}.png")
        assert modal.dtype == np.uint16  # 16-bit thermal stays 16-bit
        np.testing.assert_array_equal(modal, th_msgs[th_st][0])
        np.testing.assert_array_equal(_read(out / "Label" / f"{name}.png"), lab_msgs[rgb_st][0])
    # the folder is a dataset: train + test lists cover the pairs and the loader reads them
    names = (out / "train.txt").read_text().split()
    assert sorted(names) == sorted(r[2] for r in rows)
    ds = RGBXDataset(out, "train")
    sample = ds[0]
    assert sample["rgb"].shape == (3, 120, 160) and sample["label"].shape == (120, 160)
    stored = _read(out / "Label" / f"{ds.names[0]}.png")
    assert np.array_equal(sample["label"].numpy(), stored)


def test_compressed_mcap_rgb_jpeg_and_16bit_png_thermal(bags, tmp_path):
    rec = bags["mcap"]
    assert rec.rgb_topic.endswith("/compressed") and rec.modal_topic.endswith("/compressed")
    out = tmp_path / "ds"
    res = extract(ExtractOptions(rec.path, out, rec.rgb_topic, rec.modal_topic, label_topic=LABEL, progress=False))
    rows = _pairs_csv(out)
    assert [(a, b) for a, b, _, _ in rows] == _labelled_frames(rec.path, rec.rgb_topic, rec.modal_topic, LABEL,
                                                               res.counts["slop_s"])
    rgb_msgs, th_msgs = _messages(rec.path, rec.rgb_topic), _messages(rec.path, rec.modal_topic)
    for rgb_st, th_st, name, _ in rows[:5]:
        arr, enc = rgb_msgs[rgb_st]  # the decoded JPEG: extraction stores exactly these pixels
        np.testing.assert_array_equal(cv2.cvtColor(_read(out / "RGB" / f"{name}.png"), cv2.COLOR_BGR2RGB),
                                      to_rgb8(arr, enc))
        np.testing.assert_array_equal(_read(out / "Modal" / f"{name}.png"), th_msgs[th_st][0])
    # a .mcap file path inside the bag folder works too
    mcap_file = next(rec.path.glob("*.mcap"))
    res = extract(ExtractOptions(mcap_file, tmp_path / "ds2", rec.rgb_topic, rec.modal_topic, progress=False))
    assert res.counts["pairs"] == len(_node_pairs(rec.path, rec.rgb_topic, rec.modal_topic))


def test_ros1_depth_bag(bags, tmp_path):
    rec = bags["ros1"]
    out = tmp_path / "ds"
    rc = extract_main([str(rec.path), "-o", str(out), "--rgb-topic", RGB, "--modal-topic", DEPTH,
                       "--label-topic", LABEL, "--max-depth", "40", "--quiet"])
    assert rc == 0
    ds = RGBXDataset(out, "train")
    assert ds.spec.modality == "depth" and ds.spec.scaling.max_range == 40.0
    assert ds.spec.extra["encodings"]["modal"] == "16UC1"
    depth_msgs = _messages(rec.path, DEPTH)
    for _, d_st, name, _ in _pairs_csv(out)[:4]:
        np.testing.assert_array_equal(_read(out / "Modal" / f"{name}.png"), depth_msgs[d_st][0])


def test_float_depth_is_stored_losslessly(tmp_path):
    path = tmp_path / "float_bag"
    rng = np.random.default_rng(0)
    depth = {}
    with BagWriter(path, "sqlite3") as bag:
        for k in range(6):
            st = 1_000_000_000 + k * 100_000_000
            rgb = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
            d = rng.uniform(0.3, 9.0, (6, 8)).astype(np.float32)
            d[0, k] = np.nan  # invalid depth must survive too
            depth[st + 2_000_000] = d
            bag.write("/rgb", st + 1_000, bag.image(st, "c", rgb, "bgr8"))
            bag.write("/depth", st + 3_000_000, bag.image(st + 2_000_000, "c", d, "32FC1"))
    out = tmp_path / "ds"
    extract(ExtractOptions(path, out, "/rgb", "/depth", progress=False))
    rows = _pairs_csv(out)
    assert len(rows) == 6
    for _, d_st, name, _ in rows:
        stored = _read(out / "Modal" / f"{name}.tiff")
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, depth[d_st])  # NaN == NaN in assert_array_equal
    ds = RGBXDataset(out, "train")
    assert ds.spec.modality == "depth" and ds.spec.modal_ext == ".tiff" and ds.spec.label_dir is None
    assert (ds[0]["label"] == 255).all()


def test_resume_rewrites_only_missing_files_and_cleans_temporaries(bags, tmp_path):
    rec = bags["sqlite3"]
    out = tmp_path / "ds"
    opts = ExtractOptions(rec.path, out, RGB, THERMAL, label_topic=LABEL, progress=False)
    first = extract(opts)
    files = sorted(p for p in out.rglob("*.png"))
    before = {p: p.read_bytes() for p in files}
    files[0].unlink()
    files[-1].unlink()
    stale = out / "RGB" / ".123.png.tmp999"
    stale.write_bytes(b"half a file")
    second = extract(opts)
    assert second.written == 2 and second.skipped == first.written - 2
    assert not stale.exists()
    assert {p: p.read_bytes() for p in out.rglob("*.png")} == before


def test_thinning_and_time_block_split(bags, tmp_path):
    rec = bags["sqlite3"]
    every = extract(ExtractOptions(rec.path, tmp_path / "a", RGB, THERMAL, every=3, progress=False))
    assert every.counts["kept"] == len(every.train) == 6  # 18 pairs, every 3rd
    spaced = extract(ExtractOptions(rec.path, tmp_path / "b", RGB, THERMAL, min_interval=0.3, progress=False))
    stamps = [p.rgb_stamp for p in spaced.train]
    assert np.all(np.diff(stamps) >= 0.3e9) and len(stamps) < 18
    split = extract(ExtractOptions(rec.path, tmp_path / "c", RGB, THERMAL, test_fraction=0.25, split_blocks=4,
                                   split_gap=0.15, progress=False))
    assert split.test and split.train
    test_stamps = np.array([p.rgb_stamp for p in split.test])
    for p in split.train:  # no near-duplicate of a test frame in train
        assert np.abs(test_stamps - p.rgb_stamp).min() >= 0.15e9
    assert (tmp_path / "c" / "test.txt").read_text().split() == [p.name for p in split.test]


def test_split_by_time_takes_whole_blocks():
    pairs = [FramePair(str(i), i * 100_000_000, i * 100_000_000, i, i) for i in range(100)]  # 10 s at 10 Hz
    train, test, near_test = split_by_time(pairs, 0.2, blocks=10, gap_s=0.25)
    t = sorted(p.rgb_stamp for p in test)
    assert len(test) == 20 and len(t) == 20
    # two contiguous blocks of 1 s each
    gaps = np.diff(t)
    assert (gaps > 100_000_000).sum() == 1
    assert len(near_test) == 8 and len(train) == 72  # 2 frames each side of each test block are near-duplicates


def test_missing_topic_error_lists_the_bags_topics(bags, tmp_path, capsys):
    rec = bags["sqlite3"]
    with pytest.raises(SystemExit) as exc:
        extract_main([str(rec.path), "-o", str(tmp_path / "x"), "--rgb-topic", RGB, "--modal-topic", "/flir/image",
                      "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1  # one line, no traceback
    assert "/flir/image" in err and THERMAL in err and LABEL in err


def test_no_overlap_is_an_error_not_an_empty_dataset(tmp_path):
    rec = write_bag(tmp_path / "offset", "sqlite3", seconds=1.0, seed=1, labels=False, modal_clock_offset_s=100.0)
    with pytest.raises(ExtractError, match="do not overlap"):
        extract(ExtractOptions(rec.path, tmp_path / "ds", RGB, THERMAL, progress=False))
    assert not (tmp_path / "ds" / "train.txt").exists()


def test_bad_inputs_exit_with_one_line(tmp_path, capsys, bags):
    with pytest.raises(SystemExit) as exc:
        extract_main([str(tmp_path / "nope"), "-o", str(tmp_path / "x"), "--rgb-topic", "/a", "--modal-topic", "/b"])
    assert exc.value.code == 2 and "bag not found" in capsys.readouterr().err
    not_a_bag = tmp_path / "folder"
    not_a_bag.mkdir()
    with pytest.raises(SystemExit):
        extract_main([str(not_a_bag), "-o", str(tmp_path / "x"), "--rgb-topic", "/a", "--modal-topic", "/b"])
    assert "metadata.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # labels must be mono8
        extract_main([str(bags["sqlite3"].path), "-o", str(tmp_path / "x"), "--rgb-topic", LABEL,
                      "--modal-topic", THERMAL, "--label-topic", RGB, "--quiet"])
    assert "mono8" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(bags["sqlite3"].path, copy)
    for db in copy.glob("*.db3"):
        db.write_bytes(b"not sqlite")
    with pytest.raises(SystemExit):
        extract_main([str(copy), "-o", str(tmp_path / "x"), "--rgb-topic", RGB, "--modal-topic", THERMAL])
    assert "cannot read bag" in capsys.readouterr().err


def test_default_extraction_has_a_test_split_and_warns_where_frames_went(bags, tmp_path, capsys):
    rec = write_bag(tmp_path / "ten_seconds", "sqlite3", seconds=10.0, seed=2, labels=False)
    base = [str(rec.path), "--rgb-topic", RGB, "--modal-topic", THERMAL, "--quiet"]
    assert extract_main([*base, "-o", str(tmp_path / "default")]) == 0
    assert "warning" not in capsys.readouterr().err
    test = (tmp_path / "default" / "test.txt").read_text().split()
    train = (tmp_path / "default" / "train.txt").read_text().split()
    assert test and len(train) > len(test)  # a split to validate on, so training can choose best.pt
    # a short recording with the defaults: most frames to test or dropped at the split, each said with counts
    short = [str(bags["sqlite3"].path), "--rgb-topic", RGB, "--modal-topic", THERMAL, "--quiet"]
    assert extract_main([*short, "-o", str(tmp_path / "short")]) == 0
    err = capsys.readouterr().err
    assert "4 of 4 frames went to test and only 0 to train: lower --test-fraction (0.2)" in err, err
    assert "14 of 18 kept frames are within --split-gap of a test frame and went to gap.txt" in err, err
    assert len((tmp_path / "short" / "gap.txt").read_text().split()) == 14  # written and listed, not lost
    # most frames without a partner within --slop
    assert extract_main([*short, "-o", str(tmp_path / "tight"), "--slop", "0.004", "--test-fraction", "0"]) == 0
    err = capsys.readouterr().err
    assert "pairs from 60 RGB and 18 modality messages" in err and "larger --slop" in err, err


def test_a_rerun_with_other_options_is_refused_before_writing(bags, tmp_path, capsys):
    rec = bags["sqlite3"]
    out = tmp_path / "ds"
    base = [str(rec.path), "-o", str(out), "--rgb-topic", RGB, "--modal-topic", THERMAL, "--quiet"]
    assert extract_main(base) == 0
    capsys.readouterr()
    listing = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(SystemExit) as stop:
        extract_main([*base, "--test-fraction", "0.5", "--every", "2"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "other options (every 1 -> 2; test_fraction 0.2 -> 0.5)" in err and "new folder" in err
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == listing  # nothing touched
    assert extract_main(base) == 0  # the same command resumes



def test_a_folder_holding_a_users_split_lists_is_refused(bags, tmp_path, capsys):
    out = tmp_path / "my_dataset"
    out.mkdir()
    (out / "train.txt").write_text("frame_0001\n")
    with pytest.raises(SystemExit) as stop:
        extract_main([str(bags["sqlite3"].path), "-o", str(out), "--rgb-topic", RGB, "--modal-topic", THERMAL,
                      "--quiet"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "no extraction wrote" in err
    assert [p.name for p in out.iterdir()] == ["train.txt"] and (out / "train.txt").read_text() == "frame_0001\n"


def test_streams_that_overlap_but_miss_the_slop_are_told_so(bags, tmp_path):
    with pytest.raises(ExtractError, match="the streams overlap in time, but no frames are within 1e-06 s") as exc:
        extract(ExtractOptions(bags["sqlite3"].path, tmp_path / "ds", RGB, THERMAL, slop=1e-6, progress=False))
    assert "do not overlap" not in str(exc.value)


# --- labelled frames: none lost, none mixed -------------------------------------------------------------------------

T0 = 1_700_000_000_000_000_000


def _value_of(path):
    img = _read(path)
    values = np.unique(img)
    assert values.size == 1, path  # every frame in these bags is one flat value that says which message it was
    return int(values[0])


def test_every_label_is_kept_with_its_nearest_thermal_frame_within_the_slop(tmp_path):
    """4 s MCAP: RGB 25 Hz, thermal 8.6 Hz with jitter, 20 labels at 5 Hz stamped like RGB frames, slop 0.06 s.
    The node's pairer gives only some labelled RGB frames a partner; every label has a thermal frame in the slop."""
    rng = np.random.default_rng(11)
    rgb = {T0 + k * 40_000_000: k for k in range(100)}
    thermal = {}
    for j in range(int(4 * 8.6)):
        thermal[T0 + int(j / 8.6 * 1e9 + rng.uniform(-0.01, 0.01) * 1e9)] = j
    labels = {st: k for st, k in rgb.items() if k % 5 == 0}
    assert len(labels) == 20
    events = [(st + 4_000_000, "/rgb", st) for st in rgb] + [(st + 31_000_000, "/thermal", st) for st in thermal]
    events += [(st + 150_000_000, "/label", st) for st in labels]  # labels arrive late, as annotations do
    path = tmp_path / "run"
    with BagWriter(path, "mcap") as bag:
        for log, topic, st in sorted(events):
            if topic == "/rgb":
                bag.write(topic, log, bag.image(st, "c", np.full((6, 8, 3), rgb[st], np.uint8), "rgb8"))
            elif topic == "/thermal":
                bag.write(topic, log, bag.image(st, "t", np.full((6, 8), 1000 + thermal[st], np.uint16), "mono16"))
            else:
                bag.write(topic, log, bag.image(st, "c", np.full((6, 8), labels[st] // 5, np.uint8), "mono8"))
    nearest = {st: min(thermal, key=lambda m: abs(m - st)) for st in labels}
    assert all(abs(m - st) < 0.06e9 for st, m in nearest.items())  # each label has a thermal frame in the slop
    node_labelled = [r for r, _ in _node_pairs(path, "/rgb", "/thermal", slop=0.06) if r in labels]
    assert len(node_labelled) < 20  # what pairing like the node keeps: a labelled frame is lost when unpaired

    out = tmp_path / "ds"
    res = extract(ExtractOptions(path, out, "/rgb", "/thermal", label_topic="/label", slop=0.06, progress=False,
                                 classes=[f"class {i}" for i in range(20)]))
    assert res.counts["labelled_pairs"] == res.counts["kept"] == 20 and res.counts["label_messages"] == 20
    assert res.counts["labels_without_rgb"] == res.counts["labels_without_modal"] == 0 and res.notes == []
    rows = _pairs_csv(out)
    assert [(a, b) for a, b, _, _ in rows] == sorted(nearest.items())
    for rgb_st, th_st, name, _ in rows:
        assert _value_of(out / "RGB" / f"{name}.png") == rgb[rgb_st]
        assert _value_of(out / "Modal" / f"{name}.png") == 1000 + thermal[th_st]
        assert _value_of(out / "Label" / f"{name}.png") == labels[rgb_st] // 5


def test_labels_that_cannot_be_kept_are_counted_with_the_reason(tmp_path, capsys):
    path = tmp_path / "run"
    with BagWriter(path, "sqlite3") as bag:
        for k in range(10):
            st = T0 + k * 100_000_000
            bag.write("/rgb", st + 1, bag.image(st, "c", np.full((4, 4, 3), k, np.uint8), "rgb8"))
            if k < 7:  # the thermal camera stops after 0.7 s
                bag.write("/thermal", st + 2, bag.image(st + 5_000_000, "t", np.full((4, 4), k, np.uint8), "mono8"))
            label_stamp = st if k != 2 else st + 1_000  # one label stamped unlike any RGB frame
            bag.write("/label", st + 3, bag.image(label_stamp, "c", np.zeros((4, 4), np.uint8), "mono8"))
    assert extract_main([str(path), "-o", str(tmp_path / "ds"), "--rgb-topic", "/rgb", "--modal-topic", "/thermal",
                         "--label-topic", "/label", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "6 labelled frames from 10 labels" in out
    assert ("4 of 10 labels not extracted: 1 have no RGB frame on /rgb with their stamp (labels must be stamped like "
            "the RGB image they annotate), 3 have no /thermal frame within --slop 0.055 s") in err
    assert "the labels use class ids [0]; name the classes with --classes" in err
    counts = DatasetSpec.from_yaml(tmp_path / "ds" / "dataset.yaml").extra["counts"]
    assert (counts["labelled_pairs"], counts["labels_without_rgb"], counts["labels_without_modal"]) == (6, 1, 3)


def test_rerun_into_a_folder_of_other_pairs_is_refused_not_mixed(tmp_path, capsys):
    """Extract the pairs, then rerun with the label topic into the same folder (resume): the labelled frames pair
    RGB k with its nearest thermal frame (+40 ms), the node's pairs had the one that arrived first (-45 ms).
    Keeping the existing Modal files would mix the -45 ms frame into frames whose pairs.csv says +40 ms: it is an
    error instead."""
    path = tmp_path / "run"
    with BagWriter(path, "sqlite3") as bag:
        for k in range(10):
            st = T0 + k * 100_000_000
            for dt, v in ((-45_000_000, 100 + k), (40_000_000, k)):
                bag.write("/thermal", st + dt, bag.image(st + dt, "t", np.full((4, 4), v, np.uint8), "mono8"))
            bag.write("/rgb", st + 5_000_000, bag.image(st, "c", np.full((4, 4, 3), k, np.uint8), "rgb8"))
            bag.write("/label", st + 6_000_000, bag.image(st, "c", np.zeros((4, 4), np.uint8), "mono8"))
    out = tmp_path / "ds"
    args = [str(path), "-o", str(out), "--rgb-topic", "/rgb", "--modal-topic", "/thermal", "--quiet",
            "--test-fraction", "0"]
    assert extract_main(args) == 0
    rows = _pairs_csv(out)
    assert len(rows) == 10 and all(r[1] - r[0] == -45_000_000 for r in rows)  # the node's pairs
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        extract_main([*args, "--label-topic", "/label"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    # refused before anything is written, naming the option that differs (the frame record backs this up below)
    assert len(err.splitlines()) == 1 and "holds an extraction made with other options" in err and "/label" in err
    assert "extract into a new folder" in err.lower()
    assert [r[:2] for r in _pairs_csv(out)] == [r[:2] for r in rows]  # nothing changed
    (out / ".frame_sources.csv").write_text("garbage\nx,y\n")  # a damaged record: the files are of unknown origin
    with pytest.raises(SystemExit):
        extract_main(args)
    assert "holds frames extracted with other pairs or topics" in capsys.readouterr().err
    assert extract_main([*args, "--label-topic", "/label", "-o", str(tmp_path / "new")]) == 0
    for r in _pairs_csv(tmp_path / "new"):
        assert r[1] - r[0] == 40_000_000
        assert _value_of(tmp_path / "new" / "Modal" / f"{r[2]}.png") == _value_of(tmp_path / "new" / "RGB" /
                                                                                  f"{r[2]}.png")


@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "pairs"])
def test_repeated_stamps_keep_one_frame_per_stamp_from_one_message_each(tmp_path, labelled):
    """A looped recording (or a driver bug): the same 10 stamps twice, with other pixels the second time. One frame
    per stamp, and its RGB, thermal and label all come from the first messages of that stamp, never mixed."""
    path = tmp_path / "looped"
    with BagWriter(path, "sqlite3") as bag:
        for loop in range(2):
            for k in range(10):
                st = T0 + k * 100_000_000
                log = T0 + (loop * 10 + k) * 100_000_000 + 10_000_000
                v = 100 * loop + k
                bag.write("/rgb", log, bag.image(st, "c", np.full((4, 6, 3), v, np.uint8), "rgb8"))
                bag.write("/thermal", log + 1, bag.image(st + 3_000_000, "t", np.full((4, 6), v, np.uint8), "mono8"))
                bag.write("/label", log + 2, bag.image(st, "c", np.full((4, 6), v, np.uint8), "mono8"))
    out = tmp_path / "ds"
    res = extract(ExtractOptions(path, out, "/rgb", "/thermal", label_topic="/label" if labelled else None,
                                 progress=False))
    names = (out / "train.txt").read_text().split()
    assert len(names) == len(set(names)) == 10
    assert res.counts["repeated_rgb_stamps"] == res.counts["repeated_modal_stamps"] == 10
    assert any("10 RGB messages on /rgb repeat the stamp of an earlier one" in n for n in res.notes)
    for name in names:
        k = (int(name) - T0) // 100_000_000
        assert _value_of(out / "RGB" / f"{name}.png") == k  # the first loop's message
        assert _value_of(out / "Modal" / f"{name}.png") == k
        if labelled:
            assert _value_of(out / "Label" / f"{name}.png") == k


def test_label_ids_beyond_the_classes_file_stop_extraction_with_one_line(bags, tmp_path, capsys):
    rec = bags["sqlite3"]  # the synthetic world's labels use ids 0..7
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nroad\nbuilding\n")
    with pytest.raises(SystemExit) as exc:
        extract_main([str(rec.path), "-o", str(tmp_path / "ds"), "--rgb-topic", RGB, "--modal-topic", THERMAL,
                      "--label-topic", LABEL, "--classes", str(classes), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sigma-extract: error: ")
    assert f"ns on {LABEL} holds label value" in err and "the dataset has 3 classes" in err
    assert "the --classes file must name every class id the labels use" in err
    assert not (tmp_path / "ds").exists()  # stopped before writing anything


def _png_bytes(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_compressed_label_topics_are_read_as_class_ids_and_jpeg_labels_refused(tmp_path, capsys):
    """Labels published as CompressedImage: an indexed PNG (an annotation tool's export) gives its indices, a 1-bit
    mask its 0/1 (decoders give colours, and 255 = ignore for the mask's 1); a JPEG label (lossy) is refused."""
    from PIL import Image

    ids = np.zeros((4, 6), np.uint8)
    ids[:, 2:4], ids[:, 4:] = 1, 2
    indexed = Image.fromarray(ids, mode="P")
    indexed.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    mask = (ids > 0)
    payloads = {"indexed": ("png", _png_bytes(indexed), ids),
                "mask": ("mono8; png compressed mono8", _png_bytes(Image.fromarray(mask)), mask.astype(np.uint8)),
                "jpeg": ("mono8; jpeg compressed mono8", cv2.imencode(".jpg", ids)[1].tobytes(), None)}
    for kind, (fmt, data, want) in payloads.items():
        path = tmp_path / kind
        with BagWriter(path, "mcap") as bag:
            for k in range(3):
                st = T0 + k * 100_000_000
                bag.write("/rgb", st + 1, bag.image(st, "c", np.full((4, 6, 3), k, np.uint8), "rgb8"))
                bag.write("/thermal", st + 2, bag.image(st, "t", np.full((4, 6), k, np.uint8), "mono8"))
                bag.write("/label", st + 3, bag.compressed_image(st, "c", fmt, data))
        args = [str(path), "-o", str(tmp_path / f"ds_{kind}"), "--rgb-topic", "/rgb", "--modal-topic", "/thermal",
                "--label-topic", "/label", "--quiet"]
        if want is None:
            with pytest.raises(SystemExit) as exc:
                extract_main(args)
            assert exc.value.code == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "a label must be lossless" in err and "ns on /label" in err
            continue
        assert extract_main(args) == 0
        capsys.readouterr()
        labels = sorted((tmp_path / f"ds_{kind}" / "Label").glob("*.png"))
        assert len(labels) == 3
        for f in labels:
            assert np.array_equal(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), want), kind


@pytest.mark.parametrize("empty_topic", ["/rgb", "/label"])
def test_an_empty_compressed_message_ends_with_one_line(tmp_path, capsys, empty_topic):
    """A glitching driver publishes a CompressedImage with no data: OpenCV asserts (cv2.error, a traceback)
    instead of returning None; it must end with one line naming the message."""
    path = tmp_path / "run"
    ok_jpeg = cv2.imencode(".jpg", np.zeros((4, 6, 3), np.uint8))[1].tobytes()
    ok_png = cv2.imencode(".png", np.zeros((4, 6), np.uint8))[1].tobytes()
    with BagWriter(path, "mcap") as bag:
        for k in range(3):
            st = T0 + k * 100_000_000
            empty = k == 2
            bag.write("/rgb", st + 1, bag.compressed_image(st, "c", "jpeg",
                                                           b"" if empty and empty_topic == "/rgb" else ok_jpeg))
            bag.write("/thermal", st + 2, bag.image(st, "t", np.full((4, 6), k, np.uint8), "mono8"))
            bag.write("/label", st + 3, bag.compressed_image(st, "c", "png",
                                                             b"" if empty and empty_topic == "/label" else ok_png))
    with pytest.raises(SystemExit) as exc:
        extract_main([str(path), "-o", str(tmp_path / "ds"), "--rgb-topic", "/rgb", "--modal-topic", "/thermal",
                      "--label-topic", "/label", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"stamped {T0 + 200_000_000} ns on {empty_topic}" in err and "0 bytes" in err


# --- corrupt and unusual recordings ----------------------------------------------------------------------------------

def _message_record_offsets(data: bytes) -> list[int]:
    """Offsets of MCAP Message records (opcode 0x05, uint64 length) whose length lands on the next record."""
    found, i = [], 0
    while (i := data.find(b"\x05", i + 1)) > 0 and i + 9 <= len(data):
        length = int.from_bytes(data[i + 1:i + 9], "little")
        if 22 < length < len(data) - i - 9 and data[i + 9 + length] in range(1, 17):
            found.append(i)
    return found


def test_corrupt_mcap_and_ros1_bags_end_with_one_line(bags, tmp_path, capsys):
    mcap = tmp_path / "mcap"
    shutil.copytree(bags["mcap"].path, mcap)
    mcap_file = next(mcap.glob("*.mcap"))
    data = bytearray(mcap_file.read_bytes())
    records = _message_record_offsets(bytes(data))
    assert len(records) > 20
    data[records[10] + 1:records[10] + 9] = (2**63 + 5).to_bytes(8, "little")  # an absurd record length
    mcap_file.write_bytes(bytes(data))
    ros1 = tmp_path / "cut.bag"
    raw = bags["ros1"].path.read_bytes()
    ros1.write_bytes(raw[:len(raw) // 2])  # a recording cut short
    for bag, rgb, modal in ((mcap, bags["mcap"].rgb_topic, bags["mcap"].modal_topic), (ros1, RGB, DEPTH)):
        with pytest.raises(SystemExit) as exc:
            extract_main([str(bag), "-o", str(tmp_path / f"out_{bag.name}"), "--rgb-topic", rgb, "--modal-topic",
                          modal, "--quiet"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert err.startswith(f"sigma-extract: error: cannot read bag {bag}") and "corrupt or truncated" in err


def test_ros1_bag_with_a_damaged_message_record_ends_with_one_line(bags, tmp_path, capsys):
    raw = bytearray(bags["ros1"].path.read_bytes())
    op = raw.find(b"op=\x05")  # the first chunk record (op 5): its header length precedes its first field
    assert op > 8 and raw[op - 4:op] == (4).to_bytes(4, "little")
    raw[op - 8:op - 4] = (0x7FFFFFFF).to_bytes(4, "little")
    bad = tmp_path / "damaged.bag"
    bad.write_bytes(bytes(raw))
    with pytest.raises(SystemExit) as exc:
        extract_main([str(bad), "-o", str(tmp_path / "ds"), "--rgb-topic", RGB, "--modal-topic", DEPTH, "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"sigma-extract: error: cannot read bag {bad}")


def test_compressed_depth_rvl_topic_is_extracted_exactly(tmp_path):
    from rvl_reference import compressed_depth_rvl

    rng = np.random.default_rng(2)
    path = tmp_path / "rvl"
    depth = {}
    with BagWriter(path, "mcap") as bag:
        for k in range(4):
            st = T0 + k * 100_000_000
            d = rng.integers(400, 6000, (12, 16)).astype(np.uint16)
            d[rng.random(d.shape) < 0.1] = 0
            depth[st] = d
            bag.write("/rgb", st + 1, bag.image(st, "c", np.full((12, 16, 3), k, np.uint8), "rgb8"))
            bag.write("/depth/compressedDepth", st + 2,
                      bag.compressed_image(st, "d", "16UC1; compressedDepth rvl", compressed_depth_rvl(d)))
    out = tmp_path / "ds"
    res = extract(ExtractOptions(path, out, "/rgb", "/depth/compressedDepth", progress=False))
    assert res.counts["pairs"] == 4
    for st, d in depth.items():
        np.testing.assert_array_equal(_read(out / "Modal" / f"{st}.png"), d)
    assert RGBXDataset(out, "train").spec.modality == "depth"


# --- the real ROS 1 bags in shared/realdata ---------------------------------------------------------------------------

REAL_BAGS = {
    "aruco_marker.bag": ("/raspicam_node/image/compressed", (720, 1280, 3)),
    "aruco_images.bag": ("/raspicam_node/image/compressed", (960, 1280, 3)),
    "fiducial_board_611.bag": ("raspicam_node/camera/image/compressed", (720, 1280, 3)),  # no leading slash
}


@pytest.mark.parametrize("name", list(REAL_BAGS))
def test_real_ros1_bags_list_their_topics_as_the_bag_does_and_decode(name, tmp_path, capsys):
    bag = realdata_file(f"rosbags/ubiquity_fiducials/{name}")
    topic, shape = REAL_BAGS[name]
    with open_bag(bag) as reader:
        assert resolve_topic(reader, topic) == topic
        assert resolve_topic(reader, "/" + topic.lstrip("/")) == topic  # as a ROS 2 user types it
        conns = [c for c in reader.connections if c.topic == topic]
        (conn, _, msg), = list(read_messages(reader, conns, bag))
        arr, enc = message_to_array(msg)
    assert conn.msgtype == "sensor_msgs/msg/CompressedImage" and msg.format == "jpg"
    assert arr.shape == shape and enc == "bgr8"
    np.testing.assert_array_equal(arr, cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR))
    # the bag has one camera: asking for a thermal topic lists the topics exactly as the bag names them
    with pytest.raises(SystemExit) as exc:
        extract_main([str(bag), "-o", str(tmp_path / "ds"), "--rgb-topic", "/" + topic.lstrip("/"),
                      "--modal-topic", "/thermal/image_raw", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sigma-extract: error: modality topic /thermal/image_raw is not in")
    assert f"{topic} (sensor_msgs/msg/CompressedImage, 1 msgs)" in err


def test_sigma_extract_on_the_real_jpeg_stream_with_a_slashless_topic(tmp_path, capsys):
    """The real bags hold one camera; a thermal stream is added beside the real JPEG messages (same topic name,
    without its leading slash) in a new ROS 1 bag, and sigma-extract runs end to end on it."""
    real = realdata_file("rosbags/ubiquity_fiducials/fiducial_board_611.bag")
    topic = REAL_BAGS["fiducial_board_611.bag"][0]
    with open_bag(real) as reader:
        (_, _, msg), = list(read_messages(reader, [c for c in reader.connections if c.topic == topic], real))
    jpeg, st0 = bytes(msg.data), stamp_ns(msg)
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    grey = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (1280, 720))
    path = tmp_path / "real_plus_thermal.bag"
    with BagWriter(path, "ros1") as bag:
        for k in range(3):
            st = st0 + k * 100_000_000
            bag.write(topic, st + 1, bag.compressed_image(st, msg.header.frame_id, msg.format, jpeg))
            bag.write("/thermal/image_raw", st + 2, bag.image(st + 4_000_000, "t", grey, "mono8"))
    out = tmp_path / "ds"
    assert extract_main([str(path), "-o", str(out), "--rgb-topic", "/" + topic, "--modal-topic",
                         "/thermal/image_raw", "--quiet"]) == 0
    names = (out / "train.txt").read_text().split()
    assert names == [str(st0 + k * 100_000_000) for k in range(3)]
    for name in names:
        np.testing.assert_array_equal(_read(out / "RGB" / f"{name}.png"), bgr)  # the decoded JPEG, exactly
        np.testing.assert_array_equal(_read(out / "Modal" / f"{name}.png"), grey)
    assert DatasetSpec.from_yaml(out / "dataset.yaml").extra["source"]["rgb_topic"] == topic


def damaged_mcap_read_short(source, root):
    """A copy of the MCAP bag folder ``source`` with 64 KiB of random bytes at one third of its file, the first seed
    of which the storage library reads to an early end without an exception (a silent partial read)."""
    data = next(source.glob("*.mcap")).read_bytes()
    for seed in range(16):
        bag = root / f"damaged_{seed}"
        shutil.copytree(source, bag)
        raw = bytearray(data)
        at, n = len(raw) // 3, min(1 << 16, len(raw) // 6)
        raw[at:at + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
        next(bag.glob("*.mcap")).write_bytes(bytes(raw))
        try:
            with open_bag(bag) as reader:
                read = sum(1 for _ in reader.messages(connections=reader.connections))
                declared = sum(c.msgcount for c in reader.connections)
        except Exception:  # this seed's damage is an error already
            continue
        if read < declared:
            return bag
    raise AssertionError("no seed gave a silent partial read")


def test_a_damaged_bag_read_in_part_is_an_error_or_with_allow_partial_a_warning(bags, tmp_path, capsys):
    """Issue 21, fault 3: the messages read per topic are compared with the counts the bag declares."""
    import subprocess
    import sys

    bag = damaged_mcap_read_short(bags["mcap"].path, tmp_path)
    rgb, modal = bags["mcap"].rgb_topic, bags["mcap"].modal_topic
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.extract", str(bag), "-o", str(tmp_path / "ds"),
                          "--rgb-topic", rgb, "--modal-topic", modal, "--quiet"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    declared = {rgb: 45, modal: 13}  # 1.5 s at 30 and 9 Hz
    found = re.search(rf"holds fewer messages than its index declares \({re.escape(rgb)}: (\d+) of (\d+); "
                      rf"{re.escape(modal)}: (\d+) of (\d+) read\)", run.stderr)
    assert found and (int(found[2]), int(found[4])) == (declared[rgb], declared[modal]), run.stderr
    assert "--allow-partial" in run.stderr and not (tmp_path / "ds").exists()
    assert extract_main([str(bag), "-o", str(tmp_path / "ds"), "--rgb-topic", rgb, "--modal-topic", modal, "--quiet",
                         "--allow-partial", "--min-interval", "100"]) == 0  # the first pair, before the damage
    err = capsys.readouterr().err
    assert f"sigma-extract: warning: bag {bag} holds fewer messages than its index declares ({rgb}: {found[1]} of 45" \
        in err


def test_calibration_registers_the_modality_as_the_node_and_the_dataset_loads(tmp_path, capsys):
    """A thermal camera of another size and aspect beside the RGB one: with --calibration every stored modality
    frame is what sigma_core.data.registration gives for its message (the node's step), at the RGB size."""
    from sigma_core.data.calibration import Calibration, CameraModel, load_calibration, save_calibration
    from sigma_core.data.modality import ModalityScaling
    from sigma_core.data.registration import Registration

    path = tmp_path / "rig_bag"
    rng = np.random.default_rng(0)
    with BagWriter(path, "sqlite3") as bag:
        for k in range(4):
            st = 1_000_000_000 + k * 100_000_000
            bag.write("/rgb", st + 1_000, bag.image(st, "c", rng.integers(0, 256, (24, 32, 3)).astype(np.uint8),
                                                    "rgb8"))
            bag.write("/thermal", st + 2_000, bag.image(st, "c", rng.integers(1, 65535, (20, 20)).astype(np.uint16),
                                                        "mono16"))
    K = np.array([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
    cal = Calibration("rig", "rig.yaml", CameraModel(32, 24, K, "radtan", (-0.1, 0.01, 0.0, 0.0)),
                      CameraModel(20, 20, np.array([[22.0, 0, 9.5], [0, 22.0, 9.5], [0, 0, 1]])),
                      np.eye(3), np.array([0.2, 0.0, 0.0]))
    save_calibration(cal, tmp_path / "rig.yaml")
    out = tmp_path / "ds"
    assert extract_main([str(path), "--rgb-topic", "/rgb", "--modal-topic", "/thermal", "-o", str(out),
                         "--calibration", str(tmp_path / "rig.yaml"), "--registration-distance", "2",
                         "--test-fraction", "0", "--quiet"]) in (0, None)
    registration = Registration("rig", load_calibration(tmp_path / "rig.yaml"), ModalityScaling("thermal"), 2.0)
    thermal = _messages(path, "/thermal")
    rows = _pairs_csv(out)
    assert len(rows) == 4
    for _, th_st, name, _ in rows:
        stored = _read(out / "Modal" / f"{name}.png")
        expected = registration(thermal[th_st][0], (24, 32))
        assert stored.shape == (24, 32) and stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, expected.image)
    assert 0.5 < expected.coverage < 1.0  # 20 cm at 2 m: the thermal view ends before the RGB one
    assert "cover" in capsys.readouterr().err
    ds = RGBXDataset(out, "train")
    assert ds[0]["modal"].shape[1:] == (24, 32)
    # a calibration for other image sizes is one line naming the file, before anything is written
    save_calibration(Calibration("rig", "x", cal.rgb, CameraModel(40, 40, cal.modal.K), cal.rotation,
                                 cal.translation), tmp_path / "other.yaml")
    with pytest.raises(SystemExit) as exit_info:
        extract_main([str(path), "--rgb-topic", "/rgb", "--modal-topic", "/thermal", "-o", str(tmp_path / "ds2"),
                      "--calibration", str(tmp_path / "other.yaml"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.yaml" in err[0] and "40x40" in err[0] and "20x20" in err[0]
    assert not (tmp_path / "ds2" / "Modal").exists()


def test_the_default_split_keeps_every_labelled_frame_and_says_where_each_went(tmp_path):
    """Issue 21, fault 7: with the defaults a 2 s recording gave 0 train frames and dropped 42 of 54 labelled frames
    (1 s --split-gap), and labels were lost to a 50 ms slop below half the 9 Hz thermal interval. Now every label
    that pairs lands in train or test; frames a split option sets aside are still written and listed."""
    import subprocess
    import sys

    rec = write_bag(tmp_path / "two_seconds", "sqlite3", seconds=2.0, seed=8, size=(24, 32))  # labels at 30 Hz
    args = [sys.executable, "-m", "sigma_core.cli.extract", str(rec.path), "--rgb-topic", RGB, "--modal-topic",
            THERMAL, "--label-topic", LABEL, "--quiet"]
    run = subprocess.run([*args, "-o", str(tmp_path / "ds")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    counts = DatasetSpec.from_yaml(tmp_path / "ds" / "dataset.yaml").extra["counts"]
    assert counts["label_messages"] == 60 and counts["labelled_pairs"] == counts["train"] + counts["test"]
    assert counts["labels_without_modal"] <= 1  # only a label before the thermal camera's first frame
    assert counts["train"] > counts["test"] > 0
    assert f"{counts['train']} train, {counts['test']} test, 0 near test (gap.txt)" in run.stdout
    assert "--slop 0.061 s: 0.55 x the median interval of /thermal/image_raw (0.111 s)" in run.stderr, run.stderr
    # an explicit --split-gap sets near-test frames aside: still written, listed in gap.txt and pairs.csv
    run = subprocess.run([*args, "-o", str(tmp_path / "gap"), "--split-gap", "0.3"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    gap = (tmp_path / "gap" / "gap.txt").read_text().split()
    train, test = ((tmp_path / "gap" / f"{s}.txt").read_text().split() for s in ("train", "test"))
    assert gap and len(gap) + len(train) + len(test) == counts["labelled_pairs"]
    assert not set(gap) & (set(train) | set(test))
    assert all((tmp_path / "gap" / d / f"{n}.png").is_file() for n in gap for d in ("RGB", "Modal", "Label"))
    assert sum(row[4] == "gap" for row in csv.reader(open(tmp_path / "gap" / "pairs.csv"))) == len(gap)
    assert f"{len(train)} train, {len(test)} test, {len(gap)} near test (gap.txt)" in run.stdout


def test_duplicate_class_names_are_refused_naming_them(bags, tmp_path):
    """Issue 21, fault 9: a classes list naming one class twice was accepted (two ids, one name in every report)."""
    import subprocess
    import sys

    classes = tmp_path / "classes.txt"
    classes.write_text("road\ncar\nperson\ncar\n")
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.extract", str(bags["sqlite3"].path), "-o",
                          str(tmp_path / "ds"), "--rgb-topic", RGB, "--modal-topic", THERMAL, "--label-topic", LABEL,
                          "--classes", str(classes), "--quiet"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and not (tmp_path / "ds").exists(), run.stderr
    assert "--classes: class names must differ; repeated: 'car' (ids 1 and 3)" in run.stderr
    yaml_file = tmp_path / "dataset.yaml"
    yaml_file.write_text("classes: [road, car, road]\n")
    with pytest.raises(ValueError, match=r"classes: class names must differ; repeated: 'road' \(ids 0 and 2\)"):
        DatasetSpec.from_yaml(yaml_file)
