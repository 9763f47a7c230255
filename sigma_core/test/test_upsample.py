"""The decoder's 2x bilinear upsampling (ops.upsample): the native kernel against torch's F.interpolate and the
float64 bilinear map, on several threads, and torch's kernel wherever the native one does not apply."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from sigma_core import native_kernel
from sigma_core.ops import upsample
from sigma_core.ops.upsample import upsample2x_channels_last

try:
    native_kernel.library()
    NATIVE = True
except native_kernel.BackendUnavailable:
    NATIVE = False
needs_native = pytest.mark.skipif(not NATIVE, reason="the native library does not build here")


def torch_upsample(x: torch.Tensor) -> torch.Tensor:
    size = (2 * x.shape[1], 2 * x.shape[2])
    return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def with_threads(count: int, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


SHAPES = [(1, 24, 32, 32), (2, 5, 7, 19), (1, 1, 1, 3), (1, 1, 6, 17), (3, 4, 1, 48), (1, 9, 11, 15)]


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_torch_within_an_ulp_and_the_float64_map(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        got = upsample2x_channels_last(x)
        want = torch_upsample(x)
        exact = torch_upsample(x.double())
    assert got.shape == want.shape and got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=2.4e-7, atol=2.4e-7)  # summation order: an ulp
    torch.testing.assert_close(got.double(), exact, rtol=3e-7, atol=3e-7)


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bfloat16_is_bit_equal_to_torch_on_ordinary_maps(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).bfloat16()
    with torch.no_grad():
        got = upsample2x_channels_last(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, torch_upsample(x), rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_thread_count_and_python_threads_at_once_give_the_same_bits(dtype):
    x = torch.randn(2, 13, 17, 40).to(dtype)
    with torch.no_grad():
        one = with_threads(1, upsample2x_channels_last, x)
        for count in (2, 3, 7):
            torch.testing.assert_close(with_threads(count, upsample2x_channels_last, x), one, rtol=0, atol=0)
        results = [None] * 3

        def call(i):
            with torch.no_grad():
                results[i] = upsample2x_channels_last(x)

        workers = [threading.Thread(target=call, args=(i,)) for i in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
    for result in results:
        torch.testing.assert_close(result, one, rtol=0, atol=0)


@needs_native
def test_strided_maps_are_read_in_place_and_non_finite_values_stay_local():
    base = torch.randn(1, 10, 12, 64)
    x = base[:, 1:9, 2:11, 8:40]  # channel stride 1, rows and columns strided
    x[0, 3, 4, 5] = float("nan")
    x[0, 6, 1, 6] = float("inf")
    assert not x.is_contiguous() and x.stride(3) == 1
    with torch.no_grad():
        got, want = upsample2x_channels_last(x), torch_upsample(x)
    assert upsample._native_runs(x)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    finite = got.isfinite()
    assert finite.sum() > 0.99 * finite.numel()  # a NaN reaches only its 4x4 neighbourhood
    torch.testing.assert_close(got[finite], want[finite], rtol=2.4e-7, atol=2.4e-7)


def test_gradients_float64_float16_and_other_layouts_take_torchs_kernel():
    x = torch.randn(1, 6, 8, 20, requires_grad=True)
    assert not upsample._native_runs(x)  # autograd: torch's kernel and its backward
    y = upsample2x_channels_last(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        for other in (x.detach().double(), x.detach().half(), x.detach().transpose(2, 3).contiguous().transpose(2, 3),
                      torch.empty(0, 4, 4, 8)):
            assert not upsample._native_runs(other)
            torch.testing.assert_close(upsample2x_channels_last(other), torch_upsample(other), rtol=0, atol=0)


@needs_native
def test_the_kernel_refuses_what_it_cannot_read_in_one_line():
    x = torch.randn(1, 4, 4, 8).half()
    out = torch.empty(1, 8, 8, 8).half()
    with pytest.raises(ValueError, match="float32 or bfloat16.*kind 2"):
        native_kernel.run_upsample2x(native_kernel.library(), x=(x.data_ptr(), x.stride()), out=out.data_ptr(),
                                     batch=1, height=4, width=4, channels=8, kind=2, threads=1)
    with pytest.raises(ValueError, match="channel stride 1"):
        native_kernel.run_upsample2x(native_kernel.library(), x=(x.data_ptr(), (128, 32, 8, 2)), out=out.data_ptr(),
                                     batch=1, height=4, width=4, channels=8, kind=0, threads=1)


def test_tensors_native_code_may_not_read_in_place_take_torchs_kernel():
    # Each of these crashed the process (meta default device, fake and zero tensors: no memory behind data_ptr()),
    # or gave a silently wrong result (a negated view read unnegated, a recorded graph holding only the empty
    # output, a forward-mode tangent dropped) when they reached the native kernel.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.randn(1, 5, 6, 32)
    with torch.no_grad():
        with torch.device("meta"):
            assert upsample2x_channels_last(x).device.type == "cpu"
        with FakeTensorMode() as fake:
            assert upsample2x_channels_last(fake.from_tensor(x)).shape == (1, 10, 12, 32)
        assert upsample2x_channels_last(torch._efficientzerotensor((1, 5, 6, 32))).abs().max() == 0
        negated = torch._neg_view(x)
        assert not upsample._native_runs(negated)
        torch.testing.assert_close(upsample2x_channels_last(negated), -torch_upsample(x), rtol=0, atol=0)
    graph = make_fx(lambda t: upsample2x_channels_last(t) * 2)(x)
    recorded = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert "aten.upsample_bilinear2d.default" in recorded, recorded
    torch.testing.assert_close(graph(x), 2 * torch_upsample(x), rtol=0, atol=0)
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(upsample2x_channels_last, (x,), (tangent,))
    torch.testing.assert_close(jvp, torch_upsample(tangent), rtol=0, atol=0)
    import torch.autograd.forward_ad as forward_ad

    with forward_ad.dual_level():
        y = upsample2x_channels_last(forward_ad.make_dual(x, tangent))
        torch.testing.assert_close(forward_ad.unpack_dual(y).tangent, torch_upsample(tangent), rtol=0, atol=0)
    batched = torch.func.vmap(upsample2x_channels_last)(torch.stack([x, 2 * x]))
    torch.testing.assert_close(batched[1], 2 * torch_upsample(x), rtol=0, atol=0)
