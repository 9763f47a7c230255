"""Label images as annotation tools and datasets write them: grey, indexed (palette) PNGs, colour; value checks."""
import cv2
import numpy as np
import pytest
from PIL import Image
from reference_data import realdata_file

from sigma_core.data.dataset import PRESETS
from sigma_core.data.errors import DataError
from sigma_core.data.labels import check_label_values, is_indexed_png, read_label_image, shift_labels

VOC_LIKE_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]  # 255: VOC's border colour


def _indexed_png(path, ids):
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(VOC_LIKE_PALETTE)
    img.save(path)
    return path


def test_indexed_png_is_read_as_its_indices_not_its_colours(tmp_path):
    ids = np.array([[0, 1, 2, 255]] * 3, np.uint8)
    path = _indexed_png(tmp_path / "voc.png", ids)
    assert is_indexed_png(path) and Image.open(path).mode == "P"
    colours = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # what OpenCV makes of it: colours
    assert colours.ndim == 3
    label = read_label_image(path)
    assert label.dtype == np.uint8 and np.array_equal(label, ids)
    assert sorted(np.unique(label)) == [0, 1, 2, 255]
    # a 2-bit indexed PNG (4 palette entries), as small annotation exports are
    small = Image.fromarray(np.array([[0, 1, 2, 3]] * 2, np.uint8), mode="P")
    small.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0, 200])
    small.save(tmp_path / "two_bit.png", bits=2)
    assert is_indexed_png(tmp_path / "two_bit.png")
    assert read_label_image(tmp_path / "two_bit.png").tolist() == [[0, 1, 2, 3]] * 2


def test_grey_and_grey_as_rgb_labels(tmp_path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cv2.imwrite(str(tmp_path / "grey.png"), ids)
    cv2.imwrite(str(tmp_path / "grey3.png"), np.repeat(ids[..., None], 3, axis=2))
    assert not is_indexed_png(tmp_path / "grey.png")
    assert np.array_equal(read_label_image(tmp_path / "grey.png"), ids)
    assert np.array_equal(read_label_image(tmp_path / "grey3.png"), ids)


def test_colour_label_is_an_error_unless_every_colour_is_in_the_palette(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, :] = (255, 0, 0)
    rgb[2, :] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "colour.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    with pytest.raises(DataError, match=r"colour\.png is a colour image, not class ids"):
        read_label_image(tmp_path / "colour.png")
    palette = [(0, 0, 0), (0, 0, 255), (255, 0, 0)]
    ids = read_label_image(tmp_path / "colour.png", palette)
    assert ids[0].tolist() == [0] * 5 and ids[1].tolist() == [2] * 5 and ids[2].tolist() == [1] * 5
    with pytest.raises(DataError, match=r"not all in the dataset's palette \(5 pixels, e\.g\. RGB\(255, 0, 0\)"):
        read_label_image(tmp_path / "colour.png", [(0, 0, 0), (0, 0, 255)])


def test_pst900_colour_visualisation_maps_back_to_its_ids_through_the_preset_palette():
    """The real PST900 frame: its toolkit's colour rendering, mapped through the pst900 palette, is the id label."""
    ids = cv2.imread(str(realdata_file("rgbt/pst900/label_DERIVED.png")), cv2.IMREAD_UNCHANGED)
    mapped = read_label_image(realdata_file("rgbt/pst900/label_vis.png"), PRESETS["pst900"].palette)
    assert np.array_equal(mapped, ids)
    assert np.bincount(mapped.ravel(), minlength=5).tolist() == [896434, 5172, 14806, 5188, 0]


def test_empty_and_corrupt_label_files_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"cannot decode label image .*empty\.png"):
        read_label_image(tmp_path / "empty.png")
    good = _indexed_png(tmp_path / "p.png", np.zeros((8, 8), np.uint8)).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[:40])  # an indexed PNG cut short
    with pytest.raises(DataError, match=r"cut\.png"):
        read_label_image(tmp_path / "cut.png")
    with pytest.raises(DataError, match=r"missing label file .*nope\.png"):
        read_label_image(tmp_path / "nope.png")


def test_label_value_check_names_the_value_the_class_count_and_the_fix():
    label = np.zeros((4, 4), np.int64)
    check_label_values(label, 3, "x.png", "fix it")
    label[0, 0] = 255  # ignore is always allowed
    check_label_values(label, 3, "x.png", "fix it")
    label[1, 1] = 7
    with pytest.raises(DataError, match=r"x\.png holds label value 7, but the dataset has 3 classes: stored values "
                                        r"must be 0\.\.2 or 255 \(ignore\); fix it"):
        check_label_values(label, 3, "x.png", "fix it")
    stored = np.array([[0, 1, 41]], np.uint8)  # NYU-style: 0 = void, 1..40, one stray 41
    with pytest.raises(DataError, match=r"label value 41, .* must be 1\.\.40 or 255 .*label_shift 1"):
        check_label_values(shift_labels(stored, 1), 40, "n.png", "fix", shift=1)
    check_label_values(label, None, "x.png", "no classes: nothing to check")
