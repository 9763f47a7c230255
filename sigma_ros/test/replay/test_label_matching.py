"""label_matching: masks meet their labels in either order, stale ones are forgotten, frames are scored."""
import numpy as np

from sigma_ros.replay.label_matching import LabelMatcher, forget_older, frame_confusion

S = 1_000_000_000  # one second in ns


def test_mask_and_label_meet_whichever_comes_first():
    matched = []
    matcher = LabelMatcher(lambda stamp, mask, label: matched.append((stamp, mask[0, 0], label[0, 0])), 5 * S)
    matcher.add_mask(1 * S, np.full((2, 2), 1, np.uint8))
    matcher.add_label(2 * S, np.full((2, 2), 7, np.uint8))
    assert matched == []
    matcher.add_label(1 * S, np.full((2, 2), 2, np.uint8))  # label after its mask
    matcher.add_mask(2 * S, np.full((2, 2), 3, np.uint8))  # mask after its label
    assert matched == [(1 * S, 1, 2), (2 * S, 3, 7)]
    matcher.add_label(1 * S, np.zeros((2, 2), np.uint8))  # each pair is scored once
    assert len(matched) == 2


def test_partners_older_than_the_horizon_are_forgotten():
    matched = []
    matcher = LabelMatcher(lambda *args: matched.append(args[0]), 5 * S)
    matcher.add_mask(1 * S, np.zeros((2, 2), np.uint8))
    matcher.add_mask(7 * S, np.zeros((2, 2), np.uint8))  # 6 s newer: the first mask is dropped
    matcher.add_label(1 * S, np.zeros((2, 2), np.uint8))
    matcher.add_label(7 * S, np.zeros((2, 2), np.uint8))
    assert matched == [7 * S]


def test_forget_older_keeps_the_horizon():
    pending = {0: "a", 4 * S: "b", 5 * S: "c", 9 * S: "d"}
    forget_older(pending, newest=9 * S, horizon_ns=5 * S)
    assert sorted(pending) == [4 * S, 5 * S, 9 * S]


def test_frame_confusion_rows_are_labels_and_ignore_id_is_skipped():
    mask = np.array([[0, 1], [1, 2]], np.uint8)
    label = np.array([[0, 2], [1, 255]], np.uint8)
    cm = frame_confusion(mask, label, 3)
    expected = np.zeros((3, 3), np.int64)
    expected[0, 0] = expected[2, 1] = expected[1, 1] = 1
    np.testing.assert_array_equal(cm, expected)
