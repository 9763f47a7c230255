"""The native (C++) scan forward: against the float64 reference and the numba kernel over numba's own test cases,
and how it is built, cached, rebuilt and replaced by numba where it cannot be built."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading

import pytest
import torch

from sigma_core import native_kernel
from sigma_core.ops.cross_scan import concat_scan_order, cross_scan_order
from sigma_core.ops.selective_scan import selective_scan, selective_scan_reference

registry = importlib.import_module("sigma_core.ops.selective_scan")

scan_numba = pytest.importorskip("sigma_core.ops.scan_numba")
try:
    from sigma_core.ops import scan_native
except registry.BackendUnavailable as err:  # no C++ compiler here: the fallback test below still runs
    scan_native, NATIVE_MISSING = None, str(err)

from test_scan_numba import SHAPES, assert_relative, ordered_inputs  # noqa: E402
from test_selective_scan import ARGS, make_inputs, run  # noqa: E402

needs_native = pytest.mark.skipif(scan_native is None, reason="the native scan does not build here")


def native(inputs, softplus):
    with torch.no_grad():
        return run(scan_native.selective_scan_native, inputs, softplus)


def numba(inputs, softplus):
    with torch.no_grad():
        return run(scan_numba.selective_scan_numba, inputs, softplus)


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}g{}c{}n{}l{}".format(*s))
@pytest.mark.parametrize("skip,bias,softplus", [(True, True, True), (False, False, False)])
def test_forward_matches_float64_reference_and_numba(shape, skip, bias, softplus):
    inputs = make_inputs(*shape, seed=sum(shape), skip=skip, bias=bias)
    if not softplus:  # positive steps, as softplus would give: a negative one grows the state without bound
        inputs["delta"] = inputs["delta"].abs() * 0.3
    want = run(selective_scan_reference, inputs, softplus)
    inputs32 = {k: v.float() if v is not None else None for k, v in inputs.items()}
    got = native(inputs32, softplus)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert_relative(got, want, 1e-5, "y vs float64")
    assert_relative(got, numba(inputs32, softplus).double(), 1e-5, "y vs numba")


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_read_directly_and_give_float32(dtype):
    inputs = {k: v.to(dtype) for k, v in make_inputs(2, 2, 20, 16, 70, seed=6).items()}
    inputs["u"][0, 3, 5] = 3e-6  # a float16 subnormal (bfloat16: a normal number), read exactly
    want = run(selective_scan_reference, {k: v.double() for k, v in inputs.items()}, True)
    got = native(inputs, True)
    assert got.dtype == torch.float32
    assert_relative(got, want, 1e-5, "y")
    torch.testing.assert_close(got, numba(inputs, True), rtol=1e-5, atol=1e-5 * want.abs().max().item())


@needs_native
def test_strided_and_channels_last_inputs_match_contiguous_ones():
    inputs = make_inputs(2, 4, 40, 16, 50, seed=8, dtype=torch.float32)
    # The layouts the model produces: B and C as slices of one projection, u and delta channels-last views.
    proj = torch.cat([inputs["B"], inputs["C"]], dim=2)
    strided = dict(inputs, B=proj[:, :, :16], C=proj[:, :, 16:],
                   u=inputs["u"].transpose(1, 2).contiguous().transpose(1, 2),
                   delta=torch.stack([inputs["delta"]] * 2, dim=-1)[..., 0])
    assert not any(strided[k].is_contiguous() for k in ("u", "delta", "B", "C"))
    y_c, y_s = native(inputs, True), native(strided, True)
    assert y_s.stride(1) == 1 and y_c.is_contiguous()  # output laid out like u
    torch.testing.assert_close(y_s, y_c, rtol=0, atol=0)


@needs_native
def test_extreme_decay_and_steps_stay_finite_and_exact():
    inputs = make_inputs(1, 1, 20, 4, 200, seed=9)
    inputs["delta"] = inputs["delta"].abs() * 20 + 5  # exp(delta * A) far below float32's range
    inputs["delta"][..., 50] = 1e30  # delta * A = -inf in float32: the state is forgotten (0), never NaN
    inputs["u"][..., 7] = 1e4
    inputs32 = {k: v.float() for k, v in inputs.items()}
    got = native(inputs32, True)
    assert torch.isfinite(got).all()
    assert_relative(got, run(selective_scan_reference, inputs, True), 1e-5)


@needs_native
@pytest.mark.parametrize("height,width,channels", [(3, 5, 6), (4, 4, 40), (1, 7, 17), (9, 13, 32)])
def test_cross_scan_by_index_matches_numba_for_both_map_layouts(height, width, channels):
    inputs = ordered_inputs(2, 4, channels, 16, height * width, seed=height * width)
    order = cross_scan_order(height, width)
    with torch.no_grad():
        want = scan_numba.selective_scan_ordered_numba(*(inputs[k] for k in ARGS), True, order)
        got = scan_native.selective_scan_ordered_native(*(inputs[k] for k in ARGS), True, order)
        channels_last = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
        got_last = scan_native.selective_scan_ordered_native(channels_last, *(inputs[k] for k in ARGS[1:]), True,
                                                             order)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert_relative(got, want.double(), 1e-5, "y")
    assert got_last.stride(1) == 1
    torch.testing.assert_close(got_last, got, rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("direction", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", ["positions-contiguous", "channels-last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_cross_scan_direction_equals_the_plain_scan_of_its_copied_sequence(direction, layout, dtype):
    # Rows of 24 positions hold whole 16-step runs (read as tiles, forwards and backwards); the column-major
    # directions jump 24 positions a step (inputs copied into step order first); 40 channels: two full blocks
    # of 16 and one of 8. The arithmetic is the same as on the copied sequence, so the result is bit-equal.
    height, width = 13, 24
    order = cross_scan_order(height, width)[direction:direction + 1]
    inputs = ordered_inputs(2, 1, 40, 16, height * width, seed=direction, dtype=dtype)
    if layout == "channels-last":
        inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    copied = dict(inputs, **{k: inputs[k][..., order[0]].contiguous() for k in ("u", "delta", "B", "C")})
    with torch.no_grad():
        got = scan_native.selective_scan_ordered_native(*(inputs[k] for k in ARGS), True, order)
        sequence = native(copied, True)
    want = torch.empty_like(sequence)
    want[..., order[0]] = sequence
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("swap_c", [False, True])
def test_two_way_order_with_swapped_c_matches_numba(swap_c):
    inputs = ordered_inputs(1, 2, 5, 4, 18, seed=11)
    order = concat_scan_order(9)
    with torch.no_grad():
        want = scan_numba.selective_scan_ordered_numba(*(inputs[k] for k in ARGS), True, order, swap_c=swap_c)
        got = scan_native.selective_scan_ordered_native(*(inputs[k] for k in ARGS), True, order, swap_c=swap_c)
    assert_relative(got, want.double(), 1e-5, "y")


@needs_native
@pytest.mark.parametrize("batch, groups, per_group", [(3, 2, 20), (1, 3, 80), (1, 3, 100)])
@pytest.mark.parametrize("factors", [False, True], ids=["delta", "delta_factors"])
def test_two_threads_and_several_python_threads_give_the_same_result(batch, groups, per_group, factors):
    inputs = make_inputs(batch, groups, per_group, 4, 70, seed=12, dtype=torch.float32)
    if factors:  # each job reads its set's factors and forms its channels' delta itself
        inputs["delta"] = low_rank_factors(batch, groups, per_group, 5, 70, seed=12)
    one = native(inputs, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = native(inputs, True)
        results = [None] * 3

        def call(i):
            results[i] = native(inputs, True)

        workers = [threading.Thread(target=call, args=(i,)) for i in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(two, one, rtol=0, atol=0)
    for r in results:
        torch.testing.assert_close(r, one, rtol=0, atol=0)


@needs_native
def test_gradients_and_float64_run_on_numba_and_auto_names_native(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert registry.resolve_backend("auto", "cpu") == "native"
    inputs = make_inputs(1, 2, 20, 4, 70, seed=3, dtype=torch.float32)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = selective_scan(*(leaves[k] for k in ARGS), delta_softplus=True, backend="native")
    y.square().sum().backward()  # numba's forward and backward, so that they match
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in leaves.values())
    torch.testing.assert_close(y.detach(), run(scan_numba.selective_scan_numba, inputs, True), rtol=0, atol=0)
    y64 = selective_scan(*(inputs[k].double() for k in ARGS), delta_softplus=True, backend="native")
    assert y64.dtype == torch.float64


def test_without_a_compiler_auto_takes_numba_and_says_why_in_one_line(tmp_path):
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
            "from sigma_core.ops.selective_scan import resolve_backend\n"
            "print('chosen', resolve_backend('auto', 'cpu'))")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), SIGMA_NATIVE_CACHE_DIR=str(tmp_path / "native"),
               OMP_NUM_THREADS="1")
    env.pop(registry.ENV_VAR, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "chosen numba" in out.stdout
    lines = [line for line in out.stderr.splitlines() if "'native'" in line]
    assert len(lines) == 1 and "no-such-c++" in lines[0] and "does not run" in lines[0], out.stderr
    assert lines[0].endswith("; the numba scan is used instead"), out.stderr
    assert "uses backend 'numba'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "native").exists() or not list((tmp_path / "native").iterdir())


@needs_native
def test_a_damaged_library_is_rebuilt_by_two_processes_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SIGMA_NATIVE_CACHE_DIR", str(tmp_path))
    path = native_kernel._library_path(native_kernel.compiler(), native_kernel.FLAGS + native_kernel.HOST_FLAGS)
    path.write_bytes(b"not a shared library" * 100)  # damaged: a full disk, a copy cut short
    code = ("import torch; from sigma_core.ops.scan_native import selective_scan_native as scan\n"
            "u = torch.randn(1, 16, 5); print(scan(u, u, -torch.ones(16, 4), torch.ones(1, 1, 4, 5),"
            " torch.ones(1, 1, 4, 5)).shape)")
    env = dict(os.environ, SIGMA_NATIVE_CACHE_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    # Both find the damaged file and rebuild it at the same time: each must load a whole library.
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "torch.Size([1, 16, 5])" in stdout, stderr
        assert stderr.count("does not load") == 1 and "building it again" in stderr, stderr
    assert list(tmp_path.iterdir()) == [path] and path.stat().st_size > 2000  # no temporary file left


@needs_native
def test_an_order_outside_the_map_is_refused_not_read():
    inputs = ordered_inputs(1, 2, 5, 4, 18, seed=11)
    order = concat_scan_order(9).clone()
    order[1, 3] = 18  # one past the last position: would read and write outside the tensors
    with pytest.raises(ValueError, match="must hold positions 0..17"):
        scan_native.selective_scan_ordered_native(*(inputs[k] for k in ARGS), True, order)


def low_rank_factors(batch, k, dim, rank, positions, seed, dtype=torch.float32):
    """delta's factors as the model makes them: low a slice of a wider (batch, P, K, R + 8) projection, weight
    (K, D, R) float32."""
    g = torch.Generator().manual_seed(seed)
    projection = torch.randn(batch, positions, k, rank + 8, generator=g)
    weight = torch.randn(k, dim, rank, generator=g) / rank ** 0.5
    return registry.LowRankDelta(projection[..., 3:3 + rank].to(dtype), weight)


@needs_native
@pytest.mark.parametrize("rank", [1, 3, 16, 48])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_delta_as_factors_equals_the_scan_of_the_written_out_delta(rank, dtype):
    # The kernel forms delta from its factors as it scans (float32 products of the inputs as read); the result must
    # be the scan of the dense product, for the grouped scan (CroMB) and for a map's directions (SS2D's cross scan:
    # the column-major ones copy their rows into step order, the factors are read in place); 40 channels: blocks of
    # 16, 16 and 8.
    height, width, dim = 5, 24, 40
    factors = low_rank_factors(2, 4, dim, rank, height * width, seed=rank, dtype=dtype)
    assert factors.shape == factors.dense().shape == (2, 4 * dim, height * width)
    dense64 = registry.LowRankDelta(factors.low.double(), factors.weight.double()).dense()
    grouped = make_inputs(2, 4, dim, 16, height * width, seed=rank, dtype=torch.float32)
    grouped = {k: (v.to(dtype) if k in ("u", "B", "C") else v) for k, v in grouped.items()}
    order = cross_scan_order(height, width)
    mapped = ordered_inputs(2, 4, dim, 16, height * width, seed=rank + 1, dtype=dtype)
    with torch.no_grad():
        got = scan_native.selective_scan_native(*(dict(grouped, delta=factors)[k] for k in ARGS), True)
        want = run(selective_scan_reference, {k: v.double() for k, v in dict(grouped, delta=dense64).items()}, True)
        got_map = scan_native.selective_scan_ordered_native(*(dict(mapped, delta=factors)[k] for k in ARGS), True,
                                                            order)
        want_map = registry.selective_scan_ordered(
            *({k: v.double() for k, v in dict(mapped, delta=dense64).items()}[k] for k in ARGS), True, order,
            backend="reference")
    assert got.dtype == got_map.dtype == torch.float32
    assert_relative(got, want, 1e-5, "grouped scan vs float64")
    assert_relative(got_map, want_map, 1e-5, "map directions vs float64")
    if dtype == torch.float32:  # and against the kernel reading the written-out delta
        with torch.no_grad():
            dense = scan_native.selective_scan_native(*(dict(grouped, delta=factors.dense())[k] for k in ARGS), True)
        assert_relative(got, dense.double(), 1e-5, "factors vs written out")


@needs_native
def test_delta_factors_go_dense_to_backends_that_do_not_read_them_and_carry_gradients():
    factors = low_rank_factors(1, 2, 20, 4, 30, seed=5)
    inputs = make_inputs(1, 2, 20, 4, 30, seed=5, dtype=torch.float32)
    with torch.no_grad():
        by_factors = selective_scan(*(dict(inputs, delta=factors)[k] for k in ARGS), delta_softplus=True,
                                    backend="native")
        for backend in ("numba", "cpu", "reference"):  # handed factors.dense() by the dispatcher
            y = selective_scan(*(dict(inputs, delta=factors)[k] for k in ARGS), delta_softplus=True, backend=backend)
            assert_relative(y.double(), by_factors.double(), 1e-5, backend)
    # Training: the native backend hands the call to numba, and the gradient reaches both factors.
    low = factors.low.detach().clone().requires_grad_()
    weight = factors.weight.detach().clone().requires_grad_()
    y = selective_scan(*(dict(inputs, delta=registry.LowRankDelta(low, weight))[k] for k in ARGS),
                       delta_softplus=True, backend="native")
    y.square().sum().backward()
    dense = registry.LowRankDelta(low.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_())
    want = selective_scan(*(dict(inputs, delta=dense.dense())[k] for k in ARGS), delta_softplus=True, backend="numba")
    want.square().sum().backward()
    torch.testing.assert_close(y.detach(), want.detach(), rtol=0, atol=0)
    torch.testing.assert_close(low.grad, dense.low.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, dense.weight.grad, rtol=1e-5, atol=1e-6)


@needs_native
def test_delta_factors_that_do_not_fit_are_refused_or_written_out():
    with pytest.raises(ValueError, match=r"low must be \(batch, P, K, R\) and weight \(K, D, R\)"):
        registry.LowRankDelta(torch.zeros(1, 30, 2, 4), torch.zeros(3, 20, 4))
    with pytest.raises(ValueError, match="u and delta must both be"):  # 2 x 12 channels of delta for 20 of u
        selective_scan(torch.zeros(1, 20, 30), registry.LowRankDelta(torch.zeros(1, 30, 2, 4), torch.zeros(2, 12, 4)),
                       -torch.ones(20, 4), torch.zeros(1, 2, 4, 30), torch.zeros(1, 2, 4, 30), backend="native")
    # Factors of K = 4 for a scan of G = 2 groups: written out (the kernel reads factor k for set k).
    factors = low_rank_factors(1, 4, 10, 3, 30, seed=9)
    inputs = make_inputs(1, 2, 20, 4, 30, seed=9, dtype=torch.float32)
    with torch.no_grad():
        got = selective_scan(*(dict(inputs, delta=factors)[k] for k in ARGS), delta_softplus=True, backend="native")
        want = selective_scan(*(dict(inputs, delta=factors.dense())[k] for k in ARGS), delta_softplus=True,
                              backend="native")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_native
def test_delta_factors_of_another_split_or_of_rank_zero_are_written_out_not_misread():
    # 4 x 10 channels as factors of K = 2 directions x 20: the same (batch, 40, P) delta, but the kernel would read
    # factors 2 and 3 past low's end; rank 0: delta 0 (a null pointer for the kernel).
    order = cross_scan_order(5, 6)
    inputs = ordered_inputs(1, 4, 10, 4, 30, seed=4)
    for factors in (low_rank_factors(1, 2, 20, 3, 30, seed=4), low_rank_factors(1, 4, 10, 0, 30, seed=4)):
        with torch.no_grad():
            got = scan_native.selective_scan_ordered_native(*(dict(inputs, delta=factors)[k] for k in ARGS), True,
                                                            order)
            want = scan_native.selective_scan_ordered_native(*(dict(inputs, delta=factors.dense())[k] for k in ARGS),
                                                             True, order)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_native
@pytest.mark.parametrize("delta", ["factors of one batch row", "written out, one batch row", "factors of 31 positions"])
def test_a_direct_call_with_delta_that_does_not_fit_is_refused_before_the_kernel_reads(delta):
    # selective_scan_native called directly, not through selective_scan: the kernel would read row 1 of a delta that
    # has one, past its end.
    inputs = make_inputs(2, 4, 20, 16, 30, seed=3, dtype=torch.float32)
    delta = {"factors of one batch row": low_rank_factors(1, 4, 5, 3, 30, seed=3),
             "written out, one batch row": torch.randn(1, 20, 30),
             "factors of 31 positions": low_rank_factors(2, 4, 5, 3, 31, seed=3)}[delta]
    with torch.no_grad(), pytest.raises(ValueError, match="u and delta must both be"):
        scan_native.selective_scan_native(*(dict(inputs, delta=delta)[k] for k in ARGS), True)


@needs_native
def test_integer_factors_or_two_devices_are_refused_and_a_backend_called_directly_with_factors_says_so():
    # dense() casts the weights to low's dtype: integer factors would have cut them to integers, and numba scanned
    # the result without a word.
    with pytest.raises(ValueError, match="must be floating point; got torch.int64"):
        registry.LowRankDelta(torch.ones(1, 30, 2, 4, dtype=torch.int64), torch.randn(2, 10, 4))
    # A weight left on 'meta' (a model built there, a checkpoint without the key): torch's matmul of a CPU low by it
    # returns uninitialised CPU memory, which numba scanned.
    with pytest.raises(ValueError, match="must be on one device; got cpu and meta"):
        registry.LowRankDelta(torch.ones(1, 30, 2, 4), torch.randn(2, 10, 4, device="meta"))
    # Only the dispatcher hands a backend that does not read factors their dense(); its own function named them not.
    factors = low_rank_factors(1, 2, 10, 4, 30, seed=6)
    inputs = make_inputs(1, 2, 20, 4, 30, seed=6, dtype=torch.float32)
    with torch.no_grad(), pytest.raises(AttributeError, match="LowRankDelta has no 'dtype'.*pass it to selective_scan"):
        scan_numba.selective_scan_numba(*(dict(inputs, delta=factors)[k] for k in ARGS), True)
    assert not hasattr(factors, "dtype") and not hasattr(factors, "no_such_name")


@needs_native
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_factor_stays_in_its_direction_in_the_kernel(bad):
    # The kernel forms each direction's delta from that direction's factors only; dense()'s block-diagonal zeros
    # would carry NaN into every direction at that position (see LowRankDelta.dense).
    factors = low_rank_factors(1, 4, 20, 3, 30, seed=8)
    inputs = make_inputs(1, 4, 20, 16, 30, seed=8, dtype=torch.float32)
    low = factors.low.clone()
    low[0, 7, 1, 2] = bad  # direction 1, position 7
    with torch.no_grad():
        clean = scan_native.selective_scan_native(*(dict(inputs, delta=factors)[k] for k in ARGS), True)
        got = scan_native.selective_scan_native(
            *(dict(inputs, delta=registry.LowRankDelta(low, factors.weight))[k] for k in ARGS), True)
    others = torch.cat([torch.arange(0, 20), torch.arange(40, 80)])
    torch.testing.assert_close(got[:, others], clean[:, others], rtol=0, atol=0)
    assert not torch.isfinite(got[0, 20:40, 7:]).all()
