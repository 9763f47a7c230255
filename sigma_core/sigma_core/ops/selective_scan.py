"""The selective scan: one entry point, several backends.

Semantics (see shared/reference/sigma/README.md): for channel d in group
g = d // (D / G),

    delta = softplus(delta + delta_bias)            (each step optional)
    h_t   = exp(delta_t * A_d) * h_{t-1} + delta_t * B_{g,t} * u_t,   h_0 = 0
    y_t   = <C_{g,t}, h_t> + D_d * u_t

Backends register here by name with the devices they serve and a preference;
``backend="auto"`` takes the most preferred one that loads for the tensors'
device. ``SIGMA_SCAN_BACKEND`` (environment) overrides "auto"; an explicit
``backend=`` argument overrides both.

Output precision, a contract every backend keeps: y is float32 (float64 for
float64 inputs) whatever the dtype of u, delta, B and C, and the model keeps it
float32 until after the LayerNorm that follows the scan, as the published
VMamba/Sigma code does. The scan sums over the state and over time, so y can
far exceed float16's range (|y| about 2.3e5 in a trained encoder's third stage,
float16 ends at 65504) even where its inputs and the normalised result are
small; returned in float16 it would become inf and the norm NaN. The
dispatcher refuses a backend that returns anything else.
"""
from __future__ import annotations

import importlib
import logging
import os
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..native_kernel import BackendUnavailable  # defined torch-free: the ONNX Runtime path raises it too

log = logging.getLogger(__name__)

ENV_VAR = "SIGMA_SCAN_BACKEND"

ScanFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class ScanBackend:
    name: str
    devices: tuple[str, ...]  # device types served: "cpu", "cuda"
    preference: int  # higher wins under "auto"
    module: str  # module (relative to this package) holding the implementation
    function: str  # its function, same signature as selective_scan minus backend
    ordered_function: Optional[str] = None  # its native selective_scan_ordered (minus backend), if it has one
    low_rank_delta: bool = False  # takes delta as a LowRankDelta (the others are handed its dense())

    def load(self) -> ScanFn:
        """Import the implementation; raises BackendUnavailable with an actionable message."""
        try:
            mod = importlib.import_module(self.module, __package__)
        except BackendUnavailable:
            raise
        except ImportError as err:
            raise BackendUnavailable(f"scan backend {self.name!r} cannot be imported: {err}") from err
        return getattr(mod, self.function)


_BACKENDS: dict[str, ScanBackend] = {}
_loaded: dict[str, ScanFn] = {}
_unavailable: dict[str, str] = {}
_auto_choice_logged: set[str] = set()


def register_backend(backend: ScanBackend) -> None:
    _BACKENDS[backend.name] = backend


register_backend(ScanBackend("reference", ("cpu", "cuda"), 0, ".selective_scan", "selective_scan_reference"))
register_backend(ScanBackend("cpu", ("cpu",), 10, ".scan_cpu", "selective_scan_cpu"))
# The fused numba kernel, 4-15x faster than "cpu" on the Sigma-T shapes (benchmarks/scan.py); "cpu" stays the
# fallback of "auto" where numba does not import.
register_backend(
    ScanBackend("numba", ("cpu",), 15, ".scan_numba", "selective_scan_numba", "selective_scan_ordered_numba")
)
# The native forward (scan_native.cpp, built with the system's C++ compiler on first use), faster than numba's;
# gradients and float64 go to the next backend in line. Without a compiler it is unavailable and "auto" takes
# "numba".
register_backend(
    ScanBackend("native", ("cpu",), 17, ".scan_native", "selective_scan_native", "selective_scan_ordered_native",
                low_rank_delta=True)
)
# CUDA: mamba-ssm's compiled kernel ranks first when it imports - it is the published speed
# yardstick, and the Triton kernel's speed against it is not yet measured (benchmarks/gpu.py);
# without mamba-ssm, "auto" falls through to Triton, which needs nothing compiled.
register_backend(ScanBackend("triton", ("cuda",), 10, ".scan_triton", "selective_scan_triton"))
register_backend(ScanBackend("mamba_ssm", ("cuda",), 20, ".scan_mamba_ssm", "selective_scan_mamba_ssm"))
# Export only (sigma_core.export): plain tensor ops and one torch scan over chunks, which becomes one ONNX Scan.
# Below every other backend, so "auto" never picks it.
register_backend(ScanBackend("onnx", ("cpu", "cuda"), -10, ".scan_onnx", "selective_scan_onnx"))


def direction_blocks(weights: torch.Tensor) -> torch.Tensor:
    """K per-direction projection weights (K, O, I) as one block-diagonal (K*I, K*O) matrix: ``x @ it`` with x
    (..., K*I), the K directions' inputs side by side, gives (..., K*O), each direction's projection of its own
    inputs, in one matmul instead of K."""
    return torch.block_diag(*weights.transpose(1, 2))


@dataclass(frozen=True)
class LowRankDelta:
    """delta as its two factors, as VMamba's per-direction dt projection makes it (published ``dt_projs``):
    delta[b, k*D + d, p] = sum over r of weight[k, d, r] * low[b, p, k, r].

    low: (batch, P, K, R) with positions as rows, any strides (the dt slice of the x_proj output); weight:
    (K, D, R). As ``delta`` of selective_scan / selective_scan_ordered: a backend that takes it
    (``ScanBackend.low_rank_delta``, the native kernel) forms delta as it scans, R products a step, instead of
    writing a (batch, K*D, P) tensor and reading it back (nano at 480x640: 39 ms of a 0.44 s forward); the
    dispatcher hands every other backend ``dense()``, the same product as one matmul. Raises ValueError where
    the factors do not fit each other, are not floating point (dense() would cut the weights to integers) or are
    on two devices.
    It is not a tensor: a backend's own function called with one (not through the dispatcher) raises an
    AttributeError saying so.
    """

    low: torch.Tensor
    weight: torch.Tensor

    def __post_init__(self):
        if self.low.dim() != 4 or self.weight.dim() != 3 or self.low.shape[2] != self.weight.shape[0] \
                or self.low.shape[3] != self.weight.shape[2]:
            raise ValueError(f"LowRankDelta: low must be (batch, P, K, R) and weight (K, D, R); got "
                             f"{tuple(self.low.shape)} and {tuple(self.weight.shape)}")
        if not (self.low.is_floating_point() and self.weight.is_floating_point()):
            raise ValueError(f"LowRankDelta: low and weight must be floating point; got {self.low.dtype} and "
                             f"{self.weight.dtype}")
        if self.low.device != self.weight.device:  # torch multiplies a CPU low by a 'meta' weight into garbage
            raise ValueError(f"LowRankDelta: low and weight must be on one device; got {self.low.device} and "
                             f"{self.weight.device}")

    def __getattr__(self, name: str):
        # Only for names the class lacks: a tensor's (dtype, to, stride...) asked of the factors by code that
        # takes delta as a tensor.
        if hasattr(torch.Tensor, name):
            raise AttributeError(f"LowRankDelta has no {name!r}: it is delta as two factors, read only by the scan "
                                 "backends with low_rank_delta (native); pass it to selective_scan or "
                                 "selective_scan_ordered, which hand the other backends its dense(), or pass "
                                 "delta.dense()")
        raise AttributeError(f"'LowRankDelta' object has no attribute {name!r}")

    @property
    def shape(self) -> torch.Size:
        """The dense delta's shape, (batch, K*D, P)."""
        batch, positions, k, _ = self.low.shape
        return torch.Size((batch, k * self.weight.shape[1], positions))

    def dim(self) -> int:
        return 3

    def dense(self) -> torch.Tensor:
        """(batch, K*D, P) in low's dtype, a channels-first view of a positions-as-rows product: the K projections
        as one block-diagonal matmul, (batch, P, K*R) @ (K*R, K*D). Its zeros carry a non-finite factor of one
        direction into the others at that position (0 * inf is NaN), where the native kernel keeps it in its own
        direction; summed over the directions (the model) both give a non-finite output there."""
        weight = self.weight.to(self.low.dtype)  # (autocast casts it so anyway; float64 tests keep float64)
        return torch.matmul(self.low.flatten(2), direction_blocks(weight)).transpose(1, 2)


def dense_delta(delta, backend: str):
    """``delta`` as backend ``backend`` takes it: a LowRankDelta stays one only for a backend that reads it."""
    if isinstance(delta, LowRankDelta) and not _BACKENDS[backend].low_rank_delta:
        return delta.dense()
    return delta


def backend_names() -> list[str]:
    return list(_BACKENDS)


def load_backend(name: str) -> ScanFn:
    """The scan function of backend ``name``; raises BackendUnavailable (cached) if it cannot run."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; choose one of {['auto', *_BACKENDS]}")
    if name in _loaded:
        return _loaded[name]
    if name in _unavailable:
        raise BackendUnavailable(_unavailable[name])
    try:
        fn = _BACKENDS[name].load()
    except BackendUnavailable as err:
        _unavailable[name] = str(err)
        log.warning("%s", err)  # reported once; later calls re-raise from the cache
        raise
    _loaded[name] = fn
    return fn


def available_backends(device_type: str = "cpu") -> list[str]:
    """Backends that load and serve ``device_type``, most preferred first."""
    names = []
    for b in sorted(_BACKENDS.values(), key=lambda b: -b.preference):
        if device_type in b.devices:
            try:
                load_backend(b.name)
            except BackendUnavailable:
                continue
            names.append(b.name)
    return names


def resolve_backend(backend: str, device_type: str) -> str:
    """Turn "auto" (or the environment override) into a concrete backend name."""
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
    if backend != "auto":
        if backend not in _BACKENDS:
            raise ValueError(
                f"unknown scan backend {backend!r} (from argument or ${ENV_VAR}); "
                f"choose one of {['auto', *_BACKENDS]}"
            )
        return backend
    names = available_backends(device_type)
    if not names:
        raise BackendUnavailable(f"no selective-scan backend serves device type {device_type!r}")
    if device_type not in _auto_choice_logged:
        _auto_choice_logged.add(device_type)
        log.info("selective scan on %s uses backend %r (available: %s)", device_type, names[0], names)
    return names[0]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Grouped selective scan.

    u, delta: (batch, D, L); A: (D, N); B, C: (batch, G, N, L) with D % G == 0; u, delta, B, C
    float32, float16 or bfloat16 (float64 for tests); D (skip), delta_bias: (D,). delta may be a LowRankDelta of
    any K dividing D (the native kernel reads it in place where K = G, else it is written out).
    Returns y: (batch, D, L) float32 (float64 if u is float64), never in a 16-bit dtype: see the
    module docstring. Raises ValueError where the shapes do not fit each other (or N is 0), RuntimeError if a
    backend breaks that contract.
    """
    check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    name = resolve_backend(backend, u.device.type)
    fn = load_backend(name)
    y = fn(u, dense_delta(delta, name), A, B, C, D, delta_bias, delta_softplus)
    expected = scan_output_dtype(u.dtype)
    if y.dtype != expected:
        raise RuntimeError(
            f"scan backend {name!r} returned {y.dtype} for {u.dtype} inputs; every backend must return {expected} "
            "(the scan output can exceed the 16-bit range before the LayerNorm after it); "
            "see sigma_core.ops.selective_scan"
        )
    return y


def scan_output_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend returns y in for u of ``input_dtype``: float64 for float64, else float32."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def scan_output_like(u: torch.Tensor, shape: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """An empty (batch, channels, positions) output in u's memory order, for the CPU kernels: channels innermost
    when u is a channels-last map (channel stride 1, as a conv's output and ``map.flatten(2)`` give), so that the
    caller's ``y.transpose(1, 2)`` back to (batch, positions, channels) is a view, not a copy."""
    if u.shape[2] > 1 and u.stride(1) == 1 and u.stride(2) != 1:
        return torch.empty(shape[0], shape[2], shape[1], dtype=dtype).transpose(1, 2)
    return torch.empty(shape, dtype=dtype)


def selective_scan_ordered(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    order: torch.Tensor,
    swap_c: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """K selective scans of one map, each in its own step order, summed back into position order.

    The layout of VMamba's cross scan (``cross_scan_order``) and of ConMB's two-way scan
    (``concat_scan_order``), without building the K sequences. u: (batch, D, P), the map in memory order;
    delta: (batch, K*D, P); A: (K*D, N); B, C: (batch, K, N, P); D, delta_bias: (K*D,) - all per position;
    order: (K, L) int64, step t of direction k reads position order[k, t] (each row a permutation of the P
    positions); delta may be a LowRankDelta. swap_c: direction k reads C of direction K-1-k. Returns
    (batch, D, P): the sum over k of scan k's outputs, each at its position; float32 (float64 for float64 u),
    like selective_scan.

    Backends with a native version read the directions by index; the others run on gathered copies.
    """
    check_ordered_scan_shapes(u, delta, A, B, C, D, delta_bias, order)
    batch, dim, positions = u.shape
    k, length = order.shape
    name = resolve_backend(backend, u.device.type)
    load_backend(name)
    delta = dense_delta(delta, name)
    native = _BACKENDS[name].ordered_function
    if native is not None:
        if u.device.type == "cpu":  # the index-reading kernels (CPU)
            check_order_permutes(order, positions)
        return getattr(importlib.import_module(_BACKENDS[name].module, __package__), native)(
            u, delta, A, B, C, D, delta_bias, delta_softplus, order, swap_c)
    order = order.to(u.device)
    steps = order[None, :, None, :]  # (1, K, 1, L)

    def along_order(t: torch.Tensor) -> torch.Tensor:  # (batch, K, X, P) -> (batch, K, X, L)
        return t.gather(-1, steps.expand(*t.shape[:3], length))

    u_seq = along_order(u[:, None].expand(batch, k, dim, positions)).flatten(1, 2)
    delta_seq = along_order(delta.unflatten(1, (k, dim))).flatten(1, 2)
    ys = selective_scan(u_seq, delta_seq, A, along_order(B), along_order(C.flip(1) if swap_c else C),
                        D, delta_bias, delta_softplus, backend=name)
    back = torch.argsort(order, dim=1)[None, :, None, :]  # position p of direction k is step back[k, p]
    return ys.unflatten(1, (k, dim)).gather(-1, back.expand(batch, k, dim, positions)).sum(1)


def check_ordered_scan_shapes(u, delta, A, B, C, D, delta_bias, order) -> None:
    """The shapes of ``selective_scan_ordered``, all of them: the kernels that read by index trust them (a B with
    fewer states than A, or a short D, would be read past its end). Raises ValueError naming the misfit."""
    if u.dim() != 3 or order.dim() != 2:
        raise ValueError(f"selective_scan_ordered: u must be (batch, D, P) and order (K, L); got {tuple(u.shape)} "
                         f"and {tuple(order.shape)}")
    batch, dim, positions = u.shape
    k, length = order.shape
    if (delta.dim() != 3 or delta.shape != (batch, k * dim, positions) or B.dim() != 4 or B.shape[:2] != (batch, k)
            or B.shape[3] != positions or length != positions):
        raise ValueError(f"selective_scan_ordered: u {tuple(u.shape)}, delta {tuple(delta.shape)}, B "
                         f"{tuple(B.shape)} do not fit order {tuple(order.shape)} (K=order.shape[0])")
    check_scan_shapes(delta, delta, A, B, C, D, delta_bias)  # the K scans as one grouped scan of K*D channels


def check_order_permutes(order: torch.Tensor, positions: int) -> None:
    """Raises ValueError unless each row of ``order`` (K, L) is a permutation of 0..positions-1: the kernels that
    read by index would read outside the map, or leave positions of the output unwritten (uninitialised).

    An order tensor found good is not checked again while it is unchanged (same object, same version): the
    model's orders are cached tables, and the check costs 4 ms a call for a 480x640 map."""
    key = (id(order), positions)
    known = _permuting_orders.get(key)
    if known is not None and known[0]() is order and known[1] == order._version:
        return
    values = order.detach().to("cpu", torch.int64)
    bad = values.numel() and not 0 <= int(values.min()) <= int(values.max()) < positions
    if not bad and values.numel():
        seen = torch.zeros(values.shape, dtype=torch.bool).scatter_(1, values, True)
        bad = not bool(seen.all())
    if bad:
        raise ValueError(f"selective_scan_ordered: order {tuple(values.shape)} must hold positions "
                         f"0..{positions - 1}, each row a permutation of them (each position once)")
    _permuting_orders[key] = (weakref.ref(order, lambda _, key=key: _permuting_orders.pop(key, None)), order._version)


_permuting_orders: dict = {}  # (id, positions) -> (weak reference, version) of orders check_order_permutes passed


def check_scan_shapes(u, delta, A, B, C, D=None, delta_bias=None) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, D, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:  # no states: the native kernel and "cpu" cannot scan
        raise ValueError(f"A must be (D={dim}, N) with N >= 1 states; got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != n or t.shape[3] != length:
            raise ValueError(f"{name} must be (batch={batch}, G, N={n}, L={length}); got {tuple(t.shape)}")
    groups = B.shape[1]
    if groups < 1 or C.shape[1] != groups or dim % groups != 0:
        raise ValueError(f"B and C need the same group count G (at least 1) dividing D={dim}; "
                         f"got {B.shape[1]} and {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must be ({dim},); got {tuple(t.shape)}")


def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Plain step-by-step scan with autograd: the oracle for every other backend.

    Computes and returns in float32, or float64 for float64 inputs (tests).
    """
    dtype = scan_output_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    per_group = dim // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (batch, D, N, L): channel d reads group d // per_group
    C = C.repeat_interleave(per_group, dim=1)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[..., t] * u[:, :, t, None]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    return y
