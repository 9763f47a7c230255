"""Scan-order ops: the 4-direction cross scan and the concatenated multimodal scan, against explicit indexing."""
import pytest
import torch

from sigma_core.ops import concat_merge, concat_scan, cross_merge, cross_scan


@pytest.mark.parametrize("height,width", [(3, 5), (4, 4), (1, 7)])
def test_cross_scan_orders(height, width):
    x = torch.randn(2, 3, height, width)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 3, height * width)
    for h in range(height):
        for w in range(width):
            row, col = h * width + w, w * height + h
            assert torch.equal(xs[:, 0, :, row], x[:, :, h, w])
            assert torch.equal(xs[:, 1, :, col], x[:, :, h, w])
            assert torch.equal(xs[:, 2, :, height * width - 1 - row], x[:, :, h, w])
            assert torch.equal(xs[:, 3, :, height * width - 1 - col], x[:, :, h, w])


def test_cross_merge_inverts_each_direction():
    height, width = 3, 5
    x = torch.randn(2, 4, height, width)
    xs = cross_scan(x)
    # Each direction alone maps back to the row-major map.
    for k in range(4):
        only = torch.zeros_like(xs)
        only[:, k] = xs[:, k]
        torch.testing.assert_close(cross_merge(only, height, width), x.flatten(2))
    torch.testing.assert_close(cross_merge(xs, height, width), 4 * x.flatten(2))


def test_cross_ops_are_differentiable():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cross_merge(cross_scan(t) * 1.5, 3, 4), (x,))


def test_concat_scan_and_merge():
    rgb, other = torch.randn(2, 3, 2, 3), torch.randn(2, 3, 2, 3)
    xs = concat_scan(rgb, other)
    assert xs.shape == (2, 2, 3, 12)
    assert torch.equal(xs[:, 0, :, :6], rgb.flatten(2)) and torch.equal(xs[:, 0, :, 6:], other.flatten(2))
    assert torch.equal(xs[:, 1], xs[:, 0].flip(-1))
    y_rgb, y_other = concat_merge(xs)
    torch.testing.assert_close(y_rgb, 2 * rgb.flatten(2))
    torch.testing.assert_close(y_other, 2 * other.flatten(2))


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        concat_scan(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, D, 3\*3\)"):
        cross_merge(torch.zeros(1, 4, 2, 8), 3, 3)


def test_scan_orders_made_in_inference_mode_serve_training_later():
    from sigma_core.ops import concat_scan_order, cross_scan_order, selective_scan_ordered

    cross_scan_order.cache_clear()
    with torch.inference_mode():
        order = cross_scan_order(2, 3)  # cached: the next call returns this very tensor
    assert not order.is_inference() and cross_scan_order(2, 3) is order
    with torch.inference_mode():
        assert not concat_scan_order(5).is_inference()
    u = torch.randn(1, 2, 6, requires_grad=True)
    y = selective_scan_ordered(u, torch.randn(1, 8, 6), -torch.rand(8, 3), torch.randn(1, 4, 3, 6),
                               torch.randn(1, 4, 3, 6), None, None, True, order, backend="reference")
    y.sum().backward()
    assert u.grad is not None and u.grad.shape == u.shape
