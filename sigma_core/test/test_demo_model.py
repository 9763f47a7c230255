"""The bundled demo models (thermal and depth): load in Segmenter (as the node does) and reach their recorded mIoU
on a regenerated synthetic test set; their reports show they beat chance and that fusion matters at night."""
import json

import cv2
import pytest
import torch

from sigma_core import Segmenter
from sigma_core.assets import demo_checkpoint, demo_report
from sigma_core.engine.demo_model import CHECK_DATA, write_demo_data
from sigma_core.engine.metrics import ConfusionMatrix

MODALITIES = ("thermal", "depth")


@pytest.fixture(scope="module", params=MODALITIES)
def bundled(request):
    """(modality, its report)."""
    return request.param, json.loads(demo_report(request.param).read_text())


def test_bundled_model_is_small_and_self_describing(bundled):
    modality, report = bundled
    path = demo_checkpoint(modality)
    assert path.is_file() and path.stat().st_size < 8_000_000
    seg = Segmenter.from_checkpoint(path, device="cpu")
    assert seg.class_names == report["classes"] and seg.modality == modality == report["modality"]
    assert seg.input_size == tuple(CHECK_DATA["size"])


def test_bundled_model_reaches_its_recorded_miou_on_a_regenerated_test_set(bundled, tmp_path):
    modality, report = bundled
    recorded = report["check_set"]
    assert {k: recorded[k] for k in CHECK_DATA} == CHECK_DATA
    root = write_demo_data(tmp_path / "check", CHECK_DATA, modality)
    seg = Segmenter.from_checkpoint(demo_checkpoint(modality), device="cpu")
    cm = ConfusionMatrix(seg.num_classes)
    for name in (root / "test.txt").read_text().split():
        rgb = cv2.cvtColor(cv2.imread(str(root / "RGB" / f"{name}.png")), cv2.COLOR_BGR2RGB)
        modal = cv2.imread(str(root / "Modal" / f"{name}.png"), cv2.IMREAD_UNCHANGED)  # centi-Kelvin or mm
        label = cv2.imread(str(root / "Label" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        mask, confidence = seg(rgb, modal)
        assert mask.shape == label.shape and confidence.shape == label.shape
        cm.update(torch.from_numpy(mask), torch.from_numpy(label))
    miou = cm.compute().miou
    assert miou == pytest.approx(recorded["miou"], abs=0.005)


def test_report_beats_chance_and_fusion_matters_at_night(bundled):
    x, report = bundled
    results = report["results"]
    test = results[f"test (RGB + {x})"]["miou"]
    assert test > 0.4 and test > 3 * max(report["chance_miou"].values())
    night, blank = results[f"night (RGB + {x})"]["miou"], results[f"night, {x} blanked"]["miou"]
    assert night - blank > 0.10 and report["night_fusion_gain_miou"] == pytest.approx(night - blank)
    # RGB alone does well by day and poorly at night: the second modality matters where RGB is dark
    assert results[f"day, {x} blanked"]["miou"] - blank > 0.10
    assert report["training"]["wall_seconds"] > 0 and report["training"]["epochs"] >= 1
