"""Bag -> extract -> dataset, on bags recorded from the synthetic world in every storage."""
import csv
import shutil

import cv2
import numpy as np
import pytest

from sigma_core.cli.extract import main as extract_main
from sigma_core.data.bags import BagWriter, message_to_array, open_bag, stamp_ns
from sigma_core.data.dataset import RGBXDataset
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

    out = tmp_path / "ds"
    res = extract(ExtractOptions(rec.path, out, RGB, THERMAL, label_topic=LABEL, progress=False))
    rows = _pairs_csv(out)
    assert [(a, b) for a, b, _, _ in rows] == _node_pairs(rec.path, RGB, THERMAL)
    assert len(rows) == res.counts["pairs"] == res.counts["modal_messages"] == 18  # 9 Hz x 2 s, all paired
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
    extract(ExtractOptions(rec.path, out, rec.rgb_topic, rec.modal_topic, label_topic=LABEL, progress=False))
    rows = _pairs_csv(out)
    assert [(a, b) for a, b, _, _ in rows] == _node_pairs(rec.path, rec.rgb_topic, rec.modal_topic)
    rgb_msgs, th_msgs = _messages(rec.path, rec.rgb_topic), _messages(rec.path, rec.modal_topic)
    for rgb_st, th_st, name, _ in rows[:5]:
        arr, enc = rgb_msgs[rgb_st]  # the decoded JPEG: extraction stores exactly these pixels
        np.testing.assert_array_equal(cv2.cvtColor(_read(out / "RGB" / f"{name}.png"), cv2.COLOR_BGR2RGB),
                                      to_rgb8(arr, enc))
        np.testing.assert_array_equal(_read(out / "Modal" / f"{name}.png"), th_msgs[th_st][0])
    # a .mcap file path inside the bag folder works too
    mcap_file = next(rec.path.glob("*.mcap"))
    res = extract(ExtractOptions(mcap_file, tmp_path / "ds2", rec.rgb_topic, rec.modal_topic, progress=False))
    assert res.counts["pairs"] == len(rows)


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
    train, test, dropped = split_by_time(pairs, 0.2, blocks=10, gap_s=0.25)
    t = sorted(p.rgb_stamp for p in test)
    assert len(test) == 20 and len(t) == 20
    # two contiguous blocks of 1 s each
    gaps = np.diff(t)
    assert (gaps > 100_000_000).sum() == 1
    assert dropped == 8 and len(train) == 72  # 2 frames each side of each test block are near-duplicates


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
    assert "the split dropped 14 of 18 kept frames" in err and "lower --split-gap" in err, err
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


def test_streams_that_overlap_but_miss_the_slop_are_told_so(bags, tmp_path):
    with pytest.raises(ExtractError, match="the streams overlap in time, but no frames are within 1e-06 s") as exc:
        extract(ExtractOptions(bags["sqlite3"].path, tmp_path / "ds", RGB, THERMAL, slop=1e-6, progress=False))
    assert "do not overlap" not in str(exc.value)
