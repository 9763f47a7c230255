"""The fused numba scan against the float64 reference: forward, gradients, dtypes, strides, scan orders.

numba compiles each kernel once per dtype (10-30 s on a loaded 2-core machine) and keeps it in the user's
cache directory, so later runs load it in a fraction of a second.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sigma_core.ops.cross_scan import (
    concat_merge,
    concat_scan,
    concat_scan_order,
    cross_merge,
    cross_scan,
    cross_scan_order,
)
from sigma_core.ops.selective_scan import selective_scan, selective_scan_reference

scan_numba = pytest.importorskip("sigma_core.ops.scan_numba")

from test_selective_scan import ARGS, make_inputs, run  # noqa: E402

numba_scan = scan_numba.selective_scan_numba


def leaves_of(inputs, dtype=None):
    return {k: (v.to(dtype) if dtype else v).detach().clone().requires_grad_() for k, v in inputs.items()
            if v is not None}


def grads(y, leaves, weight):
    return torch.autograd.grad((y.double() * weight).sum(), list(leaves.values()))


def assert_relative(got, want, tol, name=""):
    """max |got - want| <= tol * max |want|: float32 against float64."""
    scale = max(want.abs().max().item(), 1e-30)
    err = (got.double() - want).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


# (batch, G, D/G, N, L): odd lengths, L=1, chunk ends (64), blocks not filled (D/G < 16 or 20), N 4 and 16;
# D/G = 128: the 64-channel blocks the model's scans run in (two per group).
SHAPES = [(1, 1, 3, 4, 1), (2, 2, 5, 4, 37), (1, 4, 20, 16, 130), (2, 4, 3, 16, 64), (1, 2, 17, 4, 65),
          (1, 2, 128, 16, 70)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}g{}c{}n{}l{}".format(*s))
@pytest.mark.parametrize("skip,bias,softplus", [(True, True, True), (False, False, False)])
def test_float32_forward_and_gradients_match_float64_reference(shape, skip, bias, softplus):
    inputs = make_inputs(*shape, seed=sum(shape), skip=skip, bias=bias)
    if not softplus:  # positive steps, as softplus would give: a negative one grows the state without bound
        inputs["delta"] = inputs["delta"].abs() * 0.3
    leaves64, leaves32 = leaves_of(inputs), leaves_of(inputs, torch.float32)
    y64 = run(selective_scan_reference, {**inputs, **leaves64}, softplus)
    y32 = run(numba_scan, {**inputs, **leaves32}, softplus)
    assert y32.dtype == torch.float32 and y32.shape == y64.shape
    assert_relative(y32, y64, 1e-5, "y")
    weight = torch.randn(y64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, got, want in zip(leaves32, grads(y32, leaves32, weight), grads(y64, leaves64, weight)):
        assert got.dtype == torch.float32
        assert_relative(got, want, 2e-5, f"d{name}")


def test_float64_inputs_are_computed_in_float64_and_pass_gradcheck():
    inputs = make_inputs(1, 2, 3, 4, 70, seed=4)  # 70 steps: two chunks, so saved states are used
    leaves, ref_leaves = leaves_of(inputs), leaves_of(inputs)
    y, y_ref = run(numba_scan, leaves, True), run(selective_scan_reference, ref_leaves, True)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    small = {k: v[..., :9] if v.dim() >= 3 else v for k, v in make_inputs(1, 2, 2, 3, 9, seed=5).items()}
    leaves = [v.clone().requires_grad_() for v in small.values()]
    assert torch.autograd.gradcheck(lambda *xs: numba_scan(*xs, delta_softplus=True), leaves)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_read_directly_and_give_float32(dtype):
    # Half inputs are exactly representable in float64: the only error left is float32 arithmetic.
    inputs = {k: v.to(dtype) for k, v in make_inputs(2, 2, 20, 16, 70, seed=6).items()}
    want = run(selective_scan_reference, {k: v.double() for k, v in inputs.items()}, True)
    leaves = leaves_of(inputs)
    got = run(numba_scan, leaves, True)
    assert got.dtype == torch.float32
    assert_relative(got, want, 1e-5, "y")
    ref_leaves = {k: v.double().detach().requires_grad_() for k, v in inputs.items()}
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref_grads = grads(run(selective_scan_reference, ref_leaves, True), ref_leaves, weight)
    for name, got_g, want_g in zip(leaves, grads(got, leaves, weight), ref_grads):
        assert got_g.dtype == dtype  # gradients come back in each input's dtype
        assert_relative(got_g, want_g, 1e-2, f"d{name}")


def test_strided_inputs_match_contiguous_ones():
    inputs = make_inputs(2, 4, 6, 16, 50, seed=8, dtype=torch.float32)
    # The layouts the model produces: B and C as slices of one projection, u and delta transposed views.
    proj = torch.cat([inputs["B"], inputs["C"]], dim=2)
    strided = dict(inputs, B=proj[:, :, :16], C=proj[:, :, 16:],
                   u=inputs["u"].transpose(1, 2).contiguous().transpose(1, 2),
                   delta=torch.stack([inputs["delta"]] * 2, dim=-1)[..., 0])
    assert not any(strided[k].is_contiguous() for k in ("u", "delta", "B", "C"))
    leaves_c, leaves_s = leaves_of(inputs), leaves_of(strided)
    y_c, y_s = run(numba_scan, {**inputs, **leaves_c}, True), run(numba_scan, {**strided, **leaves_s}, True)
    torch.testing.assert_close(y_s, y_c, rtol=0, atol=0)
    weight = torch.randn(y_c.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for name, a, b in zip(leaves_c, grads(y_c, leaves_c, weight), grads(y_s, leaves_s, weight)):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_strong_decay_and_large_delta_stay_finite_and_accurate():
    inputs = make_inputs(1, 1, 4, 4, 200, seed=9)
    inputs["delta"] = inputs["delta"].abs() * 20 + 5  # exp(delta * A) far below float32's range
    inputs["u"][..., 7] = 1e4
    leaves = leaves_of(inputs, torch.float32)
    y = run(numba_scan, leaves, True)
    y.sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(v.grad).all() for v in leaves.values())
    assert_relative(y.detach(), run(selective_scan_reference, inputs, True), 1e-5)


# (batch, groups, channels per group): rows x blocks jobs; batch 1 with sets as separate jobs (3 sets x 5 blocks
# of 16, or x 2 blocks of 64 with a ragged last one)
@pytest.mark.parametrize("batch, groups, per_group", [(3, 2, 20), (1, 3, 80), (1, 3, 100)])
def test_several_threads_give_the_same_result(batch, groups, per_group):
    inputs = make_inputs(batch, groups, per_group, 4, 70, seed=12, dtype=torch.float32)
    leaves1, leaves2 = leaves_of(inputs), leaves_of(inputs)
    y1 = run(numba_scan, leaves1, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y2 = run(numba_scan, leaves2, True)
        y2.square().sum().backward()
    finally:
        torch.set_num_threads(threads)
    y1.square().sum().backward()
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    for name in leaves1:  # dB and dC sum the blocks' parts in another order: float32 rounding of the largest
        scale = leaves1[name].grad.abs().max().item()
        torch.testing.assert_close(leaves2[name].grad, leaves1[name].grad, rtol=1e-6, atol=1e-6 * scale, msg=name)


def test_without_grad_keeps_no_graph_and_saves_no_states():
    inputs = make_inputs(1, 2, 2, 4, 20, dtype=torch.float32)
    with torch.inference_mode():
        y = run(numba_scan, inputs, True)
    assert not y.requires_grad


def test_entry_point_runs_numba_backend_and_rejects_nothing_it_should_take():
    inputs = make_inputs(1, 2, 3, 4, 11, dtype=torch.float32)
    y = selective_scan(*(inputs[k] for k in ARGS), delta_softplus=True, backend="numba")
    assert_relative(y, run(selective_scan_reference, {k: v.double() for k, v in inputs.items()}, True), 1e-5)


# --- scan orders: the directions read by index, outputs merged in place ---------------------------------------


def ordered_inputs(batch, k, dim, n, positions, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, positions, generator=g).to(dtype),
        delta=(torch.randn(batch, k * dim, positions, generator=g) * 0.5 - 1).to(dtype),
        A=-(torch.rand(k * dim, n, generator=g) * 2 + 0.1),
        B=torch.randn(batch, k, n, positions, generator=g).to(dtype),
        C=torch.randn(batch, k, n, positions, generator=g).to(dtype),
        D=torch.randn(k * dim, generator=g),
        delta_bias=torch.randn(k * dim, generator=g) * 0.3,
    )


def direction_sequences(t, order):
    """(batch, C, P) in position order -> (batch, K*C, L): each direction's sequence (the copy the kernel avoids)."""
    return torch.cat([t[..., order[k]] for k in range(order.shape[0])], dim=1)


def per_direction(t, order, k_dim):
    """(batch, K*C, P) with direction k in rows k*C.. -> (batch, K*C, L) reordered per direction."""
    return torch.cat([t[:, k * k_dim:(k + 1) * k_dim][..., order[k]] for k in range(order.shape[0])], dim=1)


@pytest.mark.parametrize("height,width", [(3, 5), (4, 4), (1, 7)])
def test_cross_scan_by_index_matches_cross_scan_copies(height, width):
    dim, n = 6, 16
    inputs = ordered_inputs(2, 4, dim, n, height * width, seed=height * width)
    order = cross_scan_order(height, width)
    leaves, ref_leaves = leaves_of(inputs), leaves_of(inputs, torch.float64)
    got = scan_numba.selective_scan_ordered_numba(*(leaves[k] for k in ARGS), True, order)
    # The order is VMamba's cross scan, and the reference is the published path with its copies:
    # cross_scan, one grouped scan over the 4 sequences, cross_merge.
    x = ref_leaves["u"].detach().reshape(2, dim, height, width)
    assert torch.equal(direction_sequences(ref_leaves["u"].detach(), order), cross_scan(x).flatten(1, 2))
    Bs = torch.stack([ref_leaves["B"][:, k][..., order[k]] for k in range(4)], 1)
    Cs = torch.stack([ref_leaves["C"][:, k][..., order[k]] for k in range(4)], 1)
    ys = selective_scan_reference(direction_sequences(ref_leaves["u"], order),
                                  per_direction(ref_leaves["delta"], order, dim), ref_leaves["A"], Bs, Cs,
                                  ref_leaves["D"], ref_leaves["delta_bias"], delta_softplus=True)
    want = cross_merge(ys.unflatten(1, (4, dim)), height, width)
    assert got.shape == (2, dim, height * width) and got.dtype == torch.float32
    assert_relative(got, want, 1e-5, "y")
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for name, g, w in zip(leaves, grads(got, leaves, weight), grads(want, ref_leaves, weight)):
        assert_relative(g, w, 2e-5, f"d{name}")


@pytest.mark.parametrize("swap_c", [False, True])
def test_two_way_order_with_swapped_c_matches_concat_scan(swap_c):
    # ConMB: RGB-then-X sequence and its reverse; swap_c as in CroMB (direction k reads C of the other).
    dim, n, length = 5, 4, 9
    rgb, other = torch.randn(1, dim, 3, 3), torch.randn(1, dim, 3, 3)
    inputs = ordered_inputs(1, 2, dim, n, 2 * length, seed=11)
    inputs["u"] = torch.cat([rgb.flatten(2), other.flatten(2)], dim=-1)
    order = concat_scan_order(length)
    leaves, ref_leaves = leaves_of(inputs), leaves_of(inputs, torch.float64)
    got = scan_numba.selective_scan_ordered_numba(*(leaves[k] for k in ARGS), True, order, swap_c=swap_c)
    xs = concat_scan(rgb.double(), other.double())
    assert torch.equal(xs.flatten(1, 2), direction_sequences(ref_leaves["u"].detach(), order))
    Bs = torch.stack([ref_leaves["B"][:, k][..., order[k]] for k in range(2)], 1)
    Cs = torch.stack([ref_leaves["C"][:, k][..., order[k]] for k in range(2)], 1)
    if swap_c:
        Cs = torch.stack([ref_leaves["C"][:, 1 - k][..., order[k]] for k in range(2)], 1)
    ys = selective_scan_reference(direction_sequences(ref_leaves["u"], order),
                                  per_direction(ref_leaves["delta"], order, dim), ref_leaves["A"], Bs, Cs,
                                  ref_leaves["D"], ref_leaves["delta_bias"], delta_softplus=True)
    y_rgb, y_other = concat_merge(ys.unflatten(1, (2, dim)))
    want = torch.cat([y_rgb, y_other], dim=-1)
    assert_relative(got, want, 1e-5, "y")
    weight = torch.randn(want.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name, g, w in zip(leaves, grads(got, leaves, weight), grads(want, ref_leaves, weight)):
        assert_relative(g, w, 2e-5, f"d{name}")


# --- where compiled kernels live ------------------------------------------------------------------------------


def test_compiled_kernels_are_cached_in_the_user_cache_not_in_the_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    # numba imported first, as another library might: the cache still goes to the user's cache directory.
    code = "import numba, sigma_core.ops.scan_numba as s; print(numba.config.CACHE_DIR); print(s.cache_dir())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = str(tmp_path / "sigma_core" / "numba")
    assert out.stdout.split() == [expected, expected]
    # This session compiled kernels above: none of them went next to the source.
    package = Path(scan_numba.__file__).parent
    assert not list(package.rglob("*.nbi")) and not list(package.rglob("*.nbc"))


def test_numba_gets_512_bit_vectors_on_avx512_cpus_unless_the_user_chose_or_imported_it_first():
    import llvmlite.binding as llvm

    avx512 = bool(llvm.get_host_cpu_features().get("avx512f"))
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    show = "import numba; print(numba.config.CPU_NAME, numba.config.CPU_FEATURES)"

    def config(code, **extra):
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, **extra), capture_output=True, text=True,
                             check=True)
        return out.stdout.split()

    name, features = config("import sigma_core.ops.scan_numba; " + show)
    if avx512:
        assert name == llvm.get_host_cpu_name()
        assert "+avx512f" in features.split(",") and features.endswith(",-prefer-256-bit")
    else:
        assert [name, features] == ["None", "None"]
    # The user's own choice stands; so does numba's configuration when another library imported it first.
    assert config("import sigma_core.ops.scan_numba; " + show, NUMBA_CPU_NAME="generic")[0] == "generic"
    assert config("import numba, sigma_core.ops.scan_numba; " + show) == ["None", "None"]


def test_unwritable_cache_folder_still_runs_says_so_once_and_writes_nothing_in_the_package(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder under a file cannot be created, not even by root
    env = dict(os.environ, NUMBA_CACHE_DIR=str(blocker / "numba"), OMP_NUM_THREADS="1")
    code = ("import torch; from sigma_core.ops.scan_numba import selective_scan_numba as scan\n"
            "for _ in range(2):\n"
            "    u = torch.randn(1, 16, 5); print(scan(u, u, -torch.ones(16, 4), torch.ones(1, 1, 4, 5),"
            " torch.ones(1, 1, 4, 5)).shape)")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("torch.Size([1, 16, 5])") == 2
    assert out.stderr.count("cannot keep compiled scan kernels in") == 1, out.stderr
    assert "NUMBA_CACHE_DIR" in out.stderr
    # numba's own fallback would have put them next to the source, inside the installed package.
    package = Path(scan_numba.__file__).parent
    assert not list(package.rglob("*.nbi")) and not list(package.rglob("*.nbc"))


@pytest.mark.slow
def test_a_damaged_kernel_cache_is_recompiled_with_one_warning(tmp_path):
    """Issue 21, fault 4: a truncated .nbi or garbage .nbc was an UnpicklingError/EOFError traceback in every tool
    (and "configure failed" in the node) until the cache was deleted by hand."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), OMP_NUM_THREADS="1")
    code = ("import torch; from sigma_core.ops.scan_numba import selective_scan_numba as scan\n"
            "u = torch.randn(1, 16, 5); print(scan(u, u, -torch.ones(16, 4), torch.ones(1, 1, 4, 5),"
            " torch.ones(1, 1, 4, 5)).shape)")

    def run():
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)

    # The cache as a first process leaves it: this process runs the same scan (compiled, or loaded from the session's
    # cache) and its kernel folder is copied, sparing a cold compile (~15-25 s); the damage below forces two.
    u = torch.randn(1, 16, 5)
    scan_numba.selective_scan_numba(u, u, -torch.ones(16, 4), torch.ones(1, 1, 4, 5), torch.ones(1, 1, 4, 5))
    kernels = Path(scan_numba._forward_job._cache._cache_path)
    shutil.copytree(kernels, tmp_path / "numba" / kernels.name)
    for pattern, damage in (("*.nbi", lambda data: data[:20]), ("*.nbc", lambda data: b"garbage" * 10)):
        damaged = list((tmp_path / "numba").rglob(pattern))
        assert damaged, f"no {pattern} in the kernel cache {kernels}"
        for path in damaged:  # a truncated index, then garbage kernels
            path.write_bytes(damage(path.read_bytes()))
        out = run()
        assert out.returncode == 0 and "torch.Size([1, 16, 5])" in out.stdout, out.stderr
        assert out.stderr.count("cache of the selective-scan kernels in") == 1 and "compiling them again" in \
            out.stderr and "Traceback" not in out.stderr, out.stderr
    again = run()  # the cache was rewritten: no warning any more
    assert again.returncode == 0 and "damaged" not in again.stderr, again.stderr


def test_a_channels_last_map_gives_a_channels_last_output_equal_to_the_contiguous_one():
    """The model's maps come from a conv in channels-last memory: the ordered scan reads them as they are and
    writes its output in the same order, so that going back to (B, P, D) is a view; values are the same."""
    from sigma_core.ops.cross_scan import cross_scan_order
    from sigma_core.ops.scan_numba import selective_scan_ordered_numba

    g = torch.Generator().manual_seed(5)
    batch, dim, height, width, n, k = 2, 24, 5, 7, 4, 4
    positions = height * width
    channels_last = torch.randn(batch, height, width, dim, generator=g).permute(0, 3, 1, 2).flatten(2)
    assert channels_last.stride(1) == 1
    args = (torch.randn(batch, k * dim, positions, generator=g) * 0.5 - 2,
            -torch.rand(k * dim, n, generator=g) - 0.5, torch.randn(batch, k, n, positions, generator=g),
            torch.randn(batch, k, n, positions, generator=g), torch.randn(k * dim, generator=g),
            torch.randn(k * dim, generator=g) * 0.1, True, cross_scan_order(height, width, "cpu"))
    contiguous = channels_last.contiguous()
    channels_last.requires_grad_(True)
    contiguous.requires_grad_(True)
    y_last = selective_scan_ordered_numba(channels_last, *args)
    y_contiguous = selective_scan_ordered_numba(contiguous, *args)
    assert y_last.stride(1) == 1 and y_last.transpose(1, 2).is_contiguous()
    assert y_contiguous.is_contiguous()
    torch.testing.assert_close(y_last, y_contiguous, rtol=0, atol=0)
    weights = torch.randn(y_last.shape, generator=g)  # a gradient arriving in the other layout too
    (y_last * weights).sum().backward()
    (y_contiguous * weights).sum().backward()
    torch.testing.assert_close(channels_last.grad, contiguous.grad, rtol=1e-6, atol=1e-6)
