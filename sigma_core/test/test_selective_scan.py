"""The selective-scan entry point, its backend choice, and the fast CPU backend against the float64 reference."""
from __future__ import annotations

import importlib

import pytest
import torch

from sigma_core.ops import scan_cpu
from sigma_core.ops.selective_scan import (
    ENV_VAR,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)

# The module (the package re-exports its function under the same name).
registry = importlib.import_module("sigma_core.ops.selective_scan")

ARGS = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(batch, groups, per_group, n_state, length, seed=0, dtype=torch.float64, skip=True, bias=True):
    """Inputs with Sigma-like magnitudes: A = -exp(A_log) in [-2.1, -0.1], delta around softplus(-1)."""
    g = torch.Generator().manual_seed(seed)
    dim = groups * per_group

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    return dict(
        u=rnd(batch, dim, length),
        delta=rnd(batch, dim, length, scale=0.5, shift=-1.0),
        A=-(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 2 + 0.1).to(dtype),
        B=rnd(batch, groups, n_state, length),
        C=rnd(batch, groups, n_state, length),
        D=rnd(dim) if skip else None,
        delta_bias=rnd(dim, scale=0.3) if bias else None,
    )


def run(fn, inputs, softplus):
    return fn(*(inputs[k] for k in ARGS), delta_softplus=softplus)


# (batch, G, D/G, N, L): odd lengths, L=1, lengths that end mid-chunk and exactly on chunk ends.
SHAPES = [(1, 1, 3, 4, 1), (2, 2, 3, 5, 37), (1, 4, 2, 16, 48), (2, 4, 3, 3, 33), (1, 2, 5, 2, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}g{}c{}n{}l{}".format(*s))
@pytest.mark.parametrize("skip,bias,softplus", [(True, True, True), (False, False, False), (True, False, True)])
def test_cpu_matches_reference_float64_with_gradients(shape, skip, bias, softplus):
    inputs = make_inputs(*shape, skip=skip, bias=bias)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    ref_leaves = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    y = run(scan_cpu.selective_scan_cpu, {**inputs, **leaves}, softplus)
    y_ref = run(selective_scan_reference, {**inputs, **ref_leaves}, softplus)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)

    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((y * weight).sum(), list(leaves.values()))
    ref_grads = torch.autograd.grad((y_ref * weight).sum(), list(ref_leaves.values()))
    for name, got, want in zip(leaves, grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_cpu_float32_matches_float64_reference(groups):
    inputs = make_inputs(2, groups, 8 // groups * 2, 16, 300, seed=groups)
    want = run(selective_scan_reference, inputs, True)
    got = run(scan_cpu.selective_scan_cpu, {k: v.float() if v is not None else v for k, v in inputs.items()}, True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_cpu_float32_gradients_match_float64_reference():
    inputs = make_inputs(1, 2, 4, 8, 70, seed=3)
    leaves64 = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    leaves32 = {k: v.float().requires_grad_() for k, v in inputs.items()}
    y64 = run(selective_scan_reference, leaves64, True)
    y32 = run(scan_cpu.selective_scan_cpu, leaves32, True)
    weight = torch.randn(y64.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g64 = torch.autograd.grad((y64 * weight).sum(), list(leaves64.values()))
    g32 = torch.autograd.grad((y32 * weight.float()).sum(), list(leaves32.values()))
    for name, got, want in zip(leaves32, g32, g64):
        assert got.dtype == torch.float32
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double() / scale, want / scale, rtol=0, atol=1e-5, msg=lambda m, n=name: n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_inputs_computed_and_returned_in_float32(dtype):
    inputs = {k: v.to(dtype) for k, v in make_inputs(1, 2, 4, 8, 40, seed=5).items()}
    got = run(scan_cpu.selective_scan_cpu, inputs, True)
    assert got.dtype == torch.float32  # the output contract: never rounded to 16 bits
    want = run(selective_scan_reference, {k: v.double() for k, v in inputs.items()}, True)
    # The inputs are exactly representable, so only float32 arithmetic separates them.
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def _beyond_half_range_inputs(dtype):
    """Half-precision inputs whose scan output exceeds float16's 65504 (slow decay, large u and B)."""
    inputs = make_inputs(1, 2, 4, 16, 64, seed=9)
    inputs["A"] = torch.full_like(inputs["A"], -1e-3)
    inputs["u"] = inputs["u"].abs() * 20 + 20
    inputs["B"] = inputs["B"].abs() * 8 + 8
    inputs["C"] = inputs["C"].abs() * 8 + 8
    return {k: (v.to(dtype) if k in ("u", "delta", "B", "C") else v.float()) for k, v in inputs.items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", registry.available_backends("cpu"))
def test_every_backend_returns_float32_beyond_the_half_range(backend, dtype):
    """The dispatcher's contract, for each backend that runs here (the model relies on it under autocast)."""
    inputs = _beyond_half_range_inputs(dtype)
    got = selective_scan(*(inputs[k] for k in ARGS), delta_softplus=True, backend=backend)
    want = run(selective_scan_reference, {k: v.double() for k, v in inputs.items()}, True)
    assert want.abs().max() > 2 * 65504  # the case the contract exists for
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


def test_dispatcher_refuses_a_backend_that_returns_half_precision(monkeypatch):
    def rounds_to_input_dtype(u, *args):
        return scan_cpu.selective_scan_cpu(u, *args).to(u.dtype)

    monkeypatch.setitem(registry._loaded, "cpu", rounds_to_input_dtype)
    inputs = {k: v.half() for k, v in make_inputs(1, 1, 2, 4, 8).items()}
    with pytest.raises(RuntimeError, match="backend 'cpu' returned torch.float16 .* must return torch.float32"):
        selective_scan(*(inputs[k] for k in ARGS), delta_softplus=True, backend="cpu")


def test_cpu_chunk_size_does_not_change_results(monkeypatch):
    inputs = make_inputs(1, 2, 3, 4, 29, seed=7)
    want = run(scan_cpu.selective_scan_cpu, inputs, True)
    for chunk in (1, 5, 64):
        monkeypatch.setattr(scan_cpu, "CHUNK", chunk)
        torch.testing.assert_close(run(scan_cpu.selective_scan_cpu, inputs, True), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile_elements", [8, 24, 48], ids=["sub-group", "one-group", "two-groups"])
def test_cpu_tiles_over_batch_and_channels_match_reference(monkeypatch, tile_elements):
    # N=4, D/G=6: tiles of 2 channels inside a group, of one group, or of two groups x 1 batch row.
    monkeypatch.setattr(scan_cpu, "TILE_ELEMENTS", tile_elements)
    inputs = make_inputs(3, 4, 6, 4, 21, seed=11)
    tiles = scan_cpu._tiles(3, 24, 4, 4)
    assert len(tiles) == {8: 36, 24: 12, 48: 6}[tile_elements]
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    ref_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = run(scan_cpu.selective_scan_cpu, leaves, True)
    y_ref = run(selective_scan_reference, ref_leaves, True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, ref_leaves[name].grad, rtol=1e-9, atol=1e-10, msg=name)


def test_cpu_long_sequence_with_strong_decay_stays_finite():
    # Large delta * |A| drives the cumulative decay far below float32's range within a chunk:
    # a cumsum/exp(-cumsum) rewrite would overflow here, the step-wise recurrence must not.
    inputs = make_inputs(1, 1, 4, 4, 200, seed=9)
    inputs["delta"] = inputs["delta"].abs() * 20 + 5
    inputs = {k: v.float() for k, v in inputs.items()}
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    y = run(scan_cpu.selective_scan_cpu, leaves, True)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(v.grad).all() for v in leaves.values())
    want = run(selective_scan_reference, {k: v.detach().double() for k, v in inputs.items()}, True)
    torch.testing.assert_close(y.detach().double(), want, rtol=1e-4, atol=1e-4)


def test_cpu_without_grad_keeps_no_graph():
    inputs = make_inputs(1, 2, 2, 4, 20)
    with torch.inference_mode():
        y = run(scan_cpu.selective_scan_cpu, inputs, False)
    assert not y.requires_grad
    torch.testing.assert_close(y, run(selective_scan_reference, inputs, False), rtol=1e-10, atol=1e-10)


def test_auto_picks_native_then_numba_backend_for_cpu_tensors_and_falls_back_to_cpu(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    expected = "native" if "native" in registry.available_backends("cpu") else "numba"
    assert resolve_backend("auto", "cpu") == expected
    # Where the native kernel does not build (no compiler), "auto" takes numba (see test_scan_native for the real
    # missing-compiler case)...
    monkeypatch.setitem(registry._unavailable, "native", "scan backend 'native' does not build")
    monkeypatch.delitem(registry._loaded, "native", raising=False)
    assert resolve_backend("auto", "cpu") == "numba"
    # ... and where numba does not import either, the chunked eager kernel.
    monkeypatch.setitem(registry._unavailable, "numba", "scan backend 'numba' cannot be imported: no numba")
    monkeypatch.delitem(registry._loaded, "numba")
    assert resolve_backend("auto", "cpu") == "cpu"


def test_entry_point_dispatches_to_named_backend(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    inputs = make_inputs(1, 2, 2, 4, 10)
    calls = []
    auto = resolve_backend("auto", "cpu")
    real = registry.load_backend(auto)

    def spy(*args):
        calls.append(args)
        return real(*args)

    # The registry looks the function up on first load; spy on the cached entry for this test only.
    monkeypatch.setitem(registry._loaded, auto, spy)
    y = selective_scan(**inputs, delta_softplus=True)
    assert len(calls) == 1
    torch.testing.assert_close(y, run(selective_scan_reference, inputs, True), rtol=1e-10, atol=1e-10)
    selective_scan(**inputs, delta_softplus=True, backend="reference")
    assert len(calls) == 1


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_backend("auto", "cpu") == "reference"
    assert resolve_backend("cpu", "cpu") == "cpu"  # an explicit argument beats the environment
    calls = []
    registry.load_backend("reference")
    real = registry._loaded["reference"]
    monkeypatch.setitem(registry._loaded, "reference", lambda *a: calls.append(1) or real(*a))
    selective_scan(**make_inputs(1, 1, 2, 2, 5))
    assert calls == [1]


def test_bad_backend_name_errors(monkeypatch):
    inputs = make_inputs(1, 1, 2, 2, 5)
    with pytest.raises(ValueError, match="unknown scan backend 'fastest'.*choose one of"):
        selective_scan(**inputs, backend="fastest")
    monkeypatch.setenv(ENV_VAR, "nope")
    with pytest.raises(ValueError, match=f"unknown scan backend 'nope'.*{ENV_VAR}"):
        selective_scan(**inputs)


def test_shape_errors_name_the_tensor():
    inputs = make_inputs(1, 2, 2, 4, 10)
    inputs["B"] = inputs["B"][..., :9]
    with pytest.raises(ValueError, match=r"B must be \(batch=1, G, N=4, L=10\)"):
        selective_scan(**inputs, backend="cpu")


def test_ordered_scan_runs_on_every_backend_and_checks_its_shapes():
    from sigma_core.ops import cross_scan_order, selective_scan_ordered

    g = torch.Generator().manual_seed(13)
    batch, k, dim, n, height, width = 1, 4, 3, 4, 3, 4
    positions = height * width
    args = (torch.randn(batch, dim, positions, generator=g), torch.randn(batch, k * dim, positions, generator=g),
            -torch.rand(k * dim, n, generator=g) - 0.1, torch.randn(batch, k, n, positions, generator=g),
            torch.randn(batch, k, n, positions, generator=g), torch.randn(k * dim, generator=g),
            torch.randn(k * dim, generator=g))
    order = cross_scan_order(height, width)
    want = selective_scan_ordered(*(a.double() for a in args), True, order, backend="reference")  # gathered copies
    for backend in registry.available_backends("cpu"):
        got = selective_scan_ordered(*args, True, order, backend=backend)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=backend)
    with pytest.raises(ValueError, match=r"do not fit order \(4, 11\)"):
        selective_scan_ordered(*args, True, order[:, :11])


def test_an_order_checked_once_is_checked_again_after_an_in_place_change():
    from sigma_core.ops.cross_scan import cross_scan_order
    from sigma_core.ops.selective_scan import check_order_permutes

    order = cross_scan_order(3, 4).clone()
    check_order_permutes(order, 12)
    check_order_permutes(order, 12)  # the remembered pass
    with pytest.raises(ValueError, match="must hold positions 0..10"):
        check_order_permutes(order, 11)  # another map size is checked anew
    order[0, 0] = order[0, 1]  # a repeated position: output left unwritten
    with pytest.raises(ValueError, match="each row a permutation"):
        check_order_permutes(order, 12)
