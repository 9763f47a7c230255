"""Logits -> mask and confidence on the CPU, against the torch ops that define them (Segmenter on a GPU): the
one-pass numba kernel of the torch Segmenter, and model_io's numpy/OpenCV one of the ONNX Runtime path."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba", reason="the one-pass kernel is compiled with numba")
from sigma_core import model_io  # noqa: E402
from sigma_core.ops import mask_numba  # noqa: E402

IMPLEMENTATIONS = {"numba": mask_numba.logits_to_mask, "numpy": model_io.logits_to_mask}


def torch_decision(logits: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    resized = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    confidence, mask = torch.softmax(resized, dim=0).max(dim=0)
    return mask.to(torch.uint8).numpy(), confidence.numpy()


@pytest.mark.parametrize("classes,in_size,out_size", [
    (9, (30, 40), (120, 160)),  # the bundled model's x4
    (9, (31, 41), (120, 163)),  # scales that are not whole numbers
    (4, (30, 40), (31, 17)),  # down in one direction
    (9, (24, 32), (24, 32)),  # no resize
    (3, (1, 1), (5, 4)),  # one source pixel
    (1, (6, 5), (7, 9)),  # one class: mask 0, confidence 1
    (256, (3, 4), (5, 6)),  # as many classes as uint8 ids
    (5, (64, 64), (32, 32)),  # exactly half: OpenCV switches INTER_LINEAR to INTER_AREA
    (5, (64, 64), (16, 16)),  # a quarter
    (5, (200, 300), (3, 7)),  # down by large factors
    (5, (2, 2), (1000, 3)),  # up 500x in one direction
    (5, (64, 64), (1, 1)),  # one output pixel
])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_mask_and_confidence_equal_the_torch_ops(classes, in_size, out_size, implementation):
    logits = torch.randn(classes, *in_size, generator=torch.Generator().manual_seed(classes)) * 4
    mask, confidence = IMPLEMENTATIONS[implementation](logits.numpy(), out_size)
    want_mask, want_confidence = torch_decision(logits, out_size)
    assert mask.dtype == np.uint8 and confidence.dtype == np.float32 and mask.shape == out_size
    np.testing.assert_array_equal(mask, want_mask)
    # OpenCV computes the source coordinates of scales that are not whole numbers less exactly than torch
    rtol = 2e-6 if implementation == "numba" else 5e-5
    np.testing.assert_allclose(confidence, want_confidence, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_ties_give_the_first_class_and_extreme_logits_stay_finite(implementation):
    logits_to_mask = IMPLEMENTATIONS[implementation]
    tied = np.zeros((5, 4, 4), np.float32)
    mask, confidence = logits_to_mask(tied, (8, 8))
    assert (mask == 0).all() and np.allclose(confidence, 0.2)
    extreme = np.zeros((3, 4, 4), np.float32)
    extreme[1] = 3e38  # exp(l - max) underflows to 0 for the others; never inf or NaN
    extreme[2] = -3e38
    with warnings.catch_warnings():  # l - max = -inf is exact (exp: 0): no RuntimeWarning in a node's log
        warnings.simplefilter("error")
        mask, confidence = logits_to_mask(extreme, (6, 6))
    assert (mask == 1).all() and np.isfinite(confidence).all() and np.allclose(confidence, 1.0)


def test_strided_or_float64_logits_and_bad_shapes():
    logits_to_mask = mask_numba.logits_to_mask
    logits = torch.randn(4, 10, 12, dtype=torch.float64)
    mask, confidence = logits_to_mask(logits.numpy()[:, ::2, ::-2], (9, 9))  # copied to float32, C order
    want_mask, _ = torch_decision(logits[:, ::2].flip(-1)[:, :, ::2].float(), (9, 9))
    np.testing.assert_array_equal(mask, want_mask)
    with pytest.raises(ValueError, match=r"logits must be \(K, h, w\) with 1..256 classes"):
        logits_to_mask(np.zeros((300, 2, 2), np.float32), (4, 4))
    with pytest.raises(ValueError, match=r"logits must be \(K, h, w\)"):
        logits_to_mask(np.zeros((2, 2), np.float32), (4, 4))
