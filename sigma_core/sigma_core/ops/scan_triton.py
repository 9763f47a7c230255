"""Selective scan in Triton: CUDA forward and backward with nothing to compile.

PyTorch's CUDA builds ship Triton, so this backend runs on any NVIDIA GPU
(desktop or Jetson) without building an extension.

Kernel layout. The grid is (channel blocks, batch). A program owns BLOCK_D
channels that all read the same B/C group (BLOCK_D divides D / G), keeps their
(BLOCK_D, N) float32 state in registers and walks the sequence in chunks of
CHUNK steps. Inside a chunk the linear recurrence h_t = a_t h_{t-1} + b_t is
solved with ``tl.associative_scan`` over a (BLOCK_D, N, CHUNK) tile (so the
sequential part is L / CHUNK steps, not L), and the state carried from the
previous chunk is added as ``prod(a) * h_carry``.

Backward runs the chunks in reverse time. For each chunk it recomputes the
forward states from a checkpoint of h stored at every chunk start by the
forward pass ((batch, D, L / CHUNK, N) float32, a CHUNK-th of the full state),
and solves the adjoint recurrence g_t = a_{t+1} g_{t+1} + C_t dy_t with a
reverse associative scan. dB and dC are summed over the channels of a group
with float32 atomics; dA, dD and ddelta_bias are written per batch element and
summed on the host.

Precision: u, delta, B, C may be float32, float16 or bfloat16 (each its own);
everything is computed in float32; y is float32 whatever the input dtype (the
dispatcher's output contract: y can exceed float16's range before the norm
after it); du, ddelta, dB, dC come back in their input's dtype; A, D,
delta_bias and their gradients are float32.

Cross-scan fusion (issue 4, item 1) is NOT implemented. Reading u straight from
the (B, d_inner, H, W) map would need per-group source offsets in the kernel (k=2, 3
are time-reversed, which torch strides cannot express), and it would save only u's
copy: SS2D's per-direction x_proj (delta, B, C) and cross_merge's scatter-add read
and write the same 4-direction layout, so the model code would have to change with
it. Whether that beats materialising the 4-copy (one extra read + write of the map)
is unmeasured: no GPU was available when this was written. Non-contiguous inputs are
accepted as they are (strides are passed to the kernels); only the time axis
benefits from stride 1.

Under ``TRITON_INTERPRET=1`` (set before this module is first imported) the
kernels run on CPU tensors; the tests use that.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from .selective_scan import BackendUnavailable, check_scan_shapes

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - depends on the environment
    raise BackendUnavailable(
        f"scan backend 'triton' needs the triton package ({err}); PyTorch's CUDA wheels include it, "
        "otherwise `pip install triton`, or use backend='mamba_ssm' / 'reference'"
    ) from err

# Decided when the kernels are decorated below: interpreted kernels take CPU tensors.
# (triton.knobs exists from Triton 3.3; older versions read the variable directly.)
_knobs = getattr(triton, "knobs", None)
INTERPRETED: bool = (bool(_knobs.runtime.interpret) if _knobs is not None
                     else os.environ.get("TRITON_INTERPRET", "0") == "1")

# Tuning, chosen from register counts of the sm_90 compile (cuobjdump, no GPU at hand): a
# (BLOCK_D, 16, CHUNK) tile at <= 16 float32 values per thread in the forward and <= 8 in the
# backward compiles without spills; CHUNK 32 needs fewer registers than 64 at the same share.
# Run times are unmeasured; benchmarks/gpu.py is the place to revisit these.
DEFAULT_CHUNK = 32
MAX_BLOCK_D = 8
# Fewer programs than this leaves SMs idle (an H100 has 132): shrink BLOCK_D to get more.
MIN_PROGRAMS = 256
FWD_VALUES_PER_THREAD = 16
BWD_VALUES_PER_THREAD = 8
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Kernels use only builtins and their own helpers: tl.zeros / tl.sum are @jit functions of
# triton.language, which the interpreter can call only if TRITON_INTERPRET was set before triton
# itself was imported; builtins (tl.full, tl.reduce, ...) work either way.


@triton.jit
def _add(a, b):
    return a + b


# Triton's own sum combiner, when present, takes the interpreter's numpy fast path.
_sum_combine = getattr(tl.standard, "_sum_combine", _add)


@triton.jit
def _rsum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, _sum_combine)


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2) applied to x: a2 * (a1 * x + b1) + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _delta_tile(rows_ptr, bias, t, t_ok, s_l, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(BLOCK_D, CHUNK) float32 delta after bias and softplus; 0 where t >= L (a = 1, b = 0 there)."""
    raw = tl.load(rows_ptr + t[None, :] * s_l, mask=t_ok[None, :], other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        # torch's softplus threshold: linear above 20
        dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0))))
    return tl.where(t_ok[None, :], dt, 0.0), raw


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, ckpt_ptr,
    L, N, per_group, n_chunks,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sy_b, sy_d, sy_l,
    sk_b, sk_d, sk_c,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N
    t0 = tl.arange(0, CHUNK)
    g = (pid_d * BLOCK_D) // per_group  # BLOCK_D divides per_group: one group per program

    # padded states get A = 0, B = C = 0: they stay 0 and add nothing
    A = tl.load(A_ptr + d[:, None] * sA_d + n[None, :] * sA_n, mask=n_ok[None, :], other=0.0).to(tl.float32)
    bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    Dv = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d).to(tl.float32)

    u_rows = u_ptr + b * su_b + d[:, None] * su_d
    dl_rows = delta_ptr + b * sdl_b + d[:, None] * sdl_d
    y_rows = y_ptr + b * sy_b + d[:, None] * sy_d
    B_base = B_ptr + b * sB_b + g * sB_g + n[:, None] * sB_n
    C_base = C_ptr + b * sC_b + g * sC_g + n[:, None] * sC_n
    last = (t0 == CHUNK - 1)[None, None, :]

    h = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    for c in range(n_chunks):
        if STORE_CKPT:
            tl.store(ckpt_ptr + b * sk_b + d[:, None] * sk_d + c * sk_c + n[None, :], h)
        t = c * CHUNK + t0
        t_ok = t < L
        dt, _raw = _delta_tile(dl_rows, bias, t, t_ok, sdl_l, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_rows + t[None, :] * su_l, mask=t_ok[None, :], other=0.0).to(tl.float32)
        mask_nt = n_ok[:, None] & t_ok[None, :]
        Bt = tl.load(B_base + t[None, :] * sB_l, mask=mask_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t[None, :] * sC_l, mask=mask_nt, other=0.0).to(tl.float32)

        a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BLOCK_D, BLOCK_N, CHUNK)
        bx = (dt * u)[:, None, :] * Bt[None, :, :]
        a_cum, h_loc = tl.associative_scan((a, bx), 2, _linear_combine)
        hs = h_loc + a_cum * h[:, :, None]
        y = _rsum(hs * Ct[None, :, :], 1)
        if HAS_D:
            y += Dv[:, None] * u
        tl.store(y_rows + t[None, :] * sy_l, y, mask=t_ok[None, :])
        h = _rsum(tl.where(last, hs, 0.0), 2)  # masked steps have a = 1, b = 0: last column = h_{L-1}


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, ckpt_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, N, per_group, n_chunks,
    su_b, su_d, su_l, sdl_b, sdl_d, sdl_l, sA_d, sA_n,
    sB_b, sB_g, sB_n, sB_l, sC_b, sC_g, sC_n, sC_l, sdy_b, sdy_d, sdy_l,
    sk_b, sk_d, sk_c,
    sdu_b, sdu_d, sddl_b, sddl_d, sdA_b, sdA_d, sdBC_b, sdBC_g, sdBC_n, sdD_b,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    # Output gradients du, ddelta are contiguous along L; dB, dC are float32 (batch, G, N, L) buffers
    # contiguous along L; dA (batch, D, BLOCK_N), dD and dbias (batch, D) are per-batch partials.
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N
    t0 = tl.arange(0, CHUNK)
    g = (pid_d * BLOCK_D) // per_group

    A = tl.load(A_ptr + d[:, None] * sA_d + n[None, :] * sA_n, mask=n_ok[None, :], other=0.0).to(tl.float32)
    bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d).to(tl.float32)
    Dv = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d).to(tl.float32)

    u_rows = u_ptr + b * su_b + d[:, None] * su_d
    dl_rows = delta_ptr + b * sdl_b + d[:, None] * sdl_d
    dy_rows = dy_ptr + b * sdy_b + d[:, None] * sdy_d
    B_base = B_ptr + b * sB_b + g * sB_g + n[:, None] * sB_n
    C_base = C_ptr + b * sC_b + g * sC_g + n[:, None] * sC_n
    dBC_off = b * sdBC_b + g * sdBC_g + n[:, None] * sdBC_n
    first = (t0 == 0)[None, None, :]

    g_carry = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)  # adjoint of h at the first step of the later chunk
    dA_acc = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    dD_acc = tl.full((BLOCK_D,), 0.0, tl.float32)
    dbias_acc = tl.full((BLOCK_D,), 0.0, tl.float32)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        h0 = tl.load(ckpt_ptr + b * sk_b + d[:, None] * sk_d + c * sk_c + n[None, :])
        t = c * CHUNK + t0
        t_ok = t < L
        dt, raw = _delta_tile(dl_rows, bias, t, t_ok, sdl_l, HAS_BIAS, SOFTPLUS)
        t_next = t + 1
        dt_next, _raw = _delta_tile(dl_rows, bias, t_next, t_next < L, sdl_l, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_rows + t[None, :] * su_l, mask=t_ok[None, :], other=0.0).to(tl.float32)
        dy = tl.load(dy_rows + t[None, :] * sdy_l, mask=t_ok[None, :], other=0.0).to(tl.float32)
        mask_nt = n_ok[:, None] & t_ok[None, :]
        Bt = tl.load(B_base + t[None, :] * sB_l, mask=mask_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t[None, :] * sC_l, mask=mask_nt, other=0.0).to(tl.float32)

        # recompute the forward states of this chunk from its checkpoint
        a = tl.exp(dt[:, None, :] * A[:, :, None])
        dtu = dt * u
        bx = dtu[:, None, :] * Bt[None, :, :]
        a_cum, h_loc = tl.associative_scan((a, bx), 2, _linear_combine)
        hs = h_loc + a_cum * h0[:, :, None]
        ah_prev = hs - bx  # a_t * h_{t-1} without dividing by a_t (which may underflow)

        # adjoint: g_t = a_{t+1} g_{t+1} + C_t dy_t, run backwards in time
        a_next = tl.exp(dt_next[:, None, :] * A[:, :, None])
        cdy = Ct[None, :, :] * dy[:, None, :]
        a_next_cum, g_loc = tl.associative_scan((a_next, cdy), 2, _linear_combine, reverse=True)
        gs = g_loc + a_next_cum * g_carry[:, :, None]
        g_carry = _rsum(tl.where(first, gs, 0.0), 2)

        gB = _rsum(gs * Bt[None, :, :], 1)  # (BLOCK_D, CHUNK)
        du = gB * dt
        if HAS_D:
            du += Dv[:, None] * dy
            dD_acc += _rsum(dy * u, 1)
        ddt = gB * u + _rsum(gs * ah_prev * A[:, :, None], 1)
        if SOFTPLUS:
            ddt = ddt / (1.0 + tl.exp(-raw))  # softplus' = sigmoid
        ddt = tl.where(t_ok[None, :], ddt, 0.0)
        dbias_acc += _rsum(ddt, 1)
        dA_acc += _rsum(gs * ah_prev * dt[:, None, :], 2)

        tl.store(du_ptr + b * sdu_b + d[:, None] * sdu_d + t[None, :], du, mask=t_ok[None, :])
        tl.store(ddelta_ptr + b * sddl_b + d[:, None] * sddl_d + t[None, :], ddt, mask=t_ok[None, :])
        # dB, dC: sum over this program's channels here, over the group's programs by atomics
        dB_part = _rsum(gs * dtu[:, None, :], 0)  # (BLOCK_N, CHUNK)
        dC_part = _rsum(hs * dy[:, None, :], 0)
        tl.atomic_add(dB_ptr + dBC_off + t[None, :], dB_part, mask=mask_nt)
        tl.atomic_add(dC_ptr + dBC_off + t[None, :], dC_part, mask=mask_nt)

    tl.store(dA_ptr + b * sdA_b + d[:, None] * sdA_d + n[None, :], dA_acc)
    tl.store(dD_ptr + b * sdD_b + d, dD_acc)
    tl.store(dbias_ptr + b * sdD_b + d, dbias_acc)


def _block_d(dim: int, per_group: int, batch: int) -> int:
    """Largest power of two <= MAX_BLOCK_D dividing per_group, shrunk while there are too few programs."""
    block = 1
    while block * 2 <= MAX_BLOCK_D and per_group % (block * 2) == 0:
        block *= 2
    while block > 1 and batch * (dim // block) < MIN_PROGRAMS:
        block //= 2
    return block


def _num_warps(tile_values: int, per_thread: int) -> int:
    """Warps that spread one (BLOCK_D, BLOCK_N, CHUNK) tile to ``per_thread`` values a thread (1..8)."""
    return max(1, min(8, tile_values // (32 * per_thread)))


def _check_inputs(u, delta, A, B, C, D, delta_bias) -> None:
    check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(
                f"triton scan: {name} has dtype {t.dtype}; supported are float32, float16, bfloat16 "
                "(use backend='reference' for float64)"
            )
    if max(u.numel(), B.numel()) >= 2**31:
        raise ValueError(
            f"triton scan: u of shape {tuple(u.shape)} has 2**31 or more elements (int32 offsets); "
            "split the batch"
        )
    devices = {t.device for t in (u, delta, A, B, C, D, delta_bias) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"triton scan: all inputs must be on one device; got {sorted(map(str, devices))}")
    device = next(iter(devices))
    if device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"triton scan runs on CUDA tensors; got {device}. Use backend='cpu' or 'reference' on CPU "
            "(or set TRITON_INTERPRET=1 before importing sigma_core.ops.scan_triton, for tests)"
        )


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float()


def _scan_forward(u, delta, A, B, C, D, delta_bias, softplus, store_ckpt, block_d, chunk):
    batch, dim, length = u.shape
    n_state = A.shape[1]
    per_group = dim // B.shape[1]
    block_n = triton.next_power_of_2(n_state)
    n_chunks = triton.cdiv(length, chunk)
    y = torch.empty(u.shape, dtype=torch.float32, device=u.device)  # float32 always: see module docstring
    ckpt = torch.empty((batch, dim, n_chunks if store_ckpt else 1, block_n), dtype=torch.float32, device=u.device)
    dummy = A  # pointer for absent optional inputs (never read: the constexpr flag is off)
    grid = (dim // block_d, batch)
    _scan_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy, y, ckpt,
        length, n_state, per_group, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *y.stride(),
        ckpt.stride(0), ckpt.stride(1), ckpt.stride(2),
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, STORE_CKPT=store_ckpt,
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
        num_warps=_num_warps(block_d * block_n * chunk, FWD_VALUES_PER_THREAD),
    )
    return y, ckpt


def _scan_backward(dy, u, delta, A, B, C, D, delta_bias, ckpt, softplus, block_d, chunk):
    batch, dim, length = u.shape
    n_state = A.shape[1]
    groups = B.shape[1]
    per_group = dim // groups
    block_n = ckpt.shape[-1]
    n_chunks = ckpt.shape[2]
    dev = u.device
    du = torch.empty((batch, dim, length), dtype=u.dtype, device=dev)
    ddelta = torch.empty((batch, dim, length), dtype=delta.dtype, device=dev)
    dA = torch.empty((batch, dim, block_n), dtype=torch.float32, device=dev)
    dB = torch.zeros((batch, groups, n_state, length), dtype=torch.float32, device=dev)
    dC = torch.zeros_like(dB)
    dD = torch.empty((batch, dim), dtype=torch.float32, device=dev)
    dbias = torch.empty_like(dD)
    dummy = A
    grid = (dim // block_d, batch)
    _scan_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy, dy, ckpt,
        du, ddelta, dA, dB, dC, dD, dbias,
        length, n_state, per_group, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *dy.stride(),
        ckpt.stride(0), ckpt.stride(1), ckpt.stride(2),
        du.stride(0), du.stride(1), ddelta.stride(0), ddelta.stride(1), dA.stride(0), dA.stride(1),
        dB.stride(0), dB.stride(1), dB.stride(2), dD.stride(0),
        HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
        num_warps=_num_warps(block_d * block_n * chunk, BWD_VALUES_PER_THREAD),
    )
    dA = dA.sum(0)[:, :n_state]
    return du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD.sum(0), dbias.sum(0)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus, block_d, chunk):
        store_ckpt = any(ctx.needs_input_grad[:7])
        y, ckpt = _scan_forward(u, delta, A, B, C, D, delta_bias, softplus, store_ckpt, block_d, chunk)
        if store_ckpt:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt)
        ctx.config = (softplus, block_d, chunk)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        softplus, block_d, chunk = ctx.config
        du, ddelta, dA, dB, dC, dD, dbias = _scan_backward(
            dy, u, delta, A, B, C, D, delta_bias, ckpt, softplus, block_d, chunk
        )
        return (
            du, ddelta, dA, dB, dC,
            dD if D is not None else None,
            dbias if delta_bias is not None else None,
            None, None, None,
        )


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    *,
    block_d: Optional[int] = None,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Grouped selective scan on CUDA with Triton, differentiable in every input.

    u, delta: (batch, D, L) float32/float16/bfloat16; A: (D, N) float; B, C: (batch, G, N, L)
    float32/float16/bfloat16 with D % G == 0; D (skip), delta_bias: (D,) float.
    Returns y: (batch, D, L) float32 for any input dtype; the state and all arithmetic are float32.
    ``block_d`` (channels per program, a power of two dividing D / G; default picked from the
    shape) and ``chunk`` (time steps per associative-scan tile, a power of two) are tuning knobs.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    per_group = u.shape[1] // B.shape[1]
    if block_d is None:
        block_d = _block_d(u.shape[1], per_group, u.shape[0])
    if block_d < 1 or block_d & (block_d - 1) or per_group % block_d:
        raise ValueError(f"block_d={block_d} must be a power of two dividing D / G = {per_group}")
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk={chunk} must be a power of two")
    return _TritonScan.apply(u, delta, _f32(A), B, C, _f32(D), _f32(delta_bias), bool(delta_softplus), block_d, chunk)
