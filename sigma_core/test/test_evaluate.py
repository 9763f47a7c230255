"""Evaluation: sliding window vs whole image, test-time augmentation, reports, and the sigma-evaluate CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sigma_core import SigmaConfig, build_sigma
from sigma_core.engine.evaluate import blank_modality_like, predict_scores, sliding_window_logits, window_starts
from sigma_core.engine.metrics import compute_metrics
from sigma_core.engine.reports import published_miou, write_evaluation_report

TINY = dict(depths=(1, 1, 1, 1), dims=32, decoder_depths=(1, 1, 1), num_classes=5)


class PixelwiseModel(torch.nn.Module):
    """A 1x1-conv model: each pixel's logits depend on that pixel only, so any tiling gives the same logits."""

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(6, k, 1)
        self.calls = []

    def forward(self, rgb, x):
        self.calls.append(tuple(rgb.shape[-2:]))
        return self.conv(torch.cat([rgb, x], 1))


def test_window_starts_cover_the_image_and_end_flush():
    assert window_starts(10, 10, 7) == [0]
    assert window_starts(8, 10, 7) == [0]
    assert window_starts(25, 10, 7) == [0, 7, 14, 15]
    starts = window_starts(100, 30, 20)
    assert starts[0] == 0 and starts[-1] == 70 and all(b - a <= 20 for a, b in zip(starts, starts[1:]))


@pytest.fixture(scope="module")
def tiny_sigma():
    torch.manual_seed(0)
    return build_sigma(SigmaConfig(**TINY)).eval()


def test_sliding_window_equals_whole_image_when_the_crop_covers_it(tiny_sigma):
    torch.manual_seed(1)
    rgb, x = torch.randn(2, 3, 36, 52), torch.randn(2, 3, 36, 52)
    with torch.inference_mode():
        whole = predict_scores(tiny_sigma, rgb, x, mode="whole")
        for crop in ((36, 52), (64, 64)):
            slid = predict_scores(tiny_sigma, rgb, x, mode="sliding", crop=crop)
            assert torch.equal(slid, whole)


def test_sliding_window_tiles_average_overlaps():
    model = PixelwiseModel()
    rgb, x = torch.randn(1, 3, 50, 70), torch.randn(1, 3, 50, 70)
    with torch.inference_mode():
        whole = model(rgb, x)
        model.calls.clear()
        slid = sliding_window_logits(model, rgb, x, crop=(24, 30), stride_ratio=2 / 3)
    torch.testing.assert_close(slid, whole, atol=1e-6, rtol=1e-6)
    assert set(model.calls) == {(24, 30)}
    assert len(model.calls) == len(window_starts(50, 24, 16)) * len(window_starts(70, 30, 20))


def test_sliding_window_on_sigma_differs_from_whole_but_keeps_shape(tiny_sigma):
    torch.manual_seed(2)
    rgb, x = torch.randn(1, 3, 48, 64), torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        slid = predict_scores(tiny_sigma, rgb, x, mode="sliding", crop=(32, 32))
        whole = predict_scores(tiny_sigma, rgb, x)
    assert slid.shape == whole.shape == (1, 5, 48, 64)
    torch.testing.assert_close(slid.sum(1), torch.ones(1, 48, 64))
    assert not torch.allclose(slid, whole)


def test_flip_and_multiscale_sum_softmaxes_at_input_size():
    model = PixelwiseModel()
    rgb, x = torch.randn(1, 3, 20, 30), torch.randn(1, 3, 20, 30)
    with torch.inference_mode():
        scores = predict_scores(model, rgb, x, scales=(0.5, 1.0, 1.5), flip=True)
        single = predict_scores(model, rgb, x)
    assert scores.shape == (1, 4, 20, 30)
    torch.testing.assert_close(scores.sum(1), torch.full((1, 20, 30), 6.0))
    # a pixelwise model is flip-equivariant: scale 1 with flip is exactly twice scale 1 alone
    with torch.inference_mode():
        flipped = predict_scores(model, rgb, x, flip=True)
    torch.testing.assert_close(flipped, 2 * single)


def test_blank_modality_is_the_normalised_zero_image():
    x = torch.randn(2, 3, 4, 5)
    blank = blank_modality_like(x)
    assert blank.shape == x.shape
    torch.testing.assert_close(blank[0, :, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_report_files(tmp_path):
    cm = np.array([[50, 5, 0], [3, 30, 2], [0, 1, 9]])
    metrics = compute_metrics(cm, ["road", "car", "person"])
    paths = write_evaluation_report(tmp_path, metrics, {"checkpoint": "x.pt", "images": 3},
                                    published_miou("mfnet", "tiny"))
    report = json.loads(paths["json"].read_text())
    assert report["metrics"]["miou"] == pytest.approx(metrics.miou)
    assert report["published"]["miou_same_variant"] == 60.2
    assert [c["class"] for c in report["metrics"]["per_class"]] == ["road", "car", "person"]
    for key in ("confusion", "class_iou"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| road |" in paths["markdown"].read_text()
    assert published_miou("pst900", "base") == {"source": published_miou("pst900", "tiny")["source"],
                                                 "miou_by_variant": {"tiny": 88.6, "small": 87.8}}
    assert published_miou("my_robot", "tiny") is None
    # the config preset, the dataset preset and an alias name the same benchmark
    assert {published_miou(n, "tiny")["miou_same_variant"] for n in ("nyudv2", "NYUDepthv2", "nyu")} == {53.9}


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "sigma_core.cli.evaluate", str(tmp_path / "nope.pt")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert missing.stderr.strip().count("\n") == 0 and "nope.pt does not exist" in missing.stderr
    bad_key = subprocess.run([sys.executable, "-m", "sigma_core.cli.evaluate", str(tmp_path / "nope.pt"),
                              "eval.moed=sliding"], capture_output=True, text=True, timeout=60)
    assert bad_key.returncode != 0
    assert "eval.moed" in bad_key.stderr and bad_key.stderr.strip().count("\n") == 0


def test_sigma_evaluate_on_a_dataset_ours_and_published_format(tmp_path, capsys):
    from sigma_core.checkpoints import save_checkpoint
    from sigma_core.cli.evaluate import main
    from sigma_core.data.synthetic import CLASSES, PALETTE, THERMAL_SCALING, write_dataset

    root = write_dataset(tmp_path / "synth", n=8, seed=5, size=(32, 48), test_fraction=0.5)
    torch.manual_seed(0)
    cfg = SigmaConfig(**{**TINY, "num_classes": len(CLASSES)})
    model = build_sigma(cfg)
    ours = save_checkpoint(tmp_path / "ours.pt", model, cfg, class_names=CLASSES, palette=PALETTE,
                           modality="thermal", scaling=THERMAL_SCALING)
    assert main([str(ours), "--data-root", str(root), "--out", str(tmp_path / "r1"), "--save-predictions",
                 "--device", "cpu", "data.num_workers=0"]) == 0
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["images"] == 4 and report["dataset"]["split"] == "test"
    assert [c["class"] for c in report["metrics"]["per_class"]] == list(CLASSES)
    assert "published" not in report
    for name in ("report.md", "confusion_matrix.png", "class_iou.png"):
        assert (tmp_path / "r1" / name).is_file()
    md = (tmp_path / "r1" / "report.md").read_text()  # issue 22: the markdown alone says what was evaluated
    assert f"- checkpoint: `{ours}` (sigma_custom_d32_1-1-1-1)" in md
    assert f"- dataset: `{root}` (preset custom), split `test`, 4 images" in md
    assert "- mode: whole; scales 1; flip no" in md and "- classes (8): 0 background, 1 road," in md
    predictions = sorted(p.stem for p in (tmp_path / "r1" / "predictions").glob("*.png"))
    assert predictions == sorted((root / "test.txt").read_text().split())
    assert "mIoU" in capsys.readouterr().out

    # the same weights as a published-style checkpoint (state dict under "model", DDP prefix): same numbers,
    # the architecture inferred from the keys (no model.* settings), the classes from the dataset
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "published.pth")
    assert main([str(tmp_path / "published.pth"), "--data-root", str(root), "--out", str(tmp_path / "r2"),
                 "--device", "cpu", "data.num_workers=0"]) == 0
    again = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert again["metrics"] == report["metrics"] and again["model"] == "sigma_custom_d32_1-1-1-1"

    # blanking the thermal input changes the predictions
    assert main([str(ours), "--data-root", str(root), "--out", str(tmp_path / "r3"), "--blank-modality",
                 "--device", "cpu", "data.num_workers=0"]) == 0
    blank = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert blank["settings"]["blank_modality"] and blank["metrics"]["confusion_matrix"] != report["metrics"][
        "confusion_matrix"]


def test_messages_lead_somewhere_and_the_report_lands_in_the_working_directory(tmp_path, monkeypatch, capsys):
    from sigma_core.checkpoints import save_checkpoint
    from sigma_core.cli.evaluate import main
    from sigma_core.data.synthetic import CLASSES, PALETTE, THERMAL_SCALING, write_dataset

    def run(*args):
        return subprocess.run([sys.executable, "-m", "sigma_core.cli.evaluate", *args], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path)

    nothing = run()
    assert nothing.returncode == 2 and "give the checkpoint to evaluate" in nothing.stderr
    assert "section.key=value" not in nothing.stderr.splitlines()[-1]
    override_first = run("eval.limit=3")
    assert override_first.returncode == 2 and "got the override 'eval.limit=3'" in override_first.stderr
    # a PNG (or any non-checkpoint) given as the checkpoint says what it is
    png = tmp_path / "class_iou.png"
    import cv2

    cv2.imwrite(str(png), np.zeros((4, 4, 3), np.uint8))
    root = write_dataset(tmp_path / "synth", n=8, seed=5, size=(32, 48), test_fraction=0.5)
    as_png = run(str(png), "--data-root", str(root), "data.num_workers=0")
    assert as_png.returncode == 1 and as_png.stderr.count("\n") == 1
    assert "is not a PyTorch checkpoint" in as_png.stderr and "(a PNG image)" in as_png.stderr
    assert "Python objects" not in as_png.stderr

    # the report goes to the working directory, not beside the checkpoint (the bundled one lives in the package)
    package = tmp_path / "site-packages" / "assets"
    package.mkdir(parents=True)
    cfg = SigmaConfig(**{**TINY, "num_classes": len(CLASSES)})
    ours = save_checkpoint(package / "model.pt", build_sigma(cfg), cfg, class_names=CLASSES, palette=PALETTE,
                           modality="thermal", scaling=THERMAL_SCALING)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main([str(ours), "--data-root", str(root), "--device", "cpu", "data.num_workers=0"]) == 0
    assert (work / "model_eval" / "test" / "report.json").is_file() and sorted(p.name for p in package.iterdir()) == [
        "model.pt"]
    assert "report: model_eval/test/report.json" in capsys.readouterr().out

    # an empty split is an error, not "mIoU 0.00 (0 images)"
    (root / "empty.txt").write_text("")
    with pytest.raises(SystemExit) as stop:
        main([str(ours), "--data-root", str(root), "--split", "empty", "--device", "cpu"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "split 'empty' holds no images" in err and "--test-fraction" in err

    # a report folder holding the user's own report.md is not written over; our own report may be redone
    mine = work / "notes"
    mine.mkdir()
    (mine / "report.md").write_text("my findings\n")
    with pytest.raises(SystemExit) as stop:
        main([str(ours), "--data-root", str(root), "--out", str(mine), "--device", "cpu", "data.num_workers=0"])
    assert stop.value.code == 1 and "no evaluation wrote" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"]
    assert (mine / "report.md").read_text() == "my findings\n"
    with pytest.raises(SystemExit) as stop:  # a file in the way: said before evaluating, in one line
        main([str(ours), "--data-root", str(root), "--out", str(mine / "report.md" / "r"), "--device", "cpu"])
    assert stop.value.code == 1 and "report.md is a file" in capsys.readouterr().err
    assert main([str(ours), "--data-root", str(root), "--device", "cpu", "data.num_workers=0"]) == 0


def test_sigma_evaluate_runs_the_published_parity_model_like_its_import(tmp_path, capsys):
    """The parity fixture as a published file (DDP prefix, optimizer entry) under the MFNet preset: the same
    predictions as the fixture's network built by hand, and the same report as its sigma-import'ed copy."""
    import cv2
    from reference_data import parity_fixture, write_published_checkpoint

    from sigma_core import load_weights
    from sigma_core.cli.evaluate import main
    from sigma_core.cli.import_checkpoint import main as import_main
    from sigma_core.data.dataset import PRESETS, RGBXDataset
    from sigma_core.data.synthetic import write_dataset

    fixture = parity_fixture()
    published = write_published_checkpoint(tmp_path / "sigma_published.pth", fixture["state_dict"])
    root = write_dataset(tmp_path / "frames", n=4, seed=3, size=(64, 96), test_fraction=0.5)  # MFNet's layout
    args = ["--preset", "mfnet", "--data-root", str(root), "--device", "cpu", "--save-predictions",
            "data.num_workers=0"]
    assert main([str(published), "--out", str(tmp_path / "published"), *args]) == 0
    assert "inferred from its keys" in capsys.readouterr().out
    assert import_main([str(published), "--dataset", "mfnet", "-o", str(tmp_path / "imported.pt")]) == 0
    assert main([str(tmp_path / "imported.pt"), "--out", str(tmp_path / "imported"), *args]) == 0
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("published", "imported")]
    assert reports[0]["metrics"] == reports[1]["metrics"] and reports[0]["images"] == 2

    model = build_sigma(SigmaConfig(depths=(1, 1, 2, 1), dims=32, num_classes=9)).eval()
    load_weights(model, fixture["state_dict"])
    palette = np.asarray(PRESETS["mfnet"].palette, np.uint8)
    dataset = RGBXDataset(root, split="test", preset="mfnet")
    for i in range(len(dataset)):
        sample = dataset[i]
        with torch.inference_mode():
            expected = model(sample["rgb"][None], sample["modal"][None])[0].argmax(0).numpy()
        saved = cv2.imread(str(tmp_path / "published" / "predictions" / f"{sample['name']}.png"))
        np.testing.assert_array_equal(saved, cv2.cvtColor(palette[expected], cv2.COLOR_RGB2BGR))


def test_without_a_checkpoint_the_bundled_model_of_the_datasets_modality_is_evaluated(tmp_path):
    """Issue 22: sigma-evaluate had no default checkpoint while the node, demo and replay use the bundled model."""
    from sigma_core.data.synthetic import write_dataset

    root = write_dataset(tmp_path / "synth_depth", n=4, seed=5, size=(32, 48), modality="depth", test_fraction=0.5)
    done = subprocess.run([sys.executable, "-m", "sigma_core.cli.evaluate", "--data-root", str(root),
                           "data.num_workers=0", "--device", "cpu"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "evaluating the bundled depth demo model" in done.stderr and "sigma_nano_synthetic_depth.pt" in done.stderr
    report = json.loads((tmp_path / "sigma_nano_synthetic_depth_eval" / "test" / "report.json").read_text())
    assert report["checkpoint"].endswith("sigma_nano_synthetic_depth.pt") and report["images"] == 2
    # the bundled thermal model on the same depth images scored 'mIoU 1.39' without a word: refused, one line
    from sigma_core.assets import demo_checkpoint

    wrong = subprocess.run([sys.executable, "-m", "sigma_core.cli.evaluate", str(demo_checkpoint("thermal")),
                            "--data-root", str(root), "data.num_workers=0", "--device", "cpu", "--out",
                            str(tmp_path / "wrong")], capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and wrong.stderr.strip().count("\n") == 0, wrong.stderr
    assert "is a thermal model but the dataset's modality is depth" in wrong.stderr
    assert not (tmp_path / "wrong").exists()


@pytest.mark.slow
def test_a_report_of_another_checkpoint_is_never_replaced(tmp_path):
    """Issue 21, fault 5: `sigma-evaluate runs/ft/best.pt` wrote to best_eval/test/, replacing the report made there
    for runs/street/best.pt. Each run's best.pt now gets its own default folder, and a folder holding another
    checkpoint's report is refused before evaluating."""
    from sigma_core.checkpoints import save_checkpoint
    from sigma_core.data.synthetic import CLASSES, PALETTE, THERMAL_SCALING, write_dataset

    root = write_dataset(tmp_path / "synth", n=4, seed=5, size=(32, 48), test_fraction=0.5)
    cfg = SigmaConfig(**{**TINY, "num_classes": len(CLASSES)})
    for run in ("street", "ft"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        save_checkpoint(tmp_path / "runs" / run / "best.pt", build_sigma(cfg), cfg, class_names=CLASSES,
                        palette=PALETTE, modality="thermal", scaling=THERMAL_SCALING)

    def evaluate(run: str, *args: str):
        return subprocess.run([sys.executable, "-m", "sigma_core.cli.evaluate", f"runs/{run}/best.pt", "--data-root",
                               str(root), "--device", "cpu", "data.num_workers=0", *args], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"))

    assert evaluate("street").returncode == 0
    street = (tmp_path / "street_best_eval" / "test" / "report.json").read_text()
    ft = evaluate("ft")
    assert ft.returncode == 0 and "report: ft_best_eval/test/report.json" in ft.stdout, ft.stderr
    assert (tmp_path / "street_best_eval" / "test" / "report.json").read_text() == street
    again = evaluate("ft", "--out", "street_best_eval/test")
    assert again.returncode == 1 and again.stderr.count("\n") == 1, again.stderr
    assert "holds the report of another checkpoint (runs/street/best.pt)" in again.stderr
    assert (tmp_path / "street_best_eval" / "test" / "report.json").read_text() == street


def test_a_runs_checkpoint_is_evaluated_on_the_runs_own_dataset_without_retyping_it(tmp_path, capsys):
    """Issue 22 walk-through: `sigma-evaluate runs/x/best.pt` said 'data.root is not set' although the run folder
    records its dataset (config.yaml), as resume reads it."""
    from sigma_core.checkpoints import save_checkpoint
    from sigma_core.cli.evaluate import main
    from sigma_core.data.synthetic import CLASSES, PALETTE, THERMAL_SCALING, write_dataset
    from sigma_core.engine.config import TrainConfig

    root = write_dataset(tmp_path / "synth", n=4, seed=5, size=(32, 48), test_fraction=0.5)
    run = tmp_path / "runs" / "street"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(TrainConfig.load(None, [f"data.root={root}", "data.num_workers=0",
                                                             f"train.out_dir={run}"]).to_yaml())
    cfg = SigmaConfig(**{**TINY, "num_classes": len(CLASSES)})
    save_checkpoint(run / "best.pt", build_sigma(cfg), cfg, class_names=CLASSES, palette=PALETTE,
                    modality="thermal", scaling=THERMAL_SCALING)
    assert main([str(run / "best.pt"), "--device", "cpu", "--out", str(tmp_path / "ev")]) == 0
    io = capsys.readouterr()
    assert f"using the run's configuration {run / 'config.yaml'}" in io.err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["images"] == 2 and report["dataset"]["root"] == str(root)


def test_the_modality_check_lets_benchmark_depth_checkpoints_through(tmp_path):
    """NYU/SUN presets read 8-bit depth with a 0..255 'thermal' scaling that checkpoints trained on them record:
    those still evaluate; a thermal model on a dataset whose depth is scaled as depth does not."""
    from sigma_core.checkpoints import save_checkpoint
    from sigma_core.data.dataset import PRESETS
    from sigma_core.data.synthetic import DEPTH_SCALING
    from sigma_core.engine.config import TrainConfig
    from sigma_core.engine.evaluate import load_model_for_evaluation

    nyu = PRESETS["nyudepthv2"]
    cfg = SigmaConfig(**{**TINY, "num_classes": len(nyu.classes)})
    trained = save_checkpoint(tmp_path / "nyu.pt", build_sigma(cfg), cfg, class_names=list(nyu.classes),
                              modality=nyu.scaling.modality, scaling=nyu.scaling)
    load_model_for_evaluation(str(trained), TrainConfig.load(), nyu, torch.device("cpu"))
    import dataclasses

    depth_spec = dataclasses.replace(nyu, scaling=DEPTH_SCALING)
    with pytest.raises(ValueError, match="is a thermal model but the dataset's modality is depth"):
        load_model_for_evaluation(str(trained), TrainConfig.load(), depth_spec, torch.device("cpu"))
