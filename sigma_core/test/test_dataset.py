"""RGBXDataset over each published layout (fake folders made here) and over dataset.yaml folders."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sigma_core.data.dataset import PRESETS, DatasetSpec, RGBXDataset, resolve_spec
from sigma_core.data.errors import DataError
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
