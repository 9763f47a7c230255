"""report: percentiles, evenly spread frame samples in bounded memory, and pages without labels or samples."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sigma_core.engine.metrics import compute_metrics
from sigma_ros.replay.report import (
    ReplaySummary,
    SampleKeeper,
    format_summary,
    modal_for_display,
    percentiles,
    shared_range,
    write_report,
)


def test_percentiles_and_empty():
    p = percentiles([1.0, 2.0, 3.0, 4.0, 100.0])
    assert p["count"] == 5 and p["p50"] == 3.0 and p["max"] == 100.0 and p["mean"] == pytest.approx(22.0)
    assert percentiles([-5.0, 1.0], absolute=True)["max"] == 5.0
    assert percentiles([]) == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}


@pytest.mark.parametrize("total", [3, 6, 7, 50, 1000])
def test_sample_keeper_spreads_evenly_in_bounded_memory(total):
    keeper = SampleKeeper(6)
    peak = 0
    for i in range(total):
        if keeper.wants(i):
            keeper.add(i, i)
        peak = max(peak, len(keeper._items))
    kept = keeper.items()
    assert peak <= 12
    assert len(kept) == min(6, total) and kept == sorted(kept) and kept[0] == 0
    if total >= 50:
        gaps = np.diff(kept)
        assert kept[-1] >= total * 0.6 and gaps.max() <= 2.5 * gaps.min()  # spread over the run, not bunched


def test_modal_for_display_stretches_any_dtype():
    raw = np.array([[29000, 30000], [31000, 29000]], np.uint16)
    shown = modal_for_display(raw)
    assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255
    depth = np.array([[np.nan, 1.0], [2.0, 3.0]], np.float32)
    assert modal_for_display(depth)[0, 0] == 0 and modal_for_display(depth)[1, 1] == 255
    # A shared range keeps brightness comparable across frames: a cooler frame stays darker.
    warm, cool = np.full((2, 2), 31000, np.uint16), np.full((2, 2), 29000, np.uint16)
    rng = shared_range([warm, cool])
    assert modal_for_display(cool, rng).max() < modal_for_display(warm, rng).min()


def test_report_without_labels_or_samples(tmp_path):
    s = ReplaySummary(mode="offline", source={"bag": "b"}, rgb_messages=30, modal_messages=9, expected_pairs=9,
                      frames=9, unpaired_rgb=21, wall_seconds=3.0, inference_ms=[10.0] * 9, sync_skew_ms=[-2.0] * 9,
                      class_pixels={"road": 30, "car": 10})
    paths = write_report(s, tmp_path)
    assert "class_iou" not in paths and "frames" not in paths and paths["latency"].is_file()
    assert "No labels" in paths["markdown"].read_text()
    text = format_summary(s)
    assert "n/a (no labels)" in text and "3.00 FPS" in text and "75.0%" in text  # road's share of pixels
    assert json.loads(paths["json"].read_text())["metrics"] is None


def test_summary_with_metrics_lists_every_class():
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    s = ReplaySummary(mode="live", frames=2, frames_scored=2, metrics=compute_metrics(cm, ["road", "car", "sky"]),
                      latency_ms=[50.0, 70.0], latency_t=[0.0, 0.1])
    text = format_summary(s)
    assert "latency" in text and "p50 60.0 ms" in text
    assert "road" in text and "car" in text and "sky" in text and "n/a" in text  # sky: no truth, no prediction
    assert f"mIoU {100 * s.metrics.miou:.1f}%" in text


def test_frame_strip_has_a_legend_of_the_overlay_colours(tmp_path):
    import cv2

    from sigma_ros.replay.report import FrameSample, plot_frames

    grey = np.full((24, 32, 3), 128, np.uint8)
    samples = [FrameSample(i * 10**8, grey, np.zeros((24, 32), np.uint16), grey) for i in range(3)]
    legend = [("road", (255, 0, 255)), ("person", (0, 255, 255)), ("car", (255, 128, 0))]
    with_legend = cv2.cvtColor(cv2.imread(str(plot_frames(samples, tmp_path / "a.png", legend))), cv2.COLOR_BGR2RGB)
    without = cv2.cvtColor(cv2.imread(str(plot_frames(samples, tmp_path / "b.png"))), cv2.COLOR_BGR2RGB)
    for _, colour in legend:  # every class colour is drawn as a swatch (and appears nowhere else)
        assert (with_legend == colour).all(axis=-1).sum() > 20, colour
        assert not (without == colour).all(axis=-1).any(), colour
    assert with_legend.shape[0] > without.shape[0]  # room below the strip, frames not squeezed


def test_frame_strip_shows_ground_truth_and_an_error_map_where_labels_exist(tmp_path):
    """Issue 22: the strip had no ground truth or error row, so nobody could see where the model is wrong."""
    import cv2

    from sigma_ros.replay.report import ERROR_COLOURS, FrameSample, error_map, plot_frames

    label = np.zeros((24, 32), np.uint8)
    label[:, 16:] = 1
    label[:4] = 255
    mask = np.zeros((24, 32), np.uint8)  # right on the left half, wrong on the right half
    errors = error_map(mask, label)
    assert (errors[10, 2] == ERROR_COLOURS["correct"]).all() and (errors[10, 20] == ERROR_COLOURS["wrong"]).all()
    assert (errors[0] == 0).all()
    grey = np.full((24, 32, 3), 128, np.uint8)
    legend = [("road", (255, 0, 255)), ("person", (0, 255, 255))]
    plain = [FrameSample(i, grey, np.zeros((24, 32), np.uint16), grey, mask=mask) for i in range(2)]
    labelled = [FrameSample(i, grey, np.zeros((24, 32), np.uint16), grey, mask=mask, label=label) for i in range(2)]
    a = cv2.cvtColor(cv2.imread(str(plot_frames(plain, tmp_path / "a.png", legend))), cv2.COLOR_BGR2RGB)
    b = cv2.cvtColor(cv2.imread(str(plot_frames(labelled, tmp_path / "b.png", legend))), cv2.COLOR_BGR2RGB)
    assert b.shape[0] > a.shape[0]  # two more rows
    assert (b == ERROR_COLOURS["wrong"]).all(axis=-1).sum() > 100 and not (a == ERROR_COLOURS["wrong"]).all(-1).any()
    assert (b == (0, 255, 255)).all(axis=-1).sum() > (a == (0, 255, 255)).all(axis=-1).sum()  # the label in colour
