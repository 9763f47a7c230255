"""RGBXDataset over each published layout (fake folders made here) and over dataset.yaml folders."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from reference_data import realdata_file

from sigma_core.data.dataset import PRESETS, DatasetSpec, RGBXDataset, resolve_spec
from sigma_core.data.errors import DataError
from sigma_core.data.modality import depth_to_metres
from sigma_core.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from sigma_core.data.synthetic import write_dataset
from sigma_core.data.transforms import TrainAugmentation

H, W = 12, 16


def _fake_folder(root: Path, spec: DatasetSpec, names=("a1", "b2"), list_name=None, max_label=None) -> dict:
    """Write a tiny dataset in the preset's layout; returns the stored arrays per name."""
    rng = np.random.default_rng(0)
    for d in (spec.rgb_dir, spec.modal_dir, spec.label_dir):
        (root / d).mkdir(parents=True, exist_ok=True)
    stored = {}
    n_cls = spec.num_classes + spec.label_shift
    for n in names:
        yy, xx = np.mgrid[0:H, 0:W]  # smooth, so JPEG (NYU/SUN store RGB as .jpg) stays close
        rgb = np.stack([xx * 15 + rng.integers(0, 20), yy * 20, 255 - xx * 10], -1).astype(np.uint8)
        modal = rng.integers(0, 256, (H, W)).astype(np.uint8)
        label = rng.integers(0, max_label or n_cls, (H, W)).astype(np.uint8)
        label[0, 0] = 0
        quality = [cv2.IMWRITE_JPEG_QUALITY, 100]
        cv2.imwrite(str(root / spec.rgb_dir / f"{n}{spec.rgb_ext}"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), quality)
        cv2.imwrite(str(root / spec.modal_dir / f"{n}{spec.modal_ext}"), modal)
        cv2.imwrite(str(root / spec.label_dir / f"{n}{spec.label_ext}"), label)
        stored[n] = (rgb, modal, label)
    lst = list_name or spec.splits["train"][0]
    (root / lst).write_text("".join(f"{n}\n" for n in names))
    return stored


@pytest.mark.parametrize("preset,n_classes,shift", [("mfnet", 9, 0), ("pst900", 5, 0), ("nyudepthv2", 40, 1),
                                                     ("sunrgbd", 37, 1)])
def test_each_preset_reads_its_layout_with_the_right_label_shift(tmp_path, preset, n_classes, shift):
    spec = PRESETS[preset]
    stored = _fake_folder(tmp_path, spec)
    ds = RGBXDataset(tmp_path, "train", preset=preset)
    assert len(ds) == 2 and ds.num_classes == n_classes and len(ds.classes) == n_classes
    for i, name in enumerate(ds.names):
        rgb, modal, label = stored[name]
        s = ds[i]
        assert s["name"] == name
        assert s["rgb"].shape == s["modal"].shape == (3, H, W) and s["rgb"].dtype == torch.float32
        assert s["label"].shape == (H, W) and s["label"].dtype == torch.int64
        lab = s["label"].numpy()
        if shift:  # stored 1-based: 0 (unlabelled) -> 255, k -> k - 1
            assert lab[0, 0] == 255
            np.testing.assert_array_equal(lab[label > 0], label[label > 0].astype(np.int64) - 1)
        else:  # labels as stored, 0 is a real class
            np.testing.assert_array_equal(lab, label)
        assert lab[lab != 255].max() < n_classes
        # modality: single channel replicated to 3, /255 then ImageNet-normalised
        mean, std = IMAGENET_MEAN[:, None, None], IMAGENET_STD[:, None, None]
        expected = (modal[None].astype(np.float32) / 255.0 - mean) / std
        np.testing.assert_allclose(s["modal"].numpy(), expected, atol=1e-5)
        if spec.rgb_ext == ".png":  # lossless: exact RGB order and normalisation
            exp_rgb = (rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
            np.testing.assert_allclose(s["rgb"].numpy(), exp_rgb.transpose(2, 0, 1), atol=1e-5)
        else:  # JPEG at quality 100: close, and in RGB (not BGR) order
            back = s["rgb"].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
            assert np.abs(back * 255.0 - rgb).mean() < 4.0


def test_preset_eval_settings_follow_the_published_recipe():
    for name in ("nyudepthv2", "sunrgbd"):
        assert PRESETS[name].eval_scales == (0.75, 1.0, 1.25) and PRESETS[name].eval_flip
    for name in ("mfnet", "pst900"):
        assert PRESETS[name].eval_scales == (1.0,) and not PRESETS[name].eval_flip
    assert PRESETS["pst900"].image_size == (720, 1280) and PRESETS["mfnet"].image_size == (480, 640)
    assert resolve_spec(".", "NYUDv2") is PRESETS["nyudepthv2"]
    with pytest.raises(ValueError, match="unknown dataset preset 'kitti'"):
        resolve_spec(".", "kitti")


def test_split_list_lines_with_folders_and_extensions(tmp_path):
    spec = PRESETS["mfnet"]
    _fake_folder(tmp_path, spec, names=("00001D", "00002N"), list_name="test.txt")
    (tmp_path / "test.txt").write_text("RGB/00001D.png\n\n# comment\n00002N\n")
    assert RGBXDataset(tmp_path, "test", preset="mfnet").names == ["00001D", "00002N"]
    # a list saved by a Windows editor: UTF-8 byte-order mark and CRLF line ends
    (tmp_path / "test.txt").write_bytes("\ufeff00001D\r\n00002N\r\n".encode("utf-8"))
    ds = RGBXDataset(tmp_path, "test", preset="mfnet")
    assert ds.names == ["00001D", "00002N"]
    ds.load(0)
    (tmp_path / "test.txt").write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(DataError, match=r"split list .*test\.txt is not UTF-8 text"):
        RGBXDataset(tmp_path, "test", preset="mfnet")


def test_missing_and_unreadable_files_fail_with_the_file_name(tmp_path):
    spec = PRESETS["mfnet"]
    _fake_folder(tmp_path, spec)
    ds = RGBXDataset(tmp_path, "train", preset="mfnet")
    (tmp_path / "Modal" / "a1.png").unlink()
    with pytest.raises(DataError, match=r"missing file .*Modal/a1\.png"):
        ds[0]
    (tmp_path / "Label" / "b2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=r"cannot decode label image .*Label/b2\.png"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="test.txt"):
        RGBXDataset(tmp_path, "test", preset="mfnet")
    with pytest.raises(FileNotFoundError, match="dataset.yaml"):
        RGBXDataset(tmp_path, "train")  # no preset: needs a dataset.yaml


def test_a_truncated_jpeg_is_an_error_not_an_image_with_grey_rows(tmp_path):
    """NYU/SUN RGB are JPEGs: one cut short (an interrupted download) decodes with its missing rows grey and only
    a libjpeg warning; it must stop with the file's name. Bytes a camera appends after the image are fine."""
    _fake_folder(tmp_path, PRESETS["nyudepthv2"], list_name="train.txt")
    ds = RGBXDataset(tmp_path, "train", preset="nyudepthv2")
    whole = ds.load(1)[0]
    jpeg = tmp_path / "RGB" / "b2.jpg"
    data = jpeg.read_bytes()
    jpeg.write_bytes(data + b"vendor trailer")
    np.testing.assert_array_equal(ds.load(1)[0], whole)
    scan = data.rfind(b"\xff\xda")
    jpeg.write_bytes(data[: scan + (len(data) - scan) // 2])  # cut in the middle of the image data
    assert cv2.imread(str(jpeg)) is not None  # what OpenCV makes of it: an image
    with pytest.raises(DataError, match=r"cannot decode image .*RGB/b2\.jpg \(empty, corrupt, truncated"):
        ds.load(1)


def test_custom_dataset_yaml_from_the_synthetic_world(tmp_path):
    root = write_dataset(tmp_path / "synth", n=12, seed=2, night_fraction=0.5, size=(48, 64))
    spec = DatasetSpec.from_yaml(root / "dataset.yaml")
    assert spec.classes[4] == "person" and spec.scaling.range == (26315.0, 32315.0)
    assert DatasetSpec.from_dict(spec.to_dict()) == spec
    train, test = RGBXDataset(root, "train"), RGBXDataset(root, "test")
    assert len(train) + len(test) == 12 and len(test) == 3
    night, day = RGBXDataset(root, "test_night"), RGBXDataset(root, "test_day")
    assert sorted(night.names + day.names) == sorted(test.names)
    s = train[0]
    assert s["rgb"].shape == (3, 48, 64) and s["label"].max() < 8
    # modality scaled with the yaml's thermal range, not the uint16 full range
    assert s["modal"].std() > 0.2


def test_augmented_samples_are_reproducible_per_seed_and_epoch(tmp_path):
    root = write_dataset(tmp_path / "synth", n=4, seed=0, size=(48, 64))
    aug = TrainAugmentation(crop_size=(40, 40))
    a = RGBXDataset(root, "train", transform=aug, seed=1)
    b = RGBXDataset(root, "train", transform=aug, seed=1)
    assert all(torch.equal(a[0][k], b[0][k]) for k in ("rgb", "modal", "label"))
    outs = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        outs.add(a[0]["label"].numpy().tobytes())
    assert len(outs) > 1  # epochs see different augmentations


# --- bad data is stopped where it enters, with one line naming the file ---------------------------------------------

TINY_TRAIN = ["model.variant=null", "model.depths=[1,1,1,1]", "model.dims=32", "model.decoder_depths=[1,1,1]",
              "data.crop_size=[32,48]", "data.scales=[1.0]", "data.batch_size=2", "train.device=cpu",
              "train.threads=1", "train.progress=false", "train.tensorboard=false", "schedule.epochs=1",
              "schedule.warmup_epochs=0"]


def _set_classes(root: Path, classes) -> None:
    spec = DatasetSpec.from_yaml(root / "dataset.yaml")
    palette = spec.palette[:len(classes)] if spec.palette is not None else None
    DatasetSpec.from_dict({**spec.to_dict(), "classes": list(classes),
                           "palette": [list(c) for c in palette] if palette else None}).write_yaml(root)


def _one_error_line(err: str, prog: str) -> str:
    assert "Traceback" not in err and "Original" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error: ")
    return line


def test_labels_beyond_the_class_list_are_an_error_naming_file_value_and_count(tmp_path):
    root = write_dataset(tmp_path / "synth", n=4, seed=1, size=(24, 32))
    ds = RGBXDataset(root, "train")
    assert ds.num_classes == 8 and int(ds[0]["label"].max()) <= 7
    _set_classes(root, ["background", "road", "building"])  # the files hold ids 0..7
    ds = RGBXDataset(root, "train")
    stored = cv2.imread(str(ds.paths(0)[2]), cv2.IMREAD_UNCHANGED)
    worst = int(stored.max())
    assert worst >= 3
    with pytest.raises(DataError, match=rf"{ds.names[0]}\.png holds label value 3, .*has 3 classes: stored values "
                                        r"must be 0\.\.2 or 255 \(ignore\); list every class in .*dataset\.yaml"):
        ds[0]


def test_a_stray_label_value_stops_sigma_train_with_one_line_not_an_index_error(tmp_path, capsys):
    """One 200 in an 8-class dataset: before, training crashed mid-epoch with a bare IndexError from the loss;
    now the worker's error reaches the user as one line naming the file (DataLoader workers included)."""
    from sigma_core.cli.train import main

    root = write_dataset(tmp_path / "synth", n=8, seed=2, size=(32, 48), test_fraction=0.25)
    name = (root / "train.txt").read_text().split()[3]
    label_path = root / "Label" / f"{name}.png"
    label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    label[5, 7] = 200
    cv2.imwrite(str(label_path), label)
    for workers in (0, 2):
        with pytest.raises(SystemExit) as exc:
            main([*TINY_TRAIN, f"data.root={root}", f"train.out_dir={tmp_path / f'run{workers}'}",
                  f"data.num_workers={workers}"])
        assert exc.value.code == 2
        line = _one_error_line(capsys.readouterr().err, "sigma-train")
        assert f"Label/{name}.png holds label value 200" in line and "8 classes" in line
        assert "IndexError" not in line and "DataLoader worker" not in line


def test_sigma_evaluate_refuses_labels_it_would_silently_not_score(tmp_path, capsys):
    from sigma_core.checkpoints import save_checkpoint
    from sigma_core.cli.evaluate import main
    from sigma_core.models.sigma import SigmaConfig, build_sigma

    root = write_dataset(tmp_path / "synth", n=4, seed=3, size=(32, 48), test_fraction=0.5)
    _set_classes(root, ["background", "road", "building"])
    cfg = SigmaConfig(variant=None, depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=3)
    ckpt = save_checkpoint(tmp_path / "three.pt", build_sigma(cfg), cfg, class_names=["a", "b", "c"],
                           modality="thermal")
    for workers in (0, 2):
        with pytest.raises(SystemExit) as exc:
            main([str(ckpt), "--data-root", str(root), "--out", str(tmp_path / "r"), "--device", "cpu",
                  f"data.num_workers={workers}"])
        assert exc.value.code == 2
        line = _one_error_line(capsys.readouterr().err, "sigma-evaluate")
        assert "holds label value" in line and "3 classes" in line and "dataset.yaml" in line
    assert not (tmp_path / "r" / "report.json").exists()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR broken"], ids=["empty", "corrupt"])
def test_an_undecodable_png_stops_training_with_one_line(tmp_path, capsys, content):
    from sigma_core.cli.train import main

    root = write_dataset(tmp_path / "synth", n=6, seed=4, size=(32, 48), test_fraction=0.34)
    name = (root / "train.txt").read_text().split()[1]
    (root / "Modal" / f"{name}.png").write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main([*TINY_TRAIN, f"data.root={root}", f"train.out_dir={tmp_path / 'run'}", "data.num_workers=2"])
    assert exc.value.code == 2
    line = _one_error_line(capsys.readouterr().err, "sigma-train")
    assert f"cannot decode image {root / 'Modal' / name}.png" in line


def test_data_error_rebuilt_from_a_dataloader_worker_keeps_the_original_message():
    raised = DataError("missing file /data/RGB/x.png")
    assert str(raised) == "missing file /data/RGB/x.png"
    loader = torch.utils.data.DataLoader(_Failing(), num_workers=1)
    with pytest.raises(DataError) as exc:
        next(iter(loader))
    assert str(exc.value) == "cannot decode image /data/Modal/7.png (corrupt)"


class _Failing(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise DataError("cannot decode image /data/Modal/7.png (corrupt)")


# --- real dataset files, laid out as their releases are downloaded (shared/realdata) --------------------------------

def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def test_original_mfnet_release_loads_with_the_mfnet_preset(tmp_path):
    """MFNet as released: images/ with 4-channel PNGs (R, G, B, thermal), labels/, train/val/test lists."""
    frame = realdata_file("rgbt/mfnet/01234N.png")
    root = tmp_path / "ir_seg_dataset"
    names = ["00001D", "00002D", "01234N", "01235N"]
    label = np.zeros((480, 640), np.uint8)
    label[100:200, 300:400] = 2  # person
    label[300:, :] = 4  # curve
    for n in names:
        _link(frame, root / "images" / f"{n}.png")
        cv2.imwrite(str(_mkparent(root / "labels" / f"{n}.png")), label)
    for split, members in {"train": names[:2], "val": names[2:3], "test": names[3:], "test_day": [],
                           "test_night": names[3:]}.items():
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in members))
    spec = resolve_spec(root, "mfnet")
    assert (spec.rgb_dir, spec.modal_channel, spec.label_dir) == ("images", 3, "labels")
    train = RGBXDataset(root, "train", preset="mfnet")
    assert train.names == ["00001D", "00002D", "01234N"]  # the published training set: train + val
    assert RGBXDataset(root, "val", preset="mfnet").names == ["01234N"]
    assert RGBXDataset(root, "test_night", preset="mfnet").names == ["01235N"]
    rgb, modal, lab = train.load(2)
    bgra = cv2.imread(str(frame), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(rgb, bgra[..., 2::-1])  # R, G, B from the first three channels
    np.testing.assert_allclose(modal, bgra[..., 3] / 255.0, atol=1e-6)  # thermal from the fourth
    assert 8 / 255 - 1e-6 <= modal.min() and modal.max() <= 243 / 255 + 1e-6  # the README's thermal range
    assert np.array_equal(lab, label)
    assert train[0]["rgb"].shape == (3, 480, 640)


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_nyu_depth_16bit_png_reads_as_the_published_loader_within_1_over_255(tmp_path):
    """Real NYUv2 frame 1 in the nyudepthv2 layout: depth is uint16 (value / 10000 = m); the published loader
    reads it with cv2.IMREAD_GRAYSCALE (8 bit) / 255, ours over the uint16 range: equal within 1/255.
    Labels: 0 = void -> 255 (ignored), k -> k - 1."""
    depth_file = realdata_file("rgbd/nyuv2/0001/depth_0.1mm.png")
    label_file = realdata_file("rgbd/nyuv2/0001/label40.png")
    root = tmp_path / "NYUDepthv2"
    rgb = cv2.imread(str(realdata_file("rgbd/nyuv2/0001/rgb.png")), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(_mkparent(root / "RGB" / "0001.jpg")), rgb, [cv2.IMWRITE_JPEG_QUALITY, 95])
    _link(depth_file, root / "Depth" / "0001.png")
    _link(label_file, root / "Label" / "0001.png")
    (root / "test.txt").write_text("0001\n")
    ds = RGBXDataset(root, "test", preset="nyudv2")
    _, modal, label = ds.load(0)
    published = cv2.imread(str(depth_file), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    assert np.abs(modal - published).max() <= 1 / 255
    stored = cv2.imread(str(label_file), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label == 255, stored == 0)
    assert np.array_equal(label[stored > 0], stored[stored > 0].astype(np.int64) - 1)
    assert label[stored > 0].max() <= 39
    # in metres with the documented option: value / 10000, 1.80..3.62 m as its README says
    metres = depth_to_metres(cv2.imread(str(depth_file), cv2.IMREAD_UNCHANGED), "nyu")
    assert 1.79 < metres.min() < 1.81 and 3.61 < metres.max() < 3.63


def test_pst900_release_layout_with_8bit_thermal_and_its_labels(tmp_path):
    """PST900 as released: train/ and test/, each with rgb/, thermal/ (8-bit), labels/; no list files."""
    root = tmp_path / "PST900_RGBT_Dataset"
    for split in ("train", "test"):
        _link(realdata_file("rgbt/pst900/rgb.png"), root / split / "rgb" / "32_bag_frame.png")
        _link(realdata_file("rgbt/pst900/thermal_DERIVED.png"), root / split / "thermal" / "32_bag_frame.png")
        _link(realdata_file("rgbt/pst900/label_DERIVED.png"), root / split / "labels" / "32_bag_frame.png")
    ds = RGBXDataset(root, "test", preset="pst900")
    assert ds.spec.split_folders and ds.names == ["32_bag_frame"] and ds.num_classes == 5
    rgb, modal, label = ds.load(0)
    thermal = cv2.imread(str(realdata_file("rgbt/pst900/thermal_DERIVED.png")), cv2.IMREAD_UNCHANGED)
    assert rgb.shape == (720, 1280, 3) and thermal.dtype == np.uint8
    np.testing.assert_allclose(modal, thermal / 255.0, atol=1e-6)
    assert np.bincount(label.ravel(), minlength=5).tolist() == [896434, 5172, 14806, 5188, 0]


@pytest.mark.parametrize("units, file, per_metre", [
    ("tum", "rgbd/tum/TUM_depth.png", 5000.0),  # TUM RGB-D: value / 5000 = m
    ("redwood", "rgbd/redwood/depth_00000.png", 1000.0),  # Redwood: millimetres, as ROS 16UC1
    ("0.1mm", "rgbd/nyuv2/0001/depth_0.1mm.png", 10000.0),  # NYU Depth V2 PNGs: value / 10000 = m
])
def test_depth_unit_conventions_on_real_frames(units, file, per_metre, tmp_path):
    """A custom depth dataset names how its PNGs store depth (dataset.yaml depth_units); the model sees metres."""
    raw = cv2.imread(str(realdata_file(file)), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    np.testing.assert_allclose(depth_to_metres(raw, units), raw.astype(np.float64) / per_metre, rtol=1e-6)
    root = tmp_path / "rgbd"
    cv2.imwrite(str(_mkparent(root / "RGB" / "f.png")), np.zeros((*raw.shape, 3), np.uint8))
    _link(realdata_file(file), root / "Modal" / "f.png")
    (root / "train.txt").write_text("f\n")
    spec = DatasetSpec.from_dict({"classes": ["a"], "modality": "depth", "scaling": {"max_range": 10.0},
                                  "depth_units": units, "label_dir": None})
    spec.write_yaml(root)
    ds = RGBXDataset(root, "train")
    assert DatasetSpec.from_yaml(root / "dataset.yaml") == spec and ds.spec.depth_units == spec.depth_units
    _, modal, _ = ds.load(0)
    valid = raw > 0
    np.testing.assert_allclose(modal[valid], np.minimum(raw[valid] / per_metre, 10.0) / 10.0, rtol=1e-5)
    assert (modal[~valid] == 0).all()
    assert "depth_units" not in spec.scaling.to_dict()  # checkpoints keep metres: the robot's 16UC1 is mm


def test_sunrgbd_raw_depth_bits_are_rotated_back_to_millimetres():
    """SUN RGB-D stores raw depth as uint16 with its bits rotated: mm = (v >> 3) | (v << 13) in 16 bits.
    Built from the real Redwood depth (millimetres), stored the SUN RGB-D way, read back exactly."""
    mm = cv2.imread(str(realdata_file("rgbd/redwood/depth_00000.png")), cv2.IMREAD_UNCHANGED)
    stored = ((mm.astype(np.uint32) << 3) | (mm.astype(np.uint32) >> 13)).astype(np.uint16)
    assert not np.array_equal(stored, mm)
    np.testing.assert_allclose(depth_to_metres(stored, "sunrgbd"), mm / 1000.0, rtol=1e-6)
    assert stored.max() == 8 * mm.max()  # what a reader that ignores the rotation would take as millimetres
    with pytest.raises(ValueError, match="dataset.yaml: depth_units must be one of mm, 0.1mm, 0.2mm, sunrgbd"):
        DatasetSpec.from_dict({"classes": ["a"], "modality": "depth", "depth_units": "inches"})


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG header declaring width x height grey pixels, its image data cut short (never decoded if refused)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def _bmp_rle8_declaring(width: int, height: int) -> bytes:
    """A 1 KB run-length-coded BMP declaring width x height pixels (OpenCV decodes it into BGR: 3 bytes a pixel)."""
    import struct

    palette, pixels = b"\0" * 1024, b"\x00\x01"  # 256 black entries; 'end of bitmap' at once
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def test_image_and_label_files_declaring_too_many_pixels_are_refused_before_decoding(tmp_path):
    """Issue 21 attack (second pass): files had no size check (messages did). sigma-predict on a 0.75 MB PNG declaring
    16000x16000 RGB pixels was killed after 58 s at 22 GB; a 1 KB BMP decoded into 768 MB. Here 5000x5000 (above
    the 4096x4096 limit): each reader refuses from the header, naming the file and the size."""
    from sigma_core.data.dataset import read_image
    from sigma_core.data.labels import read_label_image

    for name, data in (("bomb.png", _png_declaring(5000, 5000)), ("bomb.bmp", _bmp_rle8_declaring(5000, 5000))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"image .*{name} declares 5000x5000 = 25,000,000 pixels, above the limit"):
            read_image(tmp_path / name)
        with pytest.raises(DataError, match=rf"label image .*{name} declares 5000x5000"):
            read_label_image(tmp_path / name)
    (tmp_path / "small.bmp").write_bytes(_bmp_rle8_declaring(40, 30))
    assert read_image(tmp_path / "small.bmp").shape[:2] == (30, 40)  # formats besides PNG/JPEG/TIFF still read
    assert read_label_image(tmp_path / "small.bmp").shape == (30, 40)


def test_sigma_predict_refuses_a_decompression_bomb_in_one_line(tmp_path):
    """The CLI in a real process: its error line names the file and its declared size, exit 2, nothing decoded."""
    import subprocess
    import sys

    (tmp_path / "rgb.png").write_bytes(_png_declaring(16000, 16000))
    cv2.imwrite(str(tmp_path / "thermal.png"), np.zeros((48, 64), np.uint8))
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.predict", str(tmp_path / "rgb.png"),
                          str(tmp_path / "thermal.png"), "--out", str(tmp_path / "out"), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert re.search(r"^sigma-predict: error: image .*rgb\.png declares 16000x16000 = 256,000,000 pixels, above the "
                     "limit", lines[-1]), lines
