"""Fused CPU selective scan compiled with numba: forward and backward in one pass each over memory.

Why it is fast. The chunked eager kernel (``scan_cpu``) spends most of its time
in Python dispatch and in memory passes between small ops. Here one compiled
loop does the whole step: channels are processed in blocks of ``block`` (64
or 16: see ``block_width``; a compile-time constant, so the loops over a
block's lanes compile to 4 or 1 AVX-512 vectors with no remainder code) of one
group, time in chunks of ``CHUNK`` steps. Per block and chunk, pass 1 reads u
and delta (any strides, float32, float64, or the raw bits of bfloat16 /
float16) and computes softplus(delta + bias) and delta * u into small
time-major buffers; pass 2 runs the recurrence with the channels as vector
lanes (so N = 4 and N = 16 vectorise alike, and no horizontal sums are needed
for y); pass 3 adds the D skip and writes y. Blocks of several vectors keep
independent work between the dependent steps of y and h (64 lanes: 1.4x the
16 of one vector on the Sigma-T stage-1 scan). The decay exp(delta * A) is
``_exp2`` of delta * A * log2(e), a degree-6 polynomial that vectorises; numba
has no vector exp without Intel's SVML (llvmlite's pip wheels are built without it). On AVX-512 CPUs the
kernels are compiled for 512-bit vectors (``_prefer_512_bit_vectors``), and each chunk prefetches the next
chunk's rows of u, delta, B, C and out (``_prefetch_chunk``): without the hints, passes 1 and 3 waited on memory.

Numerics. The state is float32 (float64 for float64 inputs, for gradcheck);
half-precision inputs are widened as they are read and the output is float32
for every input dtype: the scan output must stay float32 until the norm after
it (published VMamba). The float32 exp and exp2 are accurate to ~2 ulp.

Scan orders. Besides the plain grouped scan, the kernel can read K scan
directions of one (B, D, P) map through a (K, L) table of positions and sum
the K outputs back into position order (``selective_scan_ordered``): the 4-way
cross scan of SS2D and the two-way scan of ConMB run without the copies made
by cross_scan / concat_scan / cross_merge / concat_merge.

Threads. Forward and backward run jobs (batch rows x channel blocks, x sets
where the sets are independent: the grouped scans of the fusion blocks have
batch 1) in parallel on torch's thread count (``scan_threads``); in the
backward each block sums its B and C gradients into its own part, added up
afterwards.

Compiled kernels are cached on disk under the user's cache directory (see
``cache_dir``), never inside the installed package; a new process loads them in
well under a second instead of compiling again.
"""
from __future__ import annotations

import os
import pickle
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional


def cache_dir() -> Path:
    """Where numba keeps the compiled kernels: $NUMBA_CACHE_DIR if set, else $XDG_CACHE_HOME/sigma_core/numba
    (default ~/.cache/sigma_core/numba)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sigma_core" / "numba"


# numba reads NUMBA_CACHE_DIR when it is first imported; without it, cache=True writes next to this file,
# i.e. inside the installed package (often read-only, and shared between users).
os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_dir()))


def _prefer_512_bit_vectors() -> None:
    """On an AVX-512 CPU, let numba's LLVM use 512-bit vectors: sets NUMBA_CPU_NAME and NUMBA_CPU_FEATURES to the
    host's, less the ``prefer-256-bit`` tuning.

    Why: LLVM tunes Ice Lake and later Intel cores (llvmlite may name a Xeon "rocketlake") to prefer 256-bit
    vectors, so the recurrence ran on 8 float32 lanes instead of 16 (the Sigma-T stage-1 scan forward ~10 %
    slower). Only before numba's first import (numba reads these variables then; this module imports it), only
    where the CPU has avx512f, and never over a user's own NUMBA_CPU_NAME / NUMBA_CPU_FEATURES. The variables
    apply to every numba kernel of the process (and its children), all on this host's CPU; numba's disk cache
    keys kernels by CPU name and features, so kernels compiled without them are not reused.
    """
    if "numba" in sys.modules or os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES"):
        return
    try:
        import llvmlite.binding as llvm
        features = llvm.get_host_cpu_features()
        name = llvm.get_host_cpu_name()
    except (ImportError, RuntimeError):  # no llvmlite (numba's import fails below) or features unknown
        return
    if features.get("avx512f"):
        os.environ["NUMBA_CPU_NAME"] = name
        os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"


_prefer_512_bit_vectors()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from .selective_scan import scan_output_like  # noqa: E402

try:
    import numba  # noqa: E402
    from llvmlite import ir  # noqa: E402
    from numba import njit, prange, types  # noqa: E402
    from numba.core import cgutils  # noqa: E402
    from numba.extending import intrinsic, overload  # noqa: E402
except ImportError as err:  # the registry turns this into BackendUnavailable; "auto" falls back to "cpu"
    raise ImportError(f"{err}; install numba (pip install numba) for the fast CPU scan") from err

if not numba.config.CACHE_DIR:  # numba was imported before this module, without NUMBA_CACHE_DIR
    numba.config.CACHE_DIR = str(cache_dir())


def _cache_is_writable(folder: Path) -> bool:
    """Whether numba can keep kernels in ``folder``; if not, warns once (at import) and returns False.

    numba itself, when the folder it was given cannot be written, silently falls back to writing next to
    this file, i.e. inside the installed package: the kernels are compiled in memory instead.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError as err:
        warnings.warn(f"cannot keep compiled scan kernels in {folder} ({err.strerror or err}): they are compiled "
                      "again in every new process (several seconds); set NUMBA_CACHE_DIR to a writable folder",
                      RuntimeWarning, stacklevel=2)
        return False


# Channels per block, the lanes of the recurrence: 4 or 1 AVX-512 registers of float32. Each width is a compiled
# variant of every kernel (compile time), so two: 64 for the model's scans (D a multiple of 64), 16 for the rest.
BLOCK_WIDTHS = (64, 16)
CHUNK = 64  # steps per chunk: the forward saves the state every CHUNK steps for the backward
_JIT = dict(nogil=True, fastmath=True, cache=_cache_is_writable(Path(numba.config.CACHE_DIR)), error_model="numpy")

# ----------------------------------------------------------------------------------------------------------------
# Scalar helpers, specialised by numba on the argument type.


@intrinsic
def _bits_to_f32(typingctx, bits):
    """The float32 whose IEEE bits are the low 32 bits of an integer (a register reinterpretation)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if value.type.width > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif value.type.width < 32:
            value = builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _prefetch(typingctx, arr, i, j, k):
    """A hint to bring the cache line of arr[i, j, k] (3-d, indices in range) into the caches; reads nothing."""
    if not isinstance(arr, types.Array) or arr.ndim != 3:
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        index = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:])]
        pointer = builder.bitcast(cgutils.get_item_pointer(context, builder, aryty, ary, index),
                                  ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(prefetch, [pointer, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.none(arr, i, j, k), codegen


BFLOAT16, FLOAT16 = 1, 2  # half_kind: how the uint16 elements of an input are to be read


def _widen(x, half_kind):
    """An element read from an input array, as float32 (float64 stays float64); uint16 elements are the bits of
    a bfloat16 or a float16 (half_kind), so both half types share one compiled kernel."""


@overload(_widen, jit_options={"fastmath": True})
def _widen_impl(x, half_kind):
    if x == types.uint16:

        def half(x, half_kind):
            h = np.int64(x)
            if half_kind == BFLOAT16:  # the high half of a float32
                return _bits_to_f32(h << 16)
            sign = (h & 0x8000) << 16
            exponent = (h >> 10) & 0x1F
            mantissa = h & 0x3FF
            if exponent == 0:  # zero or subnormal: mantissa * 2**-24
                value = np.float32(mantissa) * np.float32(5.960464477539063e-08)
                return -value if sign else value
            if exponent == 31:  # inf or nan
                return _bits_to_f32(sign | 0x7F800000 | (mantissa << 13))
            return _bits_to_f32(sign | ((exponent + 112) << 23) | (mantissa << 13))

        return half
    if isinstance(x, types.Float):
        return lambda x, half_kind: x
    return None


def _exp(x):
    """exp(x): a vectorisable float32 polynomial, math.exp for float64."""


@overload(_exp, jit_options={"fastmath": True})
def _exp_impl(x):
    if x == types.float32:

        def exp32(x):
            # exp(x) = 2**k * exp(r), k = round(x / ln 2), |r| <= ln(2) / 2; Taylor to r**7 (error < 1e-8).
            x = min(max(x, np.float32(-87.0)), np.float32(88.0))
            k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
            r = x - k * np.float32(0.693145751953125) - k * np.float32(1.428606765330187e-06)
            p = np.float32(1.0 / 5040.0)
            p = p * r + np.float32(1.0 / 720.0)
            p = p * r + np.float32(1.0 / 120.0)
            p = p * r + np.float32(1.0 / 24.0)
            p = p * r + np.float32(1.0 / 6.0)
            p = p * r + np.float32(0.5)
            p = p * r + np.float32(1.0)
            p = p * r + np.float32(1.0)
            return p * _bits_to_f32((np.int32(k) + np.int32(127)) << np.int32(23))

        return exp32
    if isinstance(x, types.Float):
        return lambda x: np.exp(x)
    return None


LOG2E = 1.4426950408889634  # 1 / ln 2: the kernels keep A * LOG2E, so that exp(dt A) = 2 ** (dt A LOG2E)


def _exp2(x):
    """2 ** x: a vectorisable float32 polynomial (the recurrence's decay), np.exp2 for float64."""


@overload(_exp2, jit_options={"fastmath": True})
def _exp2_impl(x):
    if x == types.float32:

        def exp2_32(x):
            # 2**x = 2**k * 2**r, k = round(x), |r| <= 1/2 (exact); degree-6 polynomial fitted to 2**r for
            # relative error (1.9e-9; 1.0e-7 = 1.7 ulp evaluated in float32): two steps fewer than _exp.
            x = min(max(x, np.float32(-126.0)), np.float32(127.0))
            k = np.floor(x + np.float32(0.5))
            r = x - k
            p = np.float32(1.534581159098134e-04)
            p = p * r + np.float32(1.339993121587637e-03)
            p = p * r + np.float32(9.618488958643395e-03)
            p = p * r + np.float32(5.550328776975366e-02)
            p = p * r + np.float32(2.4022646890619875e-01)
            p = p * r + np.float32(6.931472057372625e-01)
            p = p * r + np.float32(1.0000000005541676)
            return p * _bits_to_f32((np.int32(k) + np.int32(127)) << np.int32(23))

        return exp2_32
    if isinstance(x, types.Float):
        return lambda x: np.exp2(x)
    return None


def _softplus(x):
    """log(1 + exp(x)): vectorisable for float32 (max(x, 0) + log1p(exp(-|x|)) by an atanh series)."""


@overload(_softplus, jit_options={"fastmath": True})
def _softplus_impl(x):
    if x == types.float32:

        def softplus32(x):
            # log1p(e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3]; series to s**13 (error < 1e-8).
            e = _exp(-abs(x))
            s = e / (np.float32(2.0) + e)
            s2 = s * s
            p = np.float32(1.0 / 13.0)
            p = p * s2 + np.float32(1.0 / 11.0)
            p = p * s2 + np.float32(1.0 / 9.0)
            p = p * s2 + np.float32(1.0 / 7.0)
            p = p * s2 + np.float32(1.0 / 5.0)
            p = p * s2 + np.float32(1.0 / 3.0)
            p = p * s2 + np.float32(1.0)
            return max(x, np.float32(0.0)) + np.float32(2.0) * s * p

        return softplus32
    if isinstance(x, types.Float):
        return lambda x: x if x > 20 else np.log1p(np.exp(x))
    return None


def _sigmoid(x):
    """1 / (1 + exp(-x)), vectorisable for float32."""


@overload(_sigmoid, jit_options={"fastmath": True})
def _sigmoid_impl(x):
    if isinstance(x, types.Float):
        return lambda x: 1 / (1 + _exp(-x))
    return None


# ----------------------------------------------------------------------------------------------------------------
# The kernels. Shapes, with K scan sets (groups or directions) of ``per`` channels each:
#   u (batch, Cu, P): set k, channel c reads u channel k * u_step + c (u_step = per, or 0 if shared)
#   delta (batch, K * per, P); A (K * per, N); B, C (batch, G, N, P): set k reads B group k, C group c_group[k]
#   Dskip, bias (K * per,); order (K or 1, L): step t of set k reads position order[k, t] (< P)
#   out (batch, Co, P): step t of set k, channel c goes to out channel k * out_step + c at position order[k, t]
#     (summed over the sets if out_step is 0: merged; each order row must then be a permutation of the P positions)
#   states (batch, K, blocks, chunks, N, block): the state before each chunk (saved if save_states)


@njit(**_JIT)
def _delta_inputs(dt_buf, u_buf, du_buf, bias_blk, steps, softplus):
    """In place over a chunk's (CHUNK, block) buffers: dt = softplus(delta + bias) (or delta + bias), du = dt * u."""
    lanes = dt_buf.shape[1]  # a run-time trip count: LLVM vectorises the loop instead of unrolling it
    for t in range(steps):
        for c in range(lanes):
            x = dt_buf[t, c] + bias_blk[c]
            dt = _softplus(x) if softplus else x
            dt_buf[t, c] = dt
            du_buf[t, c] = dt * u_buf[t, c]


@njit(**_JIT)
def _prefetch_chunk(arr, i, ch0, width, order, row, t0, steps):
    """Prefetch arr[i, ch0:ch0 + width, order[row, t0:t0 + steps]] (3-d) by cache lines, for either layout:
    positions contiguous (one hint per channel and run of 16 contiguous steps, else per step) or channels
    contiguous (a channels-last map: one hint per 16 channels and step); other layouts get no hints.

    Why: a chunk reads (writes) 64 steps of 64 channels, rows far apart in memory; the hardware prefetchers do
    not follow that many streams, and without the hints passes 1 and 3 waited on memory (half of the Sigma-T
    stage-1 scan's time)."""
    line = max(1, 64 // arr.itemsize)  # elements per 64-byte cache line
    if arr.strides[2] == arr.itemsize:
        for c in range(ch0, ch0 + width):
            for t in range(t0, t0 + steps, 16):
                last = min(t + 15, t0 + steps - 1)
                first_p, last_p = order[row, t], order[row, last]
                if abs(last_p - first_p) == last - t:  # the run's other line is the next run's first
                    _prefetch(arr, i, c, min(first_p, last_p))
                else:
                    for s in range(t, last + 1):
                        _prefetch(arr, i, c, order[row, s])
    elif arr.strides[1] == arr.itemsize:
        for t in range(t0, t0 + steps):
            p = order[row, t]
            for c in range(ch0, ch0 + width, line):
                _prefetch(arr, i, c, p)
            _prefetch(arr, i, ch0 + width - 1, p)  # the last line, where ch0 is not at a line's start


@njit(**_JIT)
def _forward_job(job, u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, out, out_step, states,
                 save_states, softplus, block):
    """One (batch row, channel block) of the forward, all chunks, and all K sets or one (see _job_sets)."""
    n_sets, length, n_state = order.shape[0], order.shape[1], A.shape[1]
    sets = c_group.shape[0]
    per = A.shape[0] // sets
    blocks = (per + block - 1) // block
    dtype = out.dtype
    b, blk, first_set, end_set = _job_sets(job, blocks, sets, u_step, out_step)
    c0 = blk * block
    width = min(block, per - c0)
    dt_buf = np.zeros((CHUNK, block), dtype)
    lanes = dt_buf.shape[1]  # a run-time trip count: LLVM vectorises the loops over it instead of unrolling
    du_buf = np.zeros((CHUNK, block), dtype)
    u_buf = np.zeros((CHUNK, block), dtype)
    y_buf = np.zeros((CHUNK, block), dtype)
    b_buf = np.zeros((CHUNK, n_state), dtype)
    c_buf = np.zeros((CHUNK, n_state), dtype)
    a_blk = np.zeros((n_state, block), dtype)
    bias_blk = np.zeros(block, dtype)
    h = np.zeros((n_state, block), dtype)
    for k in range(first_set, end_set):
        row = k % n_sets
        ch0 = k * per + c0
        for c in range(width):
            bias_blk[c] = bias[ch0 + c]
            for n in range(n_state):
                a_blk[n, c] = A[ch0 + c, n] * LOG2E
        h[:] = 0
        for chunk in range((length + CHUNK - 1) // CHUNK):
            t0 = chunk * CHUNK
            steps = min(CHUNK, length - t0)
            if save_states:
                states[b, k, c0 // block, chunk] = h
            if t0 + CHUNK < length:  # the next chunk's rows, while this one computes
                ahead = min(CHUNK, length - t0 - CHUNK)
                _prefetch_chunk(delta, b, ch0, width, order, row, t0 + CHUNK, ahead)
                _prefetch_chunk(u, b, k * u_step + c0, width, order, row, t0 + CHUNK, ahead)
                _prefetch_chunk(out, b, k * out_step + c0, width, order, row, t0 + CHUNK, ahead)
                _prefetch_chunk(B[b], k, 0, n_state, order, row, t0 + CHUNK, ahead)
                _prefetch_chunk(C[b], c_group[k], 0, n_state, order, row, t0 + CHUNK, ahead)
            # Pass 1: inputs of the chunk, time-major; padding lanes stay 0 (they decay nothing into nothing).
            for c in range(width):
                uc = k * u_step + c0 + c
                for t in range(steps):
                    p = order[row, t0 + t]
                    dt_buf[t, c] = _widen(delta[b, ch0 + c, p], half_kind)
                    u_buf[t, c] = _widen(u[b, uc, p], half_kind)
            _delta_inputs(dt_buf, u_buf, du_buf, bias_blk, steps, softplus)
            for t in range(steps):
                p = order[row, t0 + t]
                for n in range(n_state):
                    b_buf[t, n] = _widen(B[b, k, n, p], half_kind)
                    c_buf[t, n] = _widen(C[b, c_group[k], n, p], half_kind)
            # Pass 2: the recurrence, channels as vector lanes.
            for t in range(steps):
                y_buf[t, :] = 0
                for n in range(n_state):
                    bt, ct = b_buf[t, n], c_buf[t, n]
                    for c in range(lanes):
                        hn = _exp2(dt_buf[t, c] * a_blk[n, c]) * h[n, c] + du_buf[t, c] * bt
                        h[n, c] = hn
                        y_buf[t, c] += hn * ct
            # Pass 3: skip term, back into position order. Each set writes its own channels, or (merged) the
            # first set writes every position and the others add to it: out needs no zeroing.
            for c in range(width):
                ch = ch0 + c
                oc = k * out_step + c0 + c
                if k == 0 or out_step != 0:
                    for t in range(steps):
                        out[b, oc, order[row, t0 + t]] = y_buf[t, c] + Dskip[ch] * u_buf[t, c]
                else:
                    for t in range(steps):
                        out[b, oc, order[row, t0 + t]] += y_buf[t, c] + Dskip[ch] * u_buf[t, c]


@njit(**_JIT)
def _backward_job(job, u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, dy, out_step, states,
                  softplus, du, ddelta, dA, dB, dC, dD, dbias, block):
    """One (batch row, channel block) of the backward: all chunks backwards in time, all K sets or one
    (see _job_sets).

    Jobs write disjoint parts of every gradient except dB and dC, which sum over a set's channel blocks: they
    have a blocks axis (batch, parts, G, N, P), one part per block when jobs run in parallel (else parts = 1).
    """
    n_sets, length, n_state = order.shape[0], order.shape[1], A.shape[1]
    sets = c_group.shape[0]
    per = A.shape[0] // sets
    blocks = (per + block - 1) // block
    chunks = (length + CHUNK - 1) // CHUNK
    dtype = du.dtype
    b, blk, first_set, end_set = _job_sets(job, blocks, sets, u_step, out_step)
    part = blk if dB.shape[1] > 1 else 0
    c0 = blk * block
    width = min(block, per - c0)
    dt_buf = np.zeros((CHUNK, block), dtype)
    lanes = dt_buf.shape[1]  # a run-time trip count: LLVM vectorises the loops over it instead of unrolling
    du_buf = np.zeros((CHUNK, block), dtype)
    u_buf = np.zeros((CHUNK, block), dtype)
    x_buf = np.zeros((CHUNK, block), dtype)
    dy_buf = np.zeros((CHUNK, block), dtype)
    g_du = np.zeros((CHUNK, block), dtype)  # dL / d(dt * u)
    g_dt = np.zeros((CHUNK, block), dtype)  # dL / d dt through the decay
    b_buf = np.zeros((CHUNK, n_state), dtype)
    c_buf = np.zeros((CHUNK, n_state), dtype)
    hs = np.zeros((CHUNK + 1, n_state, block), dtype)  # h before step 0 .. after the last step
    a_blk = np.zeros((n_state, block), dtype)
    a2_blk = np.zeros((n_state, block), dtype)  # A * LOG2E, for _exp2
    bias_blk = np.zeros(block, dtype)
    d_blk = np.zeros(block, dtype)
    da_blk = np.zeros((n_state, block), dtype)
    carry = np.zeros((n_state, block), dtype)  # exp(dt_{t+1} A) * adjoint_{t+1}
    for k in range(first_set, end_set):
        row = k % n_sets
        cg = c_group[k]
        ch0 = k * per + c0
        # Padding lanes of a last, narrower block must read zeros, not the previous block's inputs.
        for buf in (a_blk, a2_blk, x_buf, u_buf, dy_buf):
            buf[:] = 0
        bias_blk[:] = 0
        d_blk[:] = 0
        for c in range(width):
            bias_blk[c] = bias[ch0 + c]
            d_blk[c] = Dskip[ch0 + c]
            for n in range(n_state):
                a_blk[n, c] = A[ch0 + c, n]
                a2_blk[n, c] = A[ch0 + c, n] * LOG2E
        da_blk[:] = 0
        carry[:] = 0
        for chunk in range(chunks - 1, -1, -1):
            t0 = chunk * CHUNK
            steps = min(CHUNK, length - t0)
            if chunk > 0:  # the previous chunk's rows (next in the backward), while this one computes
                uc0, oc0, before = k * u_step + c0, k * out_step + c0, t0 - CHUNK
                _prefetch_chunk(delta, b, ch0, width, order, row, before, CHUNK)
                _prefetch_chunk(u, b, uc0, width, order, row, before, CHUNK)
                _prefetch_chunk(dy, b, oc0, width, order, row, before, CHUNK)
                _prefetch_chunk(ddelta, b, ch0, width, order, row, before, CHUNK)
                _prefetch_chunk(du, b, uc0, width, order, row, before, CHUNK)
                _prefetch_chunk(B[b], k, 0, n_state, order, row, before, CHUNK)
                _prefetch_chunk(C[b], cg, 0, n_state, order, row, before, CHUNK)
            for c in range(width):
                uc = k * u_step + c0 + c
                oc = k * out_step + c0 + c
                for t in range(steps):
                    p = order[row, t0 + t]
                    x_buf[t, c] = _widen(delta[b, ch0 + c, p], half_kind)
                    u_buf[t, c] = _widen(u[b, uc, p], half_kind)
                    dy_buf[t, c] = dy[b, oc, p]
            dt_buf[:steps] = x_buf[:steps]
            _delta_inputs(dt_buf, u_buf, du_buf, bias_blk, steps, softplus)
            for t in range(steps):
                p = order[row, t0 + t]
                for n in range(n_state):
                    b_buf[t, n] = _widen(B[b, k, n, p], half_kind)
                    c_buf[t, n] = _widen(C[b, cg, n, p], half_kind)
            # Recompute the chunk's states from the saved one.
            hs[0] = states[b, k, blk, chunk]
            for t in range(steps):
                for n in range(n_state):
                    bt = b_buf[t, n]
                    for c in range(lanes):
                        hs[t + 1, n, c] = _exp2(dt_buf[t, c] * a2_blk[n, c]) * hs[t, n, c] + du_buf[t, c] * bt
            # Adjoint backwards in time: g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}.
            for t in range(steps - 1, -1, -1):
                p = order[row, t0 + t]
                g_du[t, :] = 0
                g_dt[t, :] = 0
                for n in range(n_state):
                    bt, ct = b_buf[t, n], c_buf[t, n]
                    sum_b = bt * 0  # typed zero: float32 or float64
                    sum_c = ct * 0
                    for c in range(lanes):
                        dtc = dt_buf[t, c]
                        decay = _exp2(dtc * a2_blk[n, c])
                        g = dy_buf[t, c] * ct + carry[n, c]
                        sum_c += dy_buf[t, c] * hs[t + 1, n, c]
                        sum_b += g * du_buf[t, c]
                        g_du[t, c] += g * bt
                        q = g * hs[t, n, c] * decay
                        g_dt[t, c] += q * a_blk[n, c]
                        da_blk[n, c] += q * dtc
                        carry[n, c] = decay * g
                    dB[b, part, k, n, p] += sum_b
                    dC[b, part, cg, n, p] += sum_c
            # Chain through dt * u, the skip term and softplus(delta + bias), vectorised; then scatter.
            for t in range(steps):
                for c in range(lanes):
                    d_dt = g_du[t, c] * u_buf[t, c] + g_dt[t, c]
                    slope = _sigmoid(x_buf[t, c] + bias_blk[c])
                    g_dt[t, c] = d_dt * slope if softplus else d_dt  # now d loss / d delta
                    g_du[t, c] = g_du[t, c] * dt_buf[t, c] + d_blk[c] * dy_buf[t, c]  # now d loss / d u
            for c in range(width):
                ch = ch0 + c
                uc = k * u_step + c0 + c
                for t in range(steps):
                    p = order[row, t0 + t]
                    du[b, uc, p] += g_du[t, c]
                    ddelta[b, ch, p] = g_dt[t, c]
                    dbias[b, ch] += g_dt[t, c]
                    dD[b, ch] += dy_buf[t, c] * u_buf[t, c]
        for c in range(width):
            for n in range(n_state):
                dA[b, ch0 + c, n] += da_blk[n, c]


def _sets_in_parallel(u_step, out_step):
    """Whether the K sets can be separate jobs: each reads its own u channels and writes its own out channels
    (the plain grouped scan). Sets sharing u (a map's directions) or summed into one output (merged) are run in
    turn by one job, which then owns those channels alone."""


@overload(_sets_in_parallel)
def _sets_in_parallel_impl(u_step, out_step):
    return lambda u_step, out_step: u_step != 0 and out_step != 0


@njit(**_JIT)
def _job_sets(job, blocks, sets, u_step, out_step):
    """Job -> (batch row, channel block, first set, end set): jobs are (row, block), or (row, set, block) where
    the sets are independent (_sets_in_parallel), so that a batch-1 grouped scan still has jobs for every thread."""
    if _sets_in_parallel(u_step, out_step):
        b, rest = job // (sets * blocks), job % (sets * blocks)
        return b, rest % blocks, rest // blocks, rest // blocks + 1
    return job // blocks, job % blocks, 0, sets


def _jobs(u, A, c_group, block, u_step, out_step):
    """The number of jobs (see _job_sets)."""


@overload(_jobs)
def _jobs_impl(u, A, c_group, block, u_step, out_step):
    def jobs(u, A, c_group, block, u_step, out_step):
        sets = c_group.shape[0]
        blocks = (A.shape[0] // sets + block - 1) // block
        return u.shape[0] * blocks * (sets if _sets_in_parallel(u_step, out_step) else 1)

    return jobs


@njit(**_JIT)
def _forward(u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, out, out_step, states,
             save_states, softplus, block):
    """The forward on one thread: writes out; fills states if save_states."""
    for job in range(_jobs(u, A, c_group, block, u_step, out_step)):
        _forward_job(job, u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, out, out_step,
                     states, save_states, softplus, block)


@njit(parallel=True, **_JIT)
def _forward_threaded(u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, out, out_step, states,
                      save_states, softplus, block):
    """The forward with jobs spread over numba's threads (compiled only when torch runs several)."""
    for job in prange(_jobs(u, A, c_group, block, u_step, out_step)):
        _forward_job(job, u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, out, out_step,
                     states, save_states, softplus, block)


@njit(**_JIT)
def _backward(u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, dy, out_step, states, softplus,
              du, ddelta, dA, dB, dC, dD, dbias, block):
    """Gradients for dy (laid out like out). du accumulates (zero it first), dB and dC too, with a parts axis to
    sum afterwards (see _backward_job); dA, dD, dbias get one row per batch element (batch, ...) to sum."""
    for job in range(_jobs(u, A, c_group, block, u_step, out_step)):
        _backward_job(job, u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, dy, out_step, states,
                      softplus, du, ddelta, dA, dB, dC, dD, dbias, block)


@njit(parallel=True, **_JIT)
def _backward_threaded(u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, dy, out_step, states,
                       softplus, du, ddelta, dA, dB, dC, dD, dbias, block):
    for job in prange(_jobs(u, A, c_group, block, u_step, out_step)):
        _backward_job(job, u, delta, A, B, C, half_kind, Dskip, bias, order, c_group, u_step, dy, out_step, states,
                      softplus, du, ddelta, dA, dB, dC, dD, dbias, block)


# ----------------------------------------------------------------------------------------------------------------
# torch side


def _as_array(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor (no copy); half types as their raw bits (uint16)."""
    t = t.detach()
    return t.view(torch.uint16).numpy() if t.dtype in (torch.bfloat16, torch.float16) else t.numpy()


def _half_kind(t: torch.Tensor) -> int:
    return {torch.bfloat16: BFLOAT16, torch.float16: FLOAT16}.get(t.dtype, 0)


_READ_DIRECTLY = (torch.float32, torch.bfloat16, torch.float16)


def _common_inputs(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], torch.dtype]:
    """The inputs as the kernel reads them, and the state dtype.

    float64 anywhere: everything float64 (gradcheck). One shared dtype among float32/bfloat16/float16: read
    as is. Mixed dtypes: converted to float32 (a copy; the model never mixes them).
    """
    dtypes = {t.dtype for t in tensors}
    if torch.float64 in dtypes:
        return [t.double() for t in tensors], torch.float64
    if len(dtypes) == 1 and dtypes <= set(_READ_DIRECTLY):
        return list(tensors), torch.float32
    return [t.float() for t in tensors], torch.float32


_launch_lock = threading.Lock()


def scan_threads() -> int:
    """The threads the kernels run on: torch's thread count (torch.get_num_threads()), at most numba's pool."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def block_width(per: int, batch: int, threads: int) -> int:
    """Channels per block (the lanes of the recurrence): 64 or 16 (``BLOCK_WIDTHS``); batch: the jobs per block
    (batch rows, times the sets where they run as separate jobs).

    Several vectors per block keep more independent work between the dependent steps of the recurrence
    (64 lanes run the Sigma-T stage-1 scan ~1.4x faster than 16); the choice wastes the fewest padding lanes,
    then takes the widest, as long as there are enough (batch row, block) jobs for the threads.
    """
    def cost(width: int):
        blocks = -(-per // width)
        return batch * blocks < threads, blocks * width, -width

    return min(BLOCK_WIDTHS, key=cost)


def _launch(serial, threaded, *args) -> None:
    """Run a kernel on ``scan_threads()``: ``threaded`` (numba's threads) if that is above 1, else ``serial``.

    One launch at a time: numba's default threading layer must not be entered from two threads at once.
    Arrays are typed with layout "A" (any strides), so that contiguous and strided inputs share one compiled
    kernel per dtype instead of one per combination of layouts (each compile takes 5-30 s; the threaded
    kernels cost several times more, so they are compiled only where torch runs several threads).
    """
    threads = scan_threads()
    kernel = serial if threads == 1 else threaded
    # numba's own typing of the ~20 arguments costs ~0.4 ms a launch in Python (16 launches a frame of the
    # bundled model: 5 % of its forward); what decides the signature is cheap to read off the arrays.
    key = (kernel, args[-1], *((a.dtype, a.ndim, a.flags.writeable, a.flags.aligned) if isinstance(a, np.ndarray)
                               else type(a) for a in args[:-1]))
    with _launch_lock:
        compiled = _launched.get(key)
        if compiled is None:
            sig = tuple(t.copy(layout="A") if isinstance(t, types.Array) else t for t in map(numba.typeof, args))
            sig = sig[:-1] + (types.literal(args[-1]),)  # the block width: a compile-time constant
            compiled = _launched[key] = _compiled(kernel, sig)  # from memory or the disk cache after the first time
        if threads > 1 and numba.get_num_threads() != threads:
            numba.set_num_threads(threads)
        compiled(*args)


_launched: dict = {}  # _launch's compiled kernels by what decides their signature


# What numba raises while it reads a damaged cache entry (a truncated .nbi index, a garbage .nbc): its cache is
# a pickle of the index and one per compiled signature.
_DAMAGED_CACHE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
                  KeyError, OSError)


def _compiled(dispatcher, sig):
    """``dispatcher.compile(sig)``; a damaged disk cache is emptied (numba's own flush: an empty index) and the
    kernels are compiled again, with one warning, instead of failing every later run."""
    try:
        return dispatcher.compile(sig)
    except _DAMAGED_CACHE as err:
        if not _JIT["cache"]:
            raise
        warnings.warn(f"numba's cache of the selective-scan kernels in {numba.config.CACHE_DIR} is damaged "
                      f"({type(err).__name__}: {str(err)[:120]}); compiling them again (5-30 s) and rewriting the "
                      "cache", RuntimeWarning, stacklevel=2)
        for kernel in _KERNELS:  # a kernel's cache entry may name the others it was compiled with
            kernel._cache.flush()
        return dispatcher.compile(sig)


_KERNELS = (_delta_inputs, _prefetch_chunk, _job_sets, _forward_job, _backward_job, _forward, _forward_threaded,
            _backward, _backward_threaded)


class _Layout:
    """How K scan sets read their input and write their output (see the kernels' comment)."""

    def __init__(self, order: np.ndarray, c_group: np.ndarray, u_shared: bool, merged: bool):
        self.order, self.c_group, self.u_shared, self.merged = order, c_group, u_shared, merged


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, Dskip, bias, softplus: bool, layout: _Layout):
        (u_in, delta_in, B_in, C_in), state = _common_inputs(u, delta, B, C)
        A_s, D_s, bias_s = (t.detach().to(state).contiguous() for t in (A, Dskip, bias))
        batch, sets, per = u.shape[0], layout.c_group.shape[0], A.shape[0] // layout.c_group.shape[0]
        length, positions = layout.order.shape[1], u.shape[2]
        out = scan_output_like(u, (batch, per if layout.merged else sets * per, positions), state)
        independent_sets = sets if not (layout.u_shared or layout.merged) else 1  # see _job_sets
        block = block_width(per, batch * independent_sets, scan_threads())
        blocks, chunks = -(-per // block), -(-length // CHUNK)
        need_grad = any(ctx.needs_input_grad[:7])
        states = torch.empty((batch, sets, blocks, chunks, A.shape[1], block) if need_grad else (0,) * 6,
                             dtype=state)
        _launch(_forward, _forward_threaded, _as_array(u_in), _as_array(delta_in), A_s.numpy(), _as_array(B_in),
                _as_array(C_in), _half_kind(u_in), D_s.numpy(), bias_s.numpy(), layout.order, layout.c_group,
                0 if layout.u_shared else per, out.numpy(), 0 if layout.merged else per, states.numpy(), need_grad,
                softplus, block)
        if need_grad:
            ctx.save_for_backward(u_in, delta_in, A_s, B_in, C_in, D_s, bias_s, states)
            ctx.softplus, ctx.layout, ctx.state = softplus, layout, state
            ctx.dtypes = [t.dtype for t in (u, delta, A, B, C, Dskip, bias)]
        return out

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, Dskip, bias, states = ctx.saved_tensors
        layout, state = ctx.layout, ctx.state
        batch, per = u.shape[0], A.shape[0] // layout.c_group.shape[0]
        dy = dy.to(state)
        du = torch.zeros(u.shape, dtype=state)
        ddelta = torch.zeros(delta.shape, dtype=state)
        dA = torch.zeros((batch, *A.shape), dtype=state)
        block, blocks = states.shape[-1], states.shape[2]
        parts = blocks if scan_threads() > 1 else 1  # jobs in parallel: one dB, dC part per channel block
        dB = torch.zeros((batch, parts, *B.shape[1:]), dtype=state)
        dC = torch.zeros((batch, parts, *C.shape[1:]), dtype=state)
        dD, dbias = torch.zeros((batch, *Dskip.shape), dtype=state), torch.zeros((batch, *bias.shape), dtype=state)
        _launch(_backward, _backward_threaded, _as_array(u), _as_array(delta), A.numpy(), _as_array(B),
                _as_array(C), _half_kind(u), Dskip.numpy(), bias.numpy(), layout.order, layout.c_group,
                0 if layout.u_shared else per, dy.numpy(), 0 if layout.merged else per, states.numpy(), ctx.softplus,
                du.numpy(), ddelta.numpy(), dA.numpy(), dB.numpy(), dC.numpy(), dD.numpy(), dbias.numpy(), block)
        grads = (du, ddelta, dA.sum(0), dB.sum(1), dC.sum(1), dD.sum(0), dbias.sum(0))
        grads = [g.to(dtype) if need else None for g, dtype, need in zip(grads, ctx.dtypes, ctx.needs_input_grad)]
        return (*grads, None, None)


def _plain_layout(length: int, groups: int) -> _Layout:
    return _Layout(np.arange(length, dtype=np.int64)[None], np.arange(groups, dtype=np.int64), False, False)


def _run(u, delta, A, B, C, D, delta_bias, delta_softplus, layout: _Layout) -> torch.Tensor:
    dim = A.shape[0]
    if D is None:
        D = A.new_zeros(dim)
    if delta_bias is None:
        delta_bias = A.new_zeros(dim)
    return _NumbaScan.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), layout)


def selective_scan_numba(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Grouped selective scan on CPU (fused numba kernel), differentiable in all tensor inputs.

    u, delta: (batch, D, L); A: (D, N); B, C: (batch, G, N, L), channel d reads group d // (D / G);
    D (skip), delta_bias: (D,). Inputs float32, bfloat16 or float16 (read as they are, any strides) or
    float64. Returns y: (batch, D, L) float32 (float64 for float64 inputs), whatever u's dtype, laid out in
    memory like u (channels innermost for a channels-last u). Shapes are assumed checked by ``selective_scan``.
    """
    return _run(u, delta, A, B, C, D, delta_bias, delta_softplus, _plain_layout(u.shape[2], B.shape[1]))


def selective_scan_ordered_numba(
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
) -> torch.Tensor:
    """K scans of one map in K step orders, summed back into position order, without copies.

    u: (batch, D, P) the map, positions in memory order; delta: (batch, K*D, P); A: (K*D, N);
    B, C: (batch, K, N, P), in position order; D, delta_bias: (K*D,); order: (K, L) int, step t of direction k
    reads position order[k, t]. swap_c: direction k reads C of direction K-1-k. Returns (batch, D, P)
    float32 (float64 for float64 inputs): sum over k of scan k, each step written back to its position; laid
    out in memory like u (a channels-last map gives a channels-last output: no copy to go back to (B, P, D)).
    """
    k = order.shape[0]
    c_group = np.arange(k, dtype=np.int64)[::-1].copy() if swap_c else np.arange(k, dtype=np.int64)
    layout = _Layout(order.to(torch.int64).contiguous().numpy(), c_group, True, True)
    return _run(u, delta, A, B, C, D, delta_bias, delta_softplus, layout)
