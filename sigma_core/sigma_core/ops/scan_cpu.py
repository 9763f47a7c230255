"""Fast CPU selective scan: chunked eager kernel with a hand-written backward.

Why it is fast on one thread. A plain loop over L launches ~6 small ops per
step, each costing more in dispatch than in arithmetic. Here, per chunk of
``CHUNK`` steps, the decay factors exp(delta * A) and the inputs
delta * u * B are computed by one vectorised op each, and the recurrence
itself is a single in-place ``addcmul_`` per step on pre-built views of
reused buffers (no allocation). Inputs are read through strided time-major
views, so every per-step view of the buffers is contiguous. (batch, D) is cut
into independent tiles of ~``TILE_ELEMENTS`` state elements so that one
chunk's buffers stay in the L2 cache.

Numerics. The recurrence is evaluated step by step in linear space, exactly
like the reference; there is no cumsum/exp(-cumsum) rewrite (it overflows) and
no division by cumulative products. The state is float32, or float64 when the
inputs are float64; float16/bfloat16 inputs are computed in float32 and the
output stays float32 (the dispatcher's output contract, see selective_scan).

No torch.compile: on our 2-core CPU this eager kernel (0.5 s forward at the
Sigma-T stage-1 shape, one thread) already beats the compiled 32-step chunk
body measured before (0.60 s), without a 10-26 s cold compile or a cache.

Memory. The forward keeps only the state at each chunk start,
(L / CHUNK) x (batch, D, N), when a gradient is needed; the backward recomputes
each chunk's states from it and runs the adjoint recurrence backwards in time
with the same one-op-per-step scheme.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .selective_scan import scan_output_dtype

CHUNK = 16  # steps per vectorised chunk: 16 was fastest at D=768, N=16 (8: +0-20 %, 32: +3 %)
TILE_ELEMENTS = 384 * 16  # state elements (batch x channels x N) per tile: best of 192/384/768 x 16 on Sigma-T


def selective_scan_cpu(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Grouped selective scan on CPU, differentiable in all tensor inputs.

    u, delta: (batch, D, L); A: (D, N); B, C: (batch, G, N, L), channel d reads
    group d // (D / G); D (skip), delta_bias: (D,). Any float dtype; computed in
    float64 if u is float64, else float32. Returns y: (batch, D, L) in that dtype.
    Shapes are assumed checked by ``selective_scan``.
    """
    dtype = scan_output_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    # The cheap elementwise parts go through ordinary autograd; only the scan has a custom backward.
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    y = _SelectiveScanCore.apply(u, delta, A, B, C)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    return y


class _SelectiveScanCore(torch.autograd.Function):
    """y_t = <C_t, h_t>, h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t, h_0 = 0 (no skip term)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C):
        need_grad = any(ctx.needs_input_grad)
        y = u.new_empty(u.shape)
        states = []
        for rows, chans, grps in _tiles(*u.shape[:2], B.shape[1], A.shape[1]):
            tile = (u[rows, chans], dt[rows, chans], A[chans], B[rows, grps], C[rows, grps])
            states.append(_scan_forward(*tile, y[rows, chans], save_states=need_grad))
        if need_grad:
            ctx.save_for_backward(u, dt, A, B, C, *states)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        u, dt, A, B, C, *states = ctx.saved_tensors
        dy = dy.contiguous()
        d_du, d_dt = torch.empty_like(u), torch.empty_like(u)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        tiles = _tiles(*u.shape[:2], B.shape[1], A.shape[1])
        for (rows, chans, grps), st in zip(tiles, states):
            grads = _scan_backward(
                u[rows, chans], dt[rows, chans], A[chans], B[rows, grps], C[rows, grps], st, dy[rows, chans],
                d_du[rows, chans], d_dt[rows, chans],
            )
            dA[chans] += grads[0]
            dB[rows, grps] += grads[1]  # tiles inside one group add up their channels' contributions
            dC[rows, grps] += grads[2]
        # du = dt * u feeds the input term; dt also feeds the decay exp(dt * A).
        return d_du * dt, d_du.mul_(u).add_(d_dt), dA, dB, dC


def _tiles(batch: int, dim: int, groups: int, n_state: int) -> list[tuple[slice, slice, slice]]:
    """Split (batch, D) into independent tiles of about TILE_ELEMENTS state elements per step.

    Each tile is (batch rows, channels, groups): whole groups, or a channel range inside one group
    (then with that single group), so that inside a tile channel d still reads group d // (D' / G').
    Small tiles keep each chunk's buffers in cache (stage 2 of Sigma-T: -25 % time).
    """
    per_group = dim // groups
    budget = max(1, TILE_ELEMENTS // n_state)  # channels (x batch rows) per tile
    tiles = []
    if per_group <= budget:
        group_step = min(groups, budget // per_group)
        row_step = max(1, budget // (group_step * per_group))
        for b0 in range(0, batch, row_step):
            rows = slice(b0, min(b0 + row_step, batch))
            for g0 in range(0, groups, group_step):
                g1 = min(g0 + group_step, groups)
                tiles.append((rows, slice(g0 * per_group, g1 * per_group), slice(g0, g1)))
    else:
        parts = -(-per_group // budget)
        step = -(-per_group // parts)
        for b0 in range(batch):
            for g in range(groups):
                for c0 in range(0, per_group, step):
                    c1 = min(c0 + step, per_group)
                    tiles.append((slice(b0, b0 + 1), slice(g * per_group + c0, g * per_group + c1), slice(g, g + 1)))
    return tiles


def _time_major(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Strided time-major view (batch, G*K, L) -> (L, batch, G, K), no copy.

    Ops read (and write) chunks of these views directly: cheaper than transposing the
    sequence, since the broadcasting ops that read an element reuse it N times.
    """
    return x.unflatten(1, (groups, -1)).permute(3, 0, 1, 2)


class _ChunkBuffers:
    """Reused (CHUNK, batch, G, D/G, N) buffers and their per-step views (built once, no per-step indexing)."""

    def __init__(self, batch: int, groups: int, per_group: int, n: int, dtype: torch.dtype, backward: bool):
        shape = (batch, groups, per_group, n)
        self.decay = torch.empty(CHUNK, *shape, dtype=dtype)  # exp(dt * A)
        self.states = torch.empty(CHUNK + 1, *shape, dtype=dtype)  # [h_start, h_1 .. h_T]
        self.column = torch.empty(CHUNK, batch, groups, per_group, 1, dtype=dtype)  # one value per channel
        self.decay_steps = self.decay.unbind(0)
        hs = self.states.unbind(0)
        self.recurrence = [(hs[t + 1].addcmul_, self.decay_steps[t], hs[t]) for t in range(CHUNK)]
        if backward:
            self.adjoint = torch.empty(CHUNK, *shape, dtype=dtype)  # dL/dh_t
            g = self.adjoint.unbind(0)
            # Reverse-time adjoint steps t = CHUNK-2 .. 0: g_t += exp(dt_{t+1} A) * g_{t+1}.
            self.adjoint_recurrence = [(g[t].addcmul_, self.decay_steps[t + 1], g[t + 1]) for t in range(CHUNK - 1)]
            self.carry = torch.zeros(shape, dtype=dtype)  # exp(dt A) * adjoint, from the chunk after

    def recompute(self, dt: torch.Tensor, du: torch.Tensor, A: torch.Tensor, B: torch.Tensor, n: int) -> None:
        """Fill decay[:n] and states[1:n+1] for one chunk, states[0] holding the state before it.

        dt, du: (n, batch, G, D/G); A: (G, D/G, N); B: (n, batch, G, N).
        """
        decay = self.decay[:n]
        torch.mul(dt[..., None], A, out=decay)
        decay.exp_()
        torch.mul(du[..., None], B[:, :, :, None, :], out=self.states[1 : n + 1])
        for step, decay_t, h_prev in self.recurrence[:n]:
            step(decay_t, h_prev)  # h_t += exp(dt_t A) * h_{t-1}

    def contract(self, x: torch.Tensor, vec: torch.Tensor, out: torch.Tensor) -> None:
        """out[t, b, g, d] = sum_n x[t, b, g, d, n] * vec[t, b, g, n], for n = len(out) steps.

        x: a contiguous (n, batch, G, D/G, N) buffer slice; vec: contiguous (n, batch, G, N).
        """
        per_group, n_state = x.shape[-2:]
        col = self.column[: x.shape[0]]
        torch.bmm(x.view(-1, per_group, n_state), vec.view(-1, n_state, 1), out=col.view(-1, per_group, 1))
        out.copy_(col[..., 0])

    def reduce_channels(self, row: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
        """out[t, b, g, n] = sum_d row[t, b, g, d] * x[t, b, g, d, n]; out contiguous (n, batch, G, N).

        row: (n, batch, G, D/G), any strides; x: a contiguous (n, batch, G, D/G, N) buffer slice.
        """
        per_group, n_state = x.shape[-2:]
        packed = self.column[: x.shape[0], ..., 0]
        packed.copy_(row)
        torch.bmm(packed.view(-1, 1, per_group), x.view(-1, per_group, n_state), out=out.view(-1, 1, n_state))


def _scan_forward(u, dt, A, B, C, y, save_states: bool) -> torch.Tensor:
    """Write the scan of one tile into y (batch, D, L); return the state before each chunk if save_states."""
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // groups
    A_g = A.reshape(groups, per_group, n_state)
    bufs = _ChunkBuffers(batch, groups, per_group, n_state, u.dtype, backward=False)
    bufs.states[0].zero_()
    n_chunks = -(-length // CHUNK)
    states = u.new_empty(n_chunks, batch, groups, per_group, n_state) if save_states else u.new_empty(0)
    B_t, C_t = B.permute(3, 0, 1, 2).contiguous(), C.permute(3, 0, 1, 2).contiguous()  # (L, batch, G, N)
    dt_t, du_t, y_t = _time_major(dt, groups), _time_major(dt * u, groups), _time_major(y, groups)
    for chunk, c0 in enumerate(range(0, length, CHUNK)):
        c1 = min(c0 + CHUNK, length)
        n = c1 - c0
        if save_states:
            states[chunk].copy_(bufs.states[0])
        bufs.recompute(dt_t[c0:c1], du_t[c0:c1], A_g, B_t[c0:c1], n)
        bufs.contract(bufs.states[1 : n + 1], C_t[c0:c1], out=y_t[c0:c1])  # y_t = <h_t, C_t>
        bufs.states[0].copy_(bufs.states[n])
    return states


def _scan_backward(u, dt, A, B, C, states, dy, d_du, d_dt):
    """Gradients of one tile's scan for output gradient dy: returns (dA, dB, dC).

    Writes d(dt * u) into d_du and the gradient of dt through the decay into d_dt, both (batch, D, L).
    """
    batch, dim, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    per_group = dim // groups
    A_g = A.reshape(groups, per_group, n_state)
    bufs = _ChunkBuffers(batch, groups, per_group, n_state, u.dtype, backward=True)
    dA_acc = torch.zeros_like(bufs.decay)  # per-step-slot sums of the A gradient, reduced once at the end
    B_t, C_t = B.permute(3, 0, 1, 2).contiguous(), C.permute(3, 0, 1, 2).contiguous()  # (L, batch, G, N)
    dt_t, du_t, dy_t = _time_major(dt, groups), _time_major(dt * u, groups), _time_major(dy, groups)
    d_du_t, d_dt_t = _time_major(d_du, groups), _time_major(d_dt, groups)
    dB_t, dC_t = torch.empty_like(B_t), torch.empty_like(C_t)
    for chunk in reversed(range(states.shape[0])):
        c0 = chunk * CHUNK
        c1 = min(c0 + CHUNK, length)
        n = c1 - c0
        dt_c, du_c, dy_c = dt_t[c0:c1], du_t[c0:c1], dy_t[c0:c1]
        bufs.states[0].copy_(states[chunk])
        bufs.recompute(dt_c, du_c, A_g, B_t[c0:c1], n)
        h_prev, h = bufs.states[:n], bufs.states[1 : n + 1]
        # Adjoint g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}, backwards in time.
        g = bufs.adjoint[:n]
        torch.mul(dy_c[..., None], C_t[c0:c1, :, :, None, :], out=g)
        g[n - 1].add_(bufs.carry)
        for step, decay_t, g_next in reversed(bufs.adjoint_recurrence[: n - 1]):
            step(decay_t, g_next)
        torch.mul(bufs.decay[0], g[0], out=bufs.carry)
        # dC_t[n] = sum_d dy_t[d] h_t[d, n]; dB_t[n] = sum_d g_t[d, n] du_t[d]; d du_t[d] = sum_n g_t[d, n] B_t[n].
        bufs.reduce_channels(dy_c, h, out=dC_t[c0:c1])
        bufs.reduce_channels(du_c, g, out=dB_t[c0:c1])
        bufs.contract(g, B_t[c0:c1], out=d_du_t[c0:c1])
        # Through the decay a_t = exp(dt_t A): q_t = dL/da_t * a_t = g_t h_{t-1} a_t;
        # d dt_t = sum_n q_t A, dA = sum_t q_t dt_t.
        q = bufs.decay[:n].mul_(g).mul_(h_prev)  # the decay factors are not needed any more
        dA_acc[:n].addcmul_(q, dt_c[..., None])
        q.mul_(A_g)
        torch.sum(q, -1, out=d_dt_t[c0:c1])
    dA = dA_acc.sum((0, 1)).reshape(dim, n_state)
    return dA, dB_t.permute(1, 2, 3, 0), dC_t.permute(1, 2, 3, 0)
