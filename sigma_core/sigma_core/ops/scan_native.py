"""The selective-scan forward as a small native kernel (``scan_native.cpp``), built on first use with the system's
C++ compiler and loaded with ctypes: the "native" backend, preferred over "numba" where it builds.

What it is. A plain C ABI shared library (no torch headers, no Python headers): the numba forward's jobs,
chunks and passes, with the 16 states of h kept in vector registers and an inline vector 2**x (see the .cpp).
Only the forward is native: where a gradient is needed (training), or for float64 inputs (gradcheck), the
call goes to the next backend in line ("numba", else "cpu"), forward and backward, so the backward always
matches the forward it differentiates.

Build: see ``sigma_core.native_kernel`` (torch-free, shared with the ONNX Runtime path).

Threads: ``torch.get_num_threads()`` threads per call: torch's own OpenMP team where torch's libgomp is loaded
(its worker is still awake after the op before; a thread of our own would share a core with it), else threads
started by the kernel (without torch, and in a forked child). ctypes releases the GIL, so several Python threads
may scan at once; each calling thread leads its own team.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..native_kernel import KINDS, BackendUnavailable, library, run_forward
from .native_memory import readable_in_place
from .selective_scan import (
    LowRankDelta,
    available_backends,
    check_order_permutes,
    check_ordered_scan_shapes,
    check_scan_shapes,
    scan_output_like,
)

_KINDS = {torch.float32: KINDS["float32"], torch.bfloat16: KINDS["bfloat16"], torch.float16: KINDS["float16"]}


try:  # at import: the registry turns BackendUnavailable into "not available" for "auto", and logs why
    _LIB = library()
except BackendUnavailable as err:
    raise BackendUnavailable(f"{err}; the numba scan is used instead") from err


def _fallback(device_type: str) -> str:
    """The backend that runs what this one does not (gradients, float64, tensors not on the CPU, e.g. where
    $SIGMA_SCAN_BACKEND=native reaches a GPU model): the next in line for the tensors' device."""
    names = [name for name in available_backends(device_type) if name != "native"]
    if not names:
        raise BackendUnavailable(f"scan backend 'native' runs CPU tensors only, and no other backend serves "
                                 f"{device_type!r} tensors; move them to the CPU or choose another backend")
    return names[0]


def _as_the_kernel_reads(delta, sets: int):
    """delta as the kernel takes it: factors only where it reads factor k for set k and there is a rank (rank 0:
    delta is 0, written out)."""
    if isinstance(delta, LowRankDelta) and (delta.weight.shape[0] != sets or delta.weight.shape[2] == 0):
        return delta.dense()
    return delta


def _native_can_run(u, delta, B, C, D, delta_bias, A) -> bool:
    low_rank = isinstance(delta, LowRankDelta)
    tensors = (u, delta.low if low_rank else delta, B, C)  # the inputs read in u's kind
    params = [t for t in (A, D, delta_bias, delta.weight if low_rank else None) if t is not None]  # read as float32
    if not readable_in_place(*tensors, *params):  # on the CPU, plain, nothing recording (see native_memory)
        return False
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or not dtypes <= set(_KINDS):  # float64 or mixed: numba handles them
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (*tensors, *params)))


def _forward(u, delta, A, B, C, D, delta_bias, softplus, order, c_group, u_shared, merged) -> torch.Tensor:
    batch, sets, positions = u.shape[0], c_group.shape[0], u.shape[2]
    per = A.shape[0] // sets
    out = scan_output_like(u, (batch, per if merged else sets * per, positions), torch.float32)
    if out.numel() == 0:  # no channels, rows or steps: nothing to scan (the kernel refuses per = 0)
        return out
    A32, D32, bias32 = (t.detach().float().contiguous() if t is not None else torch.zeros(A.shape[0])
                        for t in (A, D, delta_bias))
    if isinstance(delta, LowRankDelta):  # the kernel forms delta from the factors (see scan_native.cpp)
        weight32 = delta.weight.detach().float().flatten(0, 1).contiguous()  # (K*D, R)
        factors = dict(dt_low=(delta.low.data_ptr(), delta.low.stride()), dt_weight=weight32.data_ptr(),
                       dt_rank=weight32.shape[1])
        delta_read = (0, (0, 0, 0))
    else:
        factors, delta_read = {}, (delta.data_ptr(), delta.stride())
    run_forward(
        _LIB, u=(u.data_ptr(), u.stride()), delta=delta_read, A=A32.data_ptr(),
        B=(B.data_ptr(), B.stride()), C=(C.data_ptr(), C.stride()),
        D=D32.data_ptr() if D is not None else None, delta_bias=bias32.data_ptr(),  # no D: null, no D * u term
        order=order.data_ptr(), order_rows=order.shape[0], length=order.shape[1], c_group=c_group.data_ptr(),
        sets=sets, per=per, n_state=A.shape[1], batch=batch, u_shared=u_shared, merged=merged,
        out=(out.data_ptr(), out.stride()), kind=_KINDS[u.dtype], softplus=softplus,
        threads=torch.get_num_threads(), **factors)
    return out


def selective_scan_native(
    u: torch.Tensor,
    delta: Union[torch.Tensor, LowRankDelta],
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Grouped selective scan on CPU, the native forward; same arguments, dtypes and output (float32, laid
    out like u) as ``selective_scan_numba``. With a gradient to compute, or float64 inputs, the next backend
    in line (numba) runs it. Raises ValueError where the shapes do not fit (as selective_scan does)."""
    check_scan_shapes(u, delta, A, B, C, D, delta_bias)  # called directly too: the kernel trusts the shapes
    groups = B.shape[1]
    delta = _as_the_kernel_reads(delta, groups)
    if not _native_can_run(u, delta, B, C, D, delta_bias, A):
        from .selective_scan import selective_scan
        return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend=_fallback(u.device.type))
    return _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, torch.arange(u.shape[2])[None],
                    torch.arange(groups, dtype=torch.int64), False, False)


def selective_scan_ordered_native(
    u: torch.Tensor,
    delta: Union[torch.Tensor, LowRankDelta],
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    order: torch.Tensor,
    swap_c: bool = False,
) -> torch.Tensor:
    """K scans of one map in K step orders, summed back into position order (see ``selective_scan_ordered``),
    the native forward; with a gradient to compute, or float64 inputs, the next backend in line runs it."""
    if not _native_can_run(u, delta, B, C, D, delta_bias, A):
        from .selective_scan import selective_scan_ordered
        return selective_scan_ordered(u, delta, A, B, C, D, delta_bias, delta_softplus, order, swap_c,
                                      backend=_fallback(u.device.type))
    check_ordered_scan_shapes(u, delta, A, B, C, D, delta_bias, order)  # called directly, as from the dispatcher
    check_order_permutes(order, u.shape[2])
    k = order.shape[0]
    delta = _as_the_kernel_reads(delta, k)
    order = order.to(torch.int64).contiguous()
    c_group = torch.arange(k - 1, -1, -1) if swap_c else torch.arange(k)
    return _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, order, c_group, True, True)
