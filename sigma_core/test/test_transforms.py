"""The published augmentations keep RGB, modality and labels aligned, pad with 0/255, and are seeded."""
import numpy as np
import pytest

from sigma_core.data.normalize import IMAGENET_MEAN, IMAGENET_STD, denormalize_rgb, normalize_modal, to_chw
from sigma_core.data.transforms import TrainAugmentation, random_crop_pad, to_network

COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20], [20, 230, 230]], np.uint8)


def _blocks(h=48, w=64, seed=0):
    """Blocky scene: each 8x8 block one class; RGB colour and modality value both encode the class."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, 5, (h // 8, w // 8)), np.ones((8, 8), np.int64))
    label[:, : w // 2] = np.where(label[:, : w // 2] == 4, 3, label[:, : w // 2])  # left/right asymmetric
    label[:, w // 2:] = np.where(label[:, w // 2:] == 3, 4, label[:, w // 2:])
    rgb = COLOURS[label]
    modal = (label / 10.0).astype(np.float32)
    return rgb, modal, label


def _decode(rgb_n, modal_n):
    """Back from network inputs to class ids, via the colour and via the modality."""
    rgb = denormalize_rgb(rgb_n).astype(np.int32)
    from_rgb = np.argmin(((rgb[:, :, None, :] - COLOURS[None, None].astype(np.int32)) ** 2).sum(-1), -1)
    unit = modal_n[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # undo the first channel's normalisation
    return from_rgb, np.round(unit * 10).astype(np.int64)


@pytest.mark.parametrize("seed", range(8))
def test_augmentation_keeps_modalities_and_labels_aligned(seed):
    rgb, modal, label = _blocks(seed=seed)
    aug = TrainAugmentation(crop_size=(40, 56))
    rgb_n, modal_n, lab = aug(rgb, modal, label, np.random.default_rng(seed))
    assert rgb_n.shape == modal_n.shape == (3, 40, 56) and lab.shape == (40, 56) and lab.dtype == np.int64
    assert rgb_n.dtype == modal_n.dtype == np.float32
    valid = lab != 255
    units = modal_n * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
    np.testing.assert_allclose(units[1][valid], units[0][valid], atol=1e-6)  # one modality replicated to 3
    np.testing.assert_allclose(units[2][valid], units[0][valid], atol=1e-6)
    from_rgb, from_modal = _decode(rgb_n, modal_n)
    # bilinear resizing blends block borders; pixels whose 3x3 neighbourhood has one label must agree
    padded = np.pad(lab, 1, mode="edge")
    interior = valid & np.all([padded[1 + dy:1 + dy + lab.shape[0], 1 + dx:1 + dx + lab.shape[1]] == lab
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    assert interior.sum() >= 50
    assert (from_rgb[interior] == lab[interior]).mean() > 0.99
    assert (from_modal[interior] == lab[interior]).mean() > 0.99
    # padding: labels 255 exactly where RGB and modality are 0 (the normalised mean)
    pad = ~valid
    assert np.all(rgb_n[:, pad] == 0) and np.all(modal_n[:, pad] == 0)


def test_flip_and_scale_are_both_exercised_and_seeded():
    rgb, modal, label = _blocks()
    aug = TrainAugmentation(crop_size=None, scales=(0.5, 1.0))
    shapes, flipped = set(), set()
    for seed in range(12):
        r1 = aug(rgb, modal, label, np.random.default_rng(seed))
        r2 = aug(rgb, modal, label, np.random.default_rng(seed))
        assert all(np.array_equal(a, b) for a, b in zip(r1, r2))  # same seed, same sample
        lab = r1[2]
        shapes.add(lab.shape)
        if lab.shape == label.shape:
            flipped.add(bool(np.array_equal(lab, label[:, ::-1])))
            assert np.array_equal(lab, label) or np.array_equal(lab, label[:, ::-1])
    assert shapes == {(24, 32), (48, 64)} and flipped == {True, False}


def test_small_images_are_padded_with_zero_and_ignore():
    rgb, modal, label = _blocks(h=16, w=24)
    rgb_n, modal_n, lab = to_network(rgb, modal, label)
    r, m, lb = random_crop_pad(rgb_n, modal_n, lab, (32, 40), np.random.default_rng(0))
    assert r.shape == (3, 32, 40) and lb.shape == (32, 40)
    assert (lb == 255).sum() == 32 * 40 - 16 * 24
    inner = lb != 255
    np.testing.assert_array_equal(lb[inner].reshape(16, 24), label)  # centred, unchanged
    assert np.all(r[:, ~inner] == 0) and np.all(m[:, ~inner] == 0)


def test_to_network_matches_the_shared_normalisation():
    rgb, modal, label = _blocks()
    r, m, lab = to_network(rgb, modal, label)
    np.testing.assert_array_equal(m, to_chw(normalize_modal(modal)))
    np.testing.assert_array_equal(denormalize_rgb(r), rgb)
    np.testing.assert_array_equal(lab, label)


def test_rejects_bad_settings_and_mismatched_sizes():
    with pytest.raises(ValueError, match="scales"):
        TrainAugmentation(scales=(0.0,))
    with pytest.raises(ValueError, match="crop_size"):
        TrainAugmentation(crop_size=(0, 10))
    rgb, modal, label = _blocks()
    with pytest.raises(ValueError, match="sizes differ"):
        TrainAugmentation()(rgb, modal[:-1], label, np.random.default_rng(0))
