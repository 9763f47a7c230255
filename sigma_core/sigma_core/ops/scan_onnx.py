"""The selective scan for export: one opaque torch op while tracing, a chunked ONNX ``Scan`` in the file.

Backend ``"onnx"`` (never chosen by "auto"): ``sigma_core.export`` routes every scan of the network here
before ``torch.onnx.export``. The whole scan (delta bias, softplus and D skip included) is the custom op
``sigma::scan_recurrence``: tracing sees one node per scan (export
stays fast and the graph small), the exporter writes it as ``ai.sigma.ScanRecurrence`` and
:func:`expand_scan_nodes` replaces each such node with standard ONNX ops built by :func:`recurrence_nodes`,
so any runtime (ONNX Runtime, OpenVINO, TensorRT) runs the file. The SS2D and ConMB scans, which run several
step orders over one map, trace as ``sigma::scan_map`` (``ai.sigma.ScanMap``, expanded by
:func:`map_recurrence_nodes`): their directions' time-major sequences are gathered straight from the
channels-last map (one Gather per input, the orders computed in the graph from its height and width) and merged
back with one Gather and a ReduceSum; the flipped and transposed copies per direction and the transposes to and
from time-major are gone (nano 17 % faster in ONNX Runtime).

The ONNX formulation (chunked; the graph does not grow with the image and the runtime loops L / 8 times):
the inputs are made time-major once (each a single-axis Transpose, the cheap kind for runtimes) and cut
into chunks of STEPS = 8 steps, the end padded with zeros (steps after the last: their outputs are
dropped). One ``Scan`` over the chunks carries the state h; one iteration runs few ops (see _chunk_body):

    decay = exp(delta_t * A), inject = delta_t * u_t * B_t     for the whole chunk at once
    h_t   = decay_t * h_{t-1} + inject_t                       the 8 steps in turn
    y_t   = sum_n C_t[n] * h_t[n]                              for the whole chunk at once

Every exponential is of delta * A <= 0 (delta >= 0 after softplus, A < 0): no overflow or NaN whatever
delta * A is (the log-space "exp(cumsum) / exp(cumsum)" chunk form overflows, see ENVIRONMENT.md); float32
throughout, within 1e-4 of the float64 reference (tests). Measured on Sigma-T's stage-1 scan (one thread):
chunks of 8 steps keep an iteration's tensors in the core's cache and ran 2.2x faster than 64-step chunks
computed as 8 blocks of 8 steps combined by decay products (the previous formulation); 4, 16 or 32 steps
and 2 to 8 blocks were slower. The layout puts D/G innermost so that every broadcast repeats a contiguous
run (N innermost made ONNX Runtime 3x slower). Not done: the stable within-chunk matrix form (pairwise
decays exp(L_t - L_s), s <= t, L the cumulative sum of delta * A, then batched products): A is per channel
and state (Mamba-1, not Mamba-2's scalar per head), so the pairwise decays are T x T/2 x N x D per chunk, and
one ONNX Runtime Exp over them for Sigma-T's stage-1 scan (4 x 16 x 192 state, 19200 steps) alone takes 0.52 s
(T = 8) or 0.71 s (T = 16), one Mul as much, against 0.07 s for the current form's Exp over the same chunks
(same run, load 3.4): several such passes exceed the whole current scan (0.76 s). The delta bias, softplus
and D skip run inside the Scan too, on the cached chunk (each is one pass over the whole map outside). The
eager torch op below computes the same recurrence step by step in chunks of CHUNK.
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch

CHUNK = 16  # steps per chunk of the eager torch formulation (the reference for tests)
STEPS = 8  # steps per iteration of the ONNX Scan (see _chunk_body)
DOMAIN = "ai.sigma"
OP_TYPE = "ScanRecurrence"
MAP_OP_TYPE = "ScanMap"


@torch.library.custom_op("sigma::scan_recurrence", mutates_args=())
def scan_recurrence(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool) -> torch.Tensor:
    """The selective scan, float32 in and out: dt = softplus(delta + delta_bias) (or delta + delta_bias),
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = <C_t, h_t> + D u_t.

    u, delta: (batch, D, L); A: (D, N); B, C: (batch, G, N, L); D, delta_bias: (D,). Returns (batch, D, L).
    Eagerly it runs the recurrence in torch in chunks of CHUNK steps (for tests and checks); in the file it
    is recurrence_nodes, which do the bias, softplus and skip inside the Scan, on chunks in the cache.
    """
    batch, dim, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    per_group = dim // groups
    chunks = -(-length // CHUNK)
    pad = chunks * CHUNK - length
    delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = softplus(delta)

    def time_major(t: torch.Tensor) -> torch.Tensor:  # (batch, X.., L) -> (chunks, CHUNK, batch, X..)
        t = torch.nn.functional.pad(t, (0, pad)).unflatten(-1, (chunks, CHUNK))
        return t.movedim(-2, 0).movedim(-1, 1)

    dt = time_major(delta).unflatten(-1, (groups, per_group))[:, :, None]  # (c, T, 1, b, G, D/G)
    du = time_major(delta * u).unflatten(-1, (groups, per_group))[:, :, None]
    bt = time_major(B).permute(0, 1, 4, 2, 3)[..., None]  # (c, T, N, b, G, 1)
    ct = time_major(C).permute(0, 1, 4, 2, 3)[..., None]
    a = A.reshape(groups, per_group, n).permute(2, 0, 1)[:, None]  # (N, 1, G, D/G)
    h = u.new_zeros(1, n, batch, groups, per_group)
    ys = []
    for c in range(chunks):
        decay, inject = torch.exp(dt[c] * a), du[c] * bt[c]  # (T, N, b, G, D/G)
        states = []
        for step in range(CHUNK):
            h = decay[step:step + 1] * h + inject[step:step + 1]
            states.append(h)
        ys.append((torch.cat(states) * ct[c]).sum(1))  # (T, b, G, D/G)
    y = torch.cat(ys).flatten(2).permute(1, 2, 0)[..., :length]
    return (y + u * D[:, None]).contiguous()


@scan_recurrence.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus):
    return torch.empty_like(u)


@torch.library.custom_op("sigma::scan_map", mutates_args=())
def scan_map(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool, directions: int,
             steps: int = STEPS) -> torch.Tensor:
    """The selective scan of a map along K = ``directions`` step orders, each position's K outputs summed: what
    cross_merge(scan(cross_scan(x))) (K = 4) or concat_scan / concat_merge (K = 2, the map one row) compute,
    without the per-direction copies. float32 in and out.

    u: (H, W, batch, D) the map, position-major, channels last; delta: (H, W, batch, K, D) (before bias and
    softplus); B, C: (H, W, batch, K, N); A: (K*D, N); D, delta_bias: (K*D,). Direction k steps through the
    positions in the order ops.cross_scan_order(H, W)[k] (K = 4), or [0, 2] of it (K = 2: row-major and
    reversed). ``steps``: per iteration of the file's Scan (see steps_for; no effect eagerly). Returns (H, W,
    batch, D). Eagerly it gathers the sequences and runs scan_recurrence; in the file it is
    map_recurrence_nodes.
    """
    from .cross_scan import cross_scan_order

    height, width, batch, dim = u.shape
    positions, k = height * width, directions
    order = cross_scan_order(height, width, u.device)
    order = order if k == 4 else order[[0, 2]]  # (K, L)
    steps = u.reshape(positions, batch, dim)[order]  # (K, L, b, D)
    per_k = torch.arange(k, device=u.device)[:, None]

    def sequences(t: torch.Tensor) -> torch.Tensor:  # (H, W, b, K, X) -> (b, K, X, L), direction k's steps
        return t.reshape(positions, batch, k, -1).permute(2, 0, 1, 3)[per_k, order].permute(2, 0, 3, 1)

    ys = scan_recurrence(steps.permute(2, 0, 3, 1).reshape(batch, k * dim, positions),
                         sequences(delta).reshape(batch, k * dim, positions), A, sequences(B).contiguous(),
                         sequences(C).contiguous(), D, delta_bias, delta_softplus)
    merged = u.new_zeros(positions, batch, dim)
    for direction in range(k):  # step t of direction k wrote position order[k, t]
        merged.index_add_(0, order[direction], ys.view(batch, k, dim, positions)[:, direction].permute(2, 0, 1))
    return merged.reshape(height, width, batch, dim)


@scan_map.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, directions, steps=STEPS):
    return torch.empty_like(u)


def selective_scan_onnx(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """selective_scan's contract (shapes in sigma_core.ops.selective_scan); y float32 (float64 for float64 u).

    float64 inputs (tests) run the reference recurrence in float64; everything else runs in float32.
    """
    if u.dtype == torch.float64:
        from .selective_scan import selective_scan_reference

        return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    D = u.new_zeros(u.shape[1]) if D is None else D.float()
    delta_bias = u.new_zeros(u.shape[1]) if delta_bias is None else delta_bias.float()
    return scan_recurrence(u, delta, A, B.contiguous(), C.contiguous(), D, delta_bias, delta_softplus)


def steps_for(state: int) -> int:
    """Steps per iteration of a scan_map's Scan for ``state`` = K * N * D floats of state per batch item.

    Measured with ONNX Runtime, one thread: states of 8192 floats and more (Sigma-T's encoder) run 4 steps an
    iteration (the chunk's tensors stay in the cache: stage 2 20 % faster than 8, stages 1 and 3 alike); smaller
    ones 8 (4 pays the per-op cost twice as often; 16 was no faster on Sigma-T's decoder and fusion scans).
    """
    return 4 if state >= 8192 else STEPS


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) as max(x, log(1 + exp(min(x, 20)))): never overflows, five plain ONNX ops (Min, Exp,
    Add, Log, Max; ONNX Runtime's CPU Softplus kernel is ~10x slower, and every op is a pass over the map).
    Equals torch's softplus (threshold 20: x above it) within float32 rounding; the max picks x above 20
    since log(1 + e^20) < x there, and log(1 + exp(x)) >= x below it."""
    return torch.maximum(x, torch.log(1 + torch.exp(torch.clamp(x, max=20.0))))


# --- ONNX ---------------------------------------------------------------------------------------------


def onnx_translation():
    """{torch op: onnxscript function} for torch.onnx.export(custom_translation_table=...)."""
    from onnxscript import values

    _register_placeholder_schema()
    # placeholders that expand_scan_nodes replaces
    recurrence = values.Op(values.Opset(DOMAIN, 1), OP_TYPE)
    map_recurrence = values.Op(values.Opset(DOMAIN, 1), MAP_OP_TYPE)

    def translate(u, delta, A, B, C, D, delta_bias, delta_softplus):
        return recurrence(u, delta, A, B, C, D, delta_bias, softplus=int(delta_softplus))

    def translate_map(u, delta, A, B, C, D, delta_bias, delta_softplus, directions, steps=STEPS):
        return map_recurrence(u, delta, A, B, C, D, delta_bias, softplus=int(delta_softplus),
                              directions=int(directions), steps=int(steps))

    return {torch.ops.sigma.scan_recurrence.default: translate, torch.ops.sigma.scan_map.default: translate_map}


def _register_placeholder_schema() -> None:
    """Declare ai.sigma.ScanRecurrence and ScanMap to onnx (the exporter needs a schema for every node it
    writes)."""
    import onnx.defs
    from onnx.defs import OpSchema

    tensor = [OpSchema.FormalParameter(n, "T") for n in ("u", "delta", "A", "B", "C", "D", "delta_bias")]
    softplus = OpSchema.Attribute("softplus", OpSchema.AttrType.INT, "1: dt = softplus(delta + delta_bias)")
    directions = OpSchema.Attribute("directions", OpSchema.AttrType.INT, "4: cross scan, 2: row-major both ways")
    steps = OpSchema.Attribute("steps", OpSchema.AttrType.INT, "steps per Scan iteration")
    for op_type, attributes in ((OP_TYPE, [softplus]), (MAP_OP_TYPE, [softplus, directions, steps])):
        try:
            onnx.defs.get_schema(op_type, 1, DOMAIN)
            continue
        except onnx.defs.SchemaError:
            pass
        onnx.defs.register_schema(OpSchema(
            op_type, DOMAIN, 1, inputs=tensor, outputs=[OpSchema.FormalParameter("y", "T")],
            type_constraints=[("T", ["tensor(float)"], "float32")], attributes=attributes,
            doc="selective scan; sigma_core.ops.scan_onnx.expand_scan_nodes replaces it by standard ops"))


class _Nodes:
    """Collects NodeProto for recurrence_nodes / map_recurrence_nodes; every name made starts with ``prefix``."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.counter = prefix, [], itertools.count()

    def name(self, hint: str) -> str:
        return f"{self.prefix}{hint}_{next(self.counter)}"

    def node(self, op: str, inputs: list[str], hint: str = "", n_out: int = 1, **attrs) -> list[str]:
        from onnx import helper

        outs = [self.name(hint or op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name("n_" + op), **attrs))
        return outs

    def one(self, op: str, inputs: list[str], hint: str = "", **attrs) -> str:
        return self.node(op, inputs, hint, 1, **attrs)[0]

    def const(self, values: list[int], hint: str = "c") -> str:  # (len,) int64
        from onnx import TensorProto, helper

        return self.one("Constant", [], hint, value=helper.make_tensor(self.name(hint + "_v"), TensorProto.INT64,
                                                                       [len(values)], values))

    def dim(self, tensor_shape: str, index: int) -> str:  # (1,) int64
        return self.one("Gather", [tensor_shape, self.const([index])], "dim", axis=0)

    def scalar(self, t: str) -> str:  # (1,) -> ()
        return self.one("Squeeze", [t, self.const([0])], "scalar")


def recurrence_nodes(prefix: str, u: str, delta: str, A: str, B: str, C: str, D: str, delta_bias: str, y: str,
                     softplus: bool = True, steps: int = STEPS):
    """The ONNX nodes (opset >= 18) computing ``y`` = scan_recurrence(u, delta, A, B, C, D, delta_bias, softplus)
    by name.

    One Scan iteration covers ``steps`` steps (see _chunk_body). Names made here start
    with ``prefix``. Returns a list of NodeProto, the Scan's body included.
    """
    from onnx import TensorProto, helper

    g = _Nodes(prefix)
    name, one, const, dim = g.name, g.one, g.const, g.dim
    su, sb = one("Shape", [u], "shape_u"), one("Shape", [B], "shape_b")
    batch, channels, length = dim(su, 0), dim(su, 1), dim(su, 2)
    groups, states = dim(sb, 1), dim(sb, 2)
    per_group = one("Div", [channels, groups], "per_group")
    chunk_const = const([steps], "steps")
    chunks = one("Div", [one("Add", [length, const([steps - 1])]), chunk_const], "chunks")
    pad = one("Sub", [one("Mul", [chunks, chunk_const]), length], "pad")
    one_const = const([1], "one")
    chunked = [chunks, chunk_const, batch, groups]
    no_pad_scalar = g.scalar(one("Equal", [pad, const([0])], "no_pad"))

    def time_major(t: str, rank: int, inner: list[str]) -> str:  # (b, X.., Lp) -> (c, T, b, G, inner..)
        # moving the one time axis outward (then padding the outermost axis) is a plain strided copy at full
        # speed in ONNX Runtime; general permutations were 10 % of the forward. Pad copies even when it adds
        # nothing, so it runs only when needed (the If's branches compute their outputs: no extra copy)
        perm = [rank - 1] + list(range(rank - 1))
        pads = one("Concat", [const([0] * rank), pad, const([0] * (rank - 1))], "pads", axis=0)
        moved, moved_for_pad, padded = name("moved"), name("moved"), name("padded")
        keep = helper.make_graph([helper.make_node("Transpose", [t], [moved], perm=perm)], name("keep"), [],
                                 [helper.make_tensor_value_info(moved, TensorProto.FLOAT, None)])
        pad_it = helper.make_graph([helper.make_node("Transpose", [t], [moved_for_pad], perm=perm),
                                    helper.make_node("Pad", [moved_for_pad, pads], [padded])], name("pad"), [],
                                   [helper.make_tensor_value_info(padded, TensorProto.FLOAT, None)])
        ready = one("If", [no_pad_scalar], "time_major", then_branch=keep, else_branch=pad_it)
        return one("Reshape", [ready, one("Concat", chunked + inner, "chunked_shape", axis=0)])

    u_c = time_major(u, 3, [one_const, per_group])  # (c, T, b, G, 1, D/G)
    delta_c = time_major(delta, 3, [one_const, per_group])
    b_c = time_major(B, 4, [states, one_const])  # (c, T, b, G, N, 1)
    c_c = time_major(C, 4, [one_const, states])  # (c, T, b, G, 1, N)
    ys = _chunk_scan(g, u_c, delta_c, b_c, c_c, A, D, delta_bias, batch, groups, states, per_group, softplus, steps)
    # ys: (c, T, b, G, 1, D/G) is time-major already -> (Lp, b, D) -> first L steps -> (b, D, L)
    flat = one("Reshape", [ys, one("Concat", [const([-1]), batch, channels], "ys_shape", axis=0)])
    first = one("Slice", [flat, const([0]), length, const([0])])
    g.nodes.append(helper.make_node("Transpose", [first], [y], name=name("n_Transpose"), perm=[1, 2, 0]))
    return g.nodes


def map_recurrence_nodes(prefix: str, u: str, delta: str, A: str, B: str, C: str, D: str, delta_bias: str, y: str,
                         softplus: bool = True, directions: int = 4, steps: int = STEPS):
    """The ONNX nodes (opset >= 18) computing ``y`` = scan_map(u, delta, A, B, C, D, delta_bias, softplus,
    directions) by name: the directions' sequences gathered straight from the map, time-major, in one Gather
    per input (no flipped or transposed copies), one Scan for all directions (G = K groups), and the merge back
    onto the positions as one Gather and a ReduceSum. The step orders are computed from the map's height and
    width in the graph (Range, Transpose of P int64: the graph does not grow with the image).
    """
    from onnx import helper

    g = _Nodes(prefix)
    one, const, dim = g.one, g.const, g.dim
    k = directions
    su, sb = one("Shape", [u], "shape_u"), one("Shape", [B], "shape_b")
    height, width, batch, channels = (dim(su, i) for i in range(4))
    states = dim(sb, 4)
    positions = one("Mul", [height, width], "positions")
    chunk_const = const([steps], "steps")
    chunks = one("Div", [one("Add", [positions, const([steps - 1])]), chunk_const], "chunks")
    pad = one("Sub", [one("Mul", [chunks, chunk_const]), positions], "pad")
    one_const, k_const = const([1], "one"), const([k], "k")

    # orders[t, k]: the position direction k reads at step t; inverse[p, k]: the step at which it reads p
    rows = one("Range", [g.scalar(const([0])), g.scalar(positions), g.scalar(one_const)], "rows")
    last = one("Sub", [positions, one_const], "last")

    def transposed(first: str, second: str) -> str:  # rows seen as a (first, second) grid, read column-major
        grid = one("Reshape", [rows, one("Concat", [first, second], "grid", axis=0)])
        return one("Reshape", [one("Transpose", [grid], perm=[1, 0]), const([-1])])

    forward = [rows] if k == 2 else [rows, transposed(height, width)]
    inverse = [rows] if k == 2 else [rows, transposed(width, height)]
    forward = forward + [one("Sub", [last, t], "reversed") for t in forward]  # a reversed order's inverse is
    inverse = inverse + [one("Sub", [last, t], "reversed") for t in inverse]  # the reversed inverse

    def table(columns: list[str]) -> str:  # k x (P,) -> (P, 1, K)
        return one("Unsqueeze", [one("Concat", [one("Unsqueeze", [t, const([1])]) for t in columns], axis=1),
                                 const([1])], "table")

    orders = one("Pad", [table(forward), one("Concat", [const([0]), const([0, 0]), pad, const([0, 0])],
                                                          "pads", axis=0)], "orders")  # (Lp, 1, K); pads read 0
    inverse = table(inverse)  # (P, 1, K)
    batch_index = one("Unsqueeze", [one("Range", [g.scalar(const([0])), g.scalar(batch), g.scalar(one_const)]),
                                    const([0, 2])], "batch_index")  # (1, b, 1)
    direction_index = one("Unsqueeze", [one("Range", [g.scalar(const([0])), g.scalar(k_const),
                                                      g.scalar(one_const)]), const([0, 1])], "direction_index")
    batch_k = one("Mul", [batch, k_const], "batch_k")

    def per_direction(table_: str) -> str:  # row of a (P * b * K, X) map for [t, b, k]: (T, b, K)
        return one("Add", [one("Add", [one("Mul", [table_, batch_k]), one("Mul", [batch_index, k_const])]),
                           direction_index], "index")

    def gather(t: str, index: str, inner: str) -> str:  # (P, .., X) map -> rows by index
        rows_of = one("Reshape", [t, one("Concat", [const([-1]), inner], "rows_shape", axis=0)])
        return one("Gather", [rows_of, index], "gathered", axis=0)

    def chunked(t: str, inner: list[str]) -> str:  # (Lp, b, K, X) -> (c, T, b, K, inner..)
        return one("Reshape", [t, one("Concat", [chunks, chunk_const, batch, k_const] + inner, "chunked", axis=0)])

    step_index = per_direction(orders)  # (Lp, b, K)
    u_index = one("Add", [one("Mul", [orders, batch]), batch_index], "u_index")  # u has no K axis
    u_c = chunked(gather(u, u_index, channels), [one_const, channels])  # (c, T, b, K, 1, D)
    delta_c = chunked(gather(delta, step_index, channels), [one_const, channels])
    b_c = chunked(gather(B, step_index, states), [states, one_const])  # (c, T, b, K, N, 1)
    c_c = chunked(gather(C, step_index, states), [one_const, states])  # (c, T, b, K, 1, N)
    ys = _chunk_scan(g, u_c, delta_c, b_c, c_c, A, D, delta_bias, batch, k_const, states, channels, softplus, steps)
    # (c, T, b, K, 1, D) -> rows (Lp * b * K, D) -> each position's K outputs (P, b, K, D) -> summed (H, W, b, D)
    merged = one("ReduceSum", [gather(ys, per_direction(inverse), channels), const([2])], "merged", keepdims=0)
    g.nodes.append(helper.make_node("Reshape", [merged, su], [y], name=g.name("n_Reshape")))
    return g.nodes


def _chunk_scan(g: _Nodes, u_c: str, delta_c: str, b_c: str, c_c: str, A: str, D: str, delta_bias: str,
                batch: str, groups: str, states: str, per_group: str, softplus: bool, steps: int) -> str:
    """The Scan over chunks (c, T, b, G, ..) of u, delta (.., 1, D/G), B (.., N, 1) and C (.., 1, N); A
    (G * D/G, N), D and delta_bias (G * D/G,). Returns ys (c, T, b, G, 1, D/G)."""
    from onnx import TensorProto, helper

    one, const = g.one, g.const
    one_const = const([1], "one")
    a_shape = one("Concat", [groups, per_group, states], "a_shape", axis=0)
    per_channel = one("Concat", [groups, one_const, per_group], "per_channel_shape", axis=0)
    a_c = one("Transpose", [one("Reshape", [A, a_shape])], "a", perm=[0, 2, 1])  # (G, N, D/G)
    skip_c = one("Reshape", [D, per_channel], "skip")  # (G, 1, D/G)
    bias_c = one("Reshape", [delta_bias, per_channel], "bias")
    h_shape = one("Concat", [const([1]), batch, groups, states, per_group], "h_shape", axis=0)
    h0 = one("ConstantOfShape", [h_shape], "h0",
             value=helper.make_tensor(g.name("zero"), TensorProto.FLOAT, [1], [0.0]))
    body = _chunk_body(g.prefix + "body_", steps, softplus)
    # A, D and the bias ride along as loop state (OpenVINO's Scan import rejects bodies reading the outer graph)
    *_, ys = g.node("Scan", [h0, a_c, skip_c, bias_c, u_c, delta_c, b_c, c_c], "scan", 5, body=body,
                    num_scan_inputs=4)
    return ys


def _chunk_body(prefix: str, steps: int, softplus: bool):
    """The Scan body: state (h, A, D, bias) and one chunk of T = ``steps`` steps -> (h, A, D, bias), y.

    Few ops per iteration (runtimes pay per op), each on a chunk that stays in the cache: dt = softplus(delta
    + bias), decay and inject for the whole chunk, the T steps in turn (h_t = decay_t h_{t-1} + inject_t),
    y_t = sum_n C_t h_t + D u_t for the whole chunk. Inputs per iteration: u, delta (T, b, G, 1, D/G); B
    (T, b, G, N, 1); C (T, b, G, 1, N); state h (1, b, G, N, D/G), A (G, N, D/G), D and bias (G, 1, D/G),
    passed on unchanged.
    Output y (T, b, G, 1, D/G).
    """
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    io = {k: prefix + k for k in ("h", "a", "skip", "bias", "u", "delta", "b", "c",
                                  "h_out", "a_out", "skip_out", "bias_out", "y")}
    nodes = []
    counter = itertools.count()

    def one(op: str, inputs: list[str], out: Optional[str] = None, n_out: int = 1, **attrs):
        outs = [out] if out else [f"{prefix}{op.lower()}_{next(counter)}" for _ in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=f"{prefix}n{next(counter)}", **attrs))
        return outs if n_out > 1 else outs[0]

    def const(value, dtype) -> str:
        return one("Constant", [], value=helper.make_tensor(f"{prefix}v{next(counter)}", dtype, [len(value)], value))

    outer = {"a": io["a"], "skip": io["skip"], "bias": io["bias"], "threshold": const([20.0], f),
             "one": const([1.0], f)}
    for k in ("a", "skip", "bias"):
        one("Identity", [io[k]], io[k + "_out"])

    def split(t: str) -> list[str]:  # (T, ...) -> T x (1, ...)
        return [t] if steps == 1 else one("Split", [t], n_out=steps, axis=0, num_outputs=steps)

    dt = one("Add", [io["delta"], outer["bias"]])
    if softplus:  # as scan_onnx.softplus: max(x, log(1 + exp(min(x, 20))))
        capped = one("Exp", [one("Min", [dt, outer["threshold"]])])
        dt = one("Max", [dt, one("Log", [one("Add", [capped, outer["one"]])])])
    # decay for the whole chunk (one Exp), inject step by step from the small dt * u and B: splitting the
    # N-times larger inject copied it once more (Sigma-T's stage-1 scan 9 % faster, nano's alike)
    decay = split(one("Exp", [one("Mul", [dt, outer["a"]])]))  # T x (1, b, G, N, D/G); exponent <= 0
    inject = [one("Mul", [du, b]) for du, b in zip(split(one("Mul", [dt, io["u"]])), split(io["b"]))]
    states = [io["h"]]
    for t in range(steps):
        states.append(one("Add", [one("Mul", [decay[t], states[-1]]), inject[t]]))
    one("Identity", [states[-1]], io["h_out"])
    all_states = states[1] if steps == 1 else one("Concat", states[1:], axis=0)  # (T, b, G, N, D/G)
    # one batched (1, N) x (N, D/G) product per step and group: ~10 % faster than Mul + ReduceSum (one pass less)
    read = one("MatMul", [io["c"], all_states])  # (T, b, G, 1, D/G)
    one("Add", [read, one("Mul", [io["u"], outer["skip"]])], io["y"])
    inputs = [helper.make_tensor_value_info(io[k], f, None) for k in ("h", "a", "skip", "bias", "u", "delta", "b", "c")]
    outputs = [helper.make_tensor_value_info(io[k], f, None) for k in ("h_out", "a_out", "skip_out", "bias_out", "y")]
    return helper.make_graph(nodes, prefix + "graph", inputs, outputs)


def expand_scan_nodes(model) -> list[dict]:
    """Replace every ai.sigma.ScanRecurrence / ScanMap node of ``model`` (ModelProto, in place) by
    recurrence_nodes / map_recurrence_nodes, the nodes of scan i named ``sigma_scan{i}_...``.

    Returns the scan sites, one dict each: prefix (of its nodes' names), op ("ScanRecurrence" / "ScanMap"),
    output, softplus (0/1), directions (ScanMap): what sigma_core.onnx_scan_ops needs to run the site with the
    native kernel instead. A site's seven inputs (u, delta, A, B, C, D, delta_bias) enter it through Identity
    nodes named ``{prefix}input0`` .. ``input6`` (free at run time), so that later passes renaming tensors
    (deduplicate_initializers) cannot make a recorded name stale. Also drops the ai.sigma opset import: the
    result is standard ONNX.
    """
    from onnx import helper

    from ..onnx_scan_ops import site_input, site_prefix

    graph = model.graph
    out, sites = [], []
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type in (OP_TYPE, MAP_OP_TYPE):
            attrs = {a.name: a.i for a in node.attribute}
            softplus = bool(attrs.get("softplus", 1))
            prefix = site_prefix(len(sites))
            site = {"prefix": prefix, "op": node.op_type, "output": node.output[0], "softplus": int(softplus)}
            inputs = [site_input(prefix, i) for i in range(len(node.input))]
            out.extend(helper.make_node("Identity", [source], [name], name=name)
                       for source, name in zip(node.input, inputs))
            if node.op_type == OP_TYPE:
                out.extend(recurrence_nodes(prefix, *inputs, node.output[0], softplus=softplus))
            else:
                site["directions"] = attrs["directions"]
                out.extend(map_recurrence_nodes(prefix, *inputs, node.output[0], softplus=softplus,
                                                directions=attrs["directions"], steps=attrs.get("steps", STEPS)))
            sites.append(site)
        else:
            out.append(node)
    del graph.node[:]
    graph.node.extend(out)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return sites
