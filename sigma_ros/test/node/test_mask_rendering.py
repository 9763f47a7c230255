"""mask_rendering: palette lookup (ignore id black), colour mask and overlay blend."""
import numpy as np
import pytest

from sigma_ros.node.mask_rendering import colorize, lookup_palette, overlay


def test_colorize_uses_the_palette_and_blacks_out_unlabelled():
    table = lookup_palette(np.array([[10, 20, 30], [200, 100, 0]], np.uint8))
    mask = np.array([[0, 1], [255, 1]], np.uint8)
    color = colorize(mask, table)
    assert color.shape == (2, 2, 3) and color.dtype == np.uint8
    assert color[0, 0].tolist() == [10, 20, 30] and color[0, 1].tolist() == [200, 100, 0]
    assert color[1, 0].tolist() == [0, 0, 0]


def test_overlay_blends_by_alpha():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    color = np.full((2, 2, 3), 200, np.uint8)
    np.testing.assert_array_equal(overlay(rgb, color, 0.0), rgb)
    np.testing.assert_array_equal(overlay(rgb, color, 1.0), color)
    assert abs(int(overlay(rgb, color, 0.25)[0, 0, 0]) - 125) <= 1


def test_too_many_classes_for_a_mono8_mask():
    with pytest.raises(ValueError, match="at most 255"):
        lookup_palette(np.zeros((256, 3), np.uint8))
