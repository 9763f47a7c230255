"""Metrics on hand-made confusion matrices equal hand-computed values."""
import math

import numpy as np
import pytest
import torch

from sigma_core.engine.metrics import ConfusionMatrix, compute_metrics, confusion_counts


def test_three_class_matrix_by_hand():
    # rows truth, columns prediction
    cm = np.array([[5, 1, 0],
                   [2, 3, 1],
                   [0, 0, 4]])
    m = compute_metrics(cm, ["a", "b", "c"])
    # IoU = TP / (row + col - TP)
    iou = [5 / (6 + 7 - 5), 3 / (6 + 4 - 3), 4 / (4 + 5 - 4)]
    assert m.iou == pytest.approx(iou)
    assert m.miou == pytest.approx(sum(iou) / 3)
    assert m.class_accuracy == pytest.approx([5 / 6, 3 / 6, 4 / 4])
    assert m.mean_class_accuracy == pytest.approx((5 / 6 + 3 / 6 + 1) / 3)
    assert m.pixel_accuracy == pytest.approx(12 / 16)
    assert m.fw_iou == pytest.approx(6 / 16 * iou[0] + 6 / 16 * iou[1] + 4 / 16 * iou[2])
    d = m.to_dict()
    assert d["per_class"][1] == {"class": "b", "iou": pytest.approx(iou[1]), "accuracy": 0.5, "pixels": 6}


def test_absent_class_is_left_out_but_false_positives_count():
    # class 1 never in truth nor predicted -> undefined, left out; class 2 predicted but absent -> IoU 0, counts
    cm = np.array([[4, 0, 2],
                   [0, 0, 0],
                   [0, 0, 0]])
    m = compute_metrics(cm)
    assert m.iou[0] == pytest.approx(4 / 6)
    assert math.isnan(m.iou[1])
    assert m.iou[2] == 0.0
    assert m.miou == pytest.approx((4 / 6 + 0.0) / 2)
    assert m.mean_class_accuracy == pytest.approx(4 / 6)  # only class 0 has ground truth
    assert m.pixel_accuracy == pytest.approx(4 / 6)
    assert m.fw_iou == pytest.approx(4 / 6)
    assert m.to_dict()["per_class"][1]["iou"] is None


def test_accumulator_ignores_255_and_out_of_range_labels():
    target = torch.tensor([[0, 1, 255], [2, 1, 7]])
    pred = torch.tensor([[0, 2, 1], [2, 1, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    expected = np.zeros((3, 3), dtype=np.int64)
    for t, p in [(0, 0), (1, 2), (2, 2), (1, 1)]:
        expected[t, p] += 1
    assert np.array_equal(cm.matrix.numpy(), expected)
    cm.update(pred, target)  # accumulates
    assert np.array_equal(cm.matrix.numpy(), 2 * expected)
    m = cm.compute()
    assert m.pixel_accuracy == pytest.approx(3 / 4)
    # the numpy count the torch-free tools (replay, demo) use counts the same
    assert np.array_equal(confusion_counts(pred.numpy(), target.numpy(), 3), expected)
    with pytest.raises(ValueError, match=r"predicted class ids must lie in \[0, 3\), got 0..5"):
        confusion_counts(np.array([0, 5]), np.array([0, 1]), 3)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="square"):
        compute_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="prediction shape"):
        ConfusionMatrix(3).update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ConfusionMatrix(3).update(torch.tensor([3]), torch.tensor([0]))


def test_empty_matrix_is_undefined_not_an_error():
    m = compute_metrics(np.zeros((2, 2), dtype=np.int64))
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy)
    assert m.to_dict()["miou"] is None
