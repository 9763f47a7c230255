"""The Triton selective scan, run on CPU under Triton's interpreter, against the float64 reference.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so the fixture imports
``sigma_core.ops.scan_triton`` afresh with the variable set and puts back whatever was there
before: later tests in the same session get the normal (compiled, CUDA-only) module.
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

from sigma_core.ops.selective_scan import selective_scan_reference

pytest.importorskip("triton")

MODULE = "sigma_core.ops.scan_triton"
# The module as users get it (kernels compiled, not interpreted), taken before the fixture swaps it.
compiled_scan = importlib.import_module(MODULE)


@pytest.fixture(scope="module")
def scan_triton():
    saved = sys.modules.pop(MODULE, None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        module = importlib.import_module(MODULE)
        assert module.INTERPRETED, "the kernels were not decorated in interpreter mode"
        yield module
    sys.modules.pop(MODULE, None)
    package = sys.modules["sigma_core.ops"]
    if saved is not None:
        sys.modules[MODULE] = saved
        package.scan_triton = saved
    elif hasattr(package, "scan_triton"):
        del package.scan_triton


def make_inputs(batch, groups, per_group, n_state, length, seed=0, dtype=torch.float64):
    """Scan inputs with Sigma-like magnitudes: A = -exp(A_log) in [-2.1, -0.1], delta around softplus(0)."""
    g = torch.Generator().manual_seed(seed)
    dim = groups * per_group

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return dict(
        u=rnd(batch, dim, length),
        delta=rnd(batch, dim, length, scale=0.5),
        A=-(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 2 + 0.1),
        B=rnd(batch, groups, n_state, length),
        C=rnd(batch, groups, n_state, length),
        D=rnd(dim),
        delta_bias=rnd(dim, scale=0.3),
    )


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def run_both(scan_fn, inputs, softplus, with_grad=True, **kwargs):
    """(y, grads) of the Triton scan and of the float64 reference on the same (possibly rounded) inputs."""
    names = [k for k, v in inputs.items() if v is not None]
    fast = {k: (v.clone().requires_grad_(with_grad) if v is not None else None) for k, v in inputs.items()}
    ref = {k: (v.double().requires_grad_(with_grad) if v is not None else None) for k, v in inputs.items()}
    y = scan_fn(**fast, delta_softplus=softplus, **kwargs)
    y_ref = selective_scan_reference(**ref, delta_softplus=softplus)
    if not with_grad:
        return y, y_ref, {}, {}
    dy = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(y.dtype)
    grads = dict(zip(names, torch.autograd.grad(y, [fast[k] for k in names], dy)))
    grads_ref = dict(zip(names, torch.autograd.grad(y_ref, [ref[k] for k in names], dy.double())))
    return y, y_ref, grads, grads_ref


@pytest.mark.parametrize(
    "batch, groups, per_group, n_state, length, chunk, block_d, softplus, skip_and_bias",
    [
        # the Sigma configuration: softplus with bias, D skip, G = 2, last chunk partial
        (2, 2, 4, 4, 70, 32, 2, True, True),
        # no optional inputs, single group, state size not a power of two (padded lanes)
        (1, 1, 4, 3, 40, 16, 4, False, False),
        # one channel per program, several groups
        (1, 4, 1, 2, 24, 8, 1, True, True),
    ],
)
def test_float32_forward_and_backward_match_float64_reference(
    scan_triton, batch, groups, per_group, n_state, length, chunk, block_d, softplus, skip_and_bias
):
    inputs = make_inputs(batch, groups, per_group, n_state, length, dtype=torch.float32)
    if not skip_and_bias:
        inputs["D"] = inputs["delta_bias"] = None
    y, y_ref, grads, grads_ref = run_both(
        scan_triton.selective_scan_triton, inputs, softplus, chunk=chunk, block_d=block_d
    )
    assert y.dtype == torch.float32 and y.shape == (batch, groups * per_group, length)
    assert rel_err(y, y_ref) < 1e-5
    assert set(grads) == set(grads_ref)
    for name, grad in grads.items():
        assert grad.shape == inputs[name].shape and grad.dtype == inputs[name].dtype, name
        assert rel_err(grad, grads_ref[name]) < 2e-5, name


def test_sigma_state_size_16_with_default_block(scan_triton):
    """d_state 16 as in Sigma's encoder; block_d picked by the module."""
    inputs = make_inputs(1, 2, 2, 16, 20, seed=3, dtype=torch.float32)
    y, y_ref, grads, grads_ref = run_both(scan_triton.selective_scan_triton, inputs, True, chunk=16)
    assert rel_err(y, y_ref) < 1e-5
    for name in ("u", "delta", "A", "B", "C"):
        assert rel_err(grads[name], grads_ref[name]) < 2e-5, name


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_half_precision_inputs_keep_float32_state(scan_triton, dtype, tol):
    """u, delta, B, C in half precision: y is float32 (never rounded); gradients are rounded once, at the end."""
    inputs = make_inputs(1, 2, 2, 4, 48, seed=1, dtype=dtype)
    inputs.update(A=inputs["A"].float(), D=inputs["D"].float(), delta_bias=inputs["delta_bias"].float())
    y, y_ref, grads, grads_ref = run_both(scan_triton.selective_scan_triton, inputs, True, chunk=16, block_d=2)
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) < 1e-5
    for name, grad in grads.items():
        assert grad.dtype == inputs[name].dtype, name
        assert rel_err(grad, grads_ref[name]) < tol, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_output_beyond_the_half_range_stays_finite(scan_triton, dtype):
    """A trained encoder's scan output exceeds float16's 65504; y must come back float32, finite and right."""
    inputs = make_inputs(1, 2, 2, 16, 40, seed=6, dtype=torch.float64)
    inputs.update(A=torch.full_like(inputs["A"], -1e-3), u=inputs["u"].abs() * 20 + 20,
                  B=inputs["B"].abs() * 8 + 8, C=inputs["C"].abs() * 8 + 8)
    half = {k: (v.to(dtype) if k in ("u", "delta", "B", "C") else v.float()) for k, v in inputs.items()}
    y, y_ref, _, _ = run_both(scan_triton.selective_scan_triton, half, True, with_grad=False, chunk=16)
    assert y_ref.abs().max() > 2 * 65504
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert rel_err(y, y_ref) < 1e-5


def test_non_contiguous_inputs_give_the_same_result(scan_triton):
    inputs = make_inputs(2, 2, 2, 4, 24, seed=2, dtype=torch.float32)
    y_contig = scan_triton.selective_scan_triton(**inputs, delta_softplus=True, chunk=8)
    strided = dict(inputs)
    # u stored (batch, L, D) and viewed as (batch, D, L); B taken every other row of a larger buffer
    strided["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    big_b = torch.zeros(2, 4, 4, 24)
    big_b[:, ::2] = inputs["B"]
    strided["B"] = big_b[:, ::2]
    strided["C"] = inputs["C"].flip(-1).contiguous().flip(-1)  # contiguous again; a copy-free check
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    y_strided = scan_triton.selective_scan_triton(**strided, delta_softplus=True, chunk=8)
    torch.testing.assert_close(y_strided, y_contig, rtol=0, atol=0)


def test_no_grad_forward_skips_checkpoints_and_still_matches(scan_triton):
    inputs = make_inputs(1, 1, 2, 4, 33, seed=4, dtype=torch.float32)
    with torch.no_grad():
        y = scan_triton.selective_scan_triton(**inputs, delta_softplus=True, chunk=16)
    y_ref = selective_scan_reference(**{k: v.double() for k, v in inputs.items()}, delta_softplus=True)
    assert rel_err(y, y_ref) < 1e-5


def test_backward_takes_a_broadcast_output_gradient(scan_triton):
    """y.sum().backward() hands the kernel a stride-0 gradient."""
    inputs = make_inputs(1, 2, 1, 2, 20, seed=5, dtype=torch.float32)
    u = inputs["u"].requires_grad_()
    scan_triton.selective_scan_triton(**inputs, delta_softplus=True, chunk=8).sum().backward()
    u_ref = inputs["u"].detach().double().requires_grad_()
    ref_in = {k: v.detach().double() for k, v in inputs.items() if k != "u"}
    selective_scan_reference(u=u_ref, **ref_in, delta_softplus=True).sum().backward()
    assert rel_err(u.grad, u_ref.grad) < 1e-5


def test_rejects_what_the_kernel_cannot_do(scan_triton):
    inputs = make_inputs(1, 1, 6, 2, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="block_d=4"):
        scan_triton.selective_scan_triton(**inputs, block_d=4)
    with pytest.raises(ValueError, match="chunk=12"):
        scan_triton.selective_scan_triton(**inputs, chunk=12)
    with pytest.raises(ValueError, match="float64"):
        scan_triton.selective_scan_triton(**make_inputs(1, 1, 2, 2, 8))
    with pytest.raises(ValueError, match=r"A must be \(D=6, N\)"):
        scan_triton.selective_scan_triton(**{**inputs, "A": inputs["A"][:3]})


def test_block_size_heuristic_divides_groups_and_fills_the_gpu(scan_triton):
    # Sigma-T stage 0: D = 4 * 192 channels, 192 per group, batch 1 -> small blocks for enough programs
    block = scan_triton._block_d(768, 192, 1)
    assert 192 % block == 0 and 768 // block >= 256
    assert scan_triton._block_d(4 * 1536, 1536, 8) == scan_triton.MAX_BLOCK_D
    assert scan_triton._block_d(12, 3, 64) == 1  # odd group size: one channel per program


def _signature(kernel, pointer_dtype: str, constexprs: dict) -> dict:
    """Triton signature: pointers of the u/delta/B/C family in ``pointer_dtype``, y/dy and the others fp32, ints i32."""
    io = ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "du_ptr", "ddelta_ptr")
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + (pointer_dtype if name in io else "fp32")
        else:
            sig[name] = "i32"
    return sig


@pytest.mark.parametrize("pointer_dtype", ["fp32", "bf16"])
def test_kernels_compile_for_hopper_without_a_gpu(pointer_dtype, monkeypatch):
    """The interpreter does not lower anything; this builds real sm_90 cubins with Triton's bundled ptxas."""
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when the default is implicit
    if compiled_scan.INTERPRETED:
        pytest.skip("TRITON_INTERPRET was set for the whole session")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # the Sigma-T stage-0 configuration as selective_scan_triton picks it (batch 1, D = 768, 192 per group)
    block_d = compiled_scan._block_d(768, 192, 1)
    chunk, block_n = compiled_scan.DEFAULT_CHUNK, 16
    flags = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk)
    for kernel, constexprs, per_thread in (
        (compiled_scan._scan_fwd_kernel, {**flags, "STORE_CKPT": True}, compiled_scan.FWD_VALUES_PER_THREAD),
        (compiled_scan._scan_bwd_kernel, flags, compiled_scan.BWD_VALUES_PER_THREAD),
    ):
        src = ASTSource(kernel, _signature(kernel, pointer_dtype, constexprs), constexprs=constexprs)
        warps = compiled_scan._num_warps(block_d * block_n * chunk, per_thread)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert compiled.asm["cubin"], kernel.__name__
        assert ".target sm_90" in compiled.asm["ptx"]


def test_ss2d_under_float16_autocast_through_the_triton_kernels(scan_triton, monkeypatch):
    """The path a GPU takes: SS2D under fp16 autocast with its scans in the Triton kernels (interpreted here),
    and a merged scan output beyond float16's 65504 before out_norm: finite, and close to float32."""
    from sigma_core.models.vmamba import SS2D

    registry = importlib.import_module("sigma_core.ops.selective_scan")
    monkeypatch.setitem(registry._loaded, "triton", scan_triton.selective_scan_triton)
    torch.manual_seed(0)
    block = SS2D(16, d_state=16).eval()
    with torch.no_grad():
        block.A_logs.fill_(-8.0)  # almost no decay
        block.x_proj_weight.mul_(150.0)  # large B and C
    x = torch.randn(1, 4, 4, 16) * 3
    norm_input = []
    block.out_norm.register_forward_hook(lambda module, inputs, out: norm_input.append(inputs[0]))
    with torch.inference_mode():
        block.scan_backend = "reference"
        want = block(x)
        block.scan_backend = "triton"
        with torch.autocast("cpu", dtype=torch.float16):
            got = block(x)
    assert norm_input[0].abs().max() > 65504 and norm_input[1].dtype == torch.float32
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max().item() <= 0.02 * want.abs().max().item()
