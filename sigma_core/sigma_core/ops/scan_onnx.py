"""The selective scan for export: one opaque torch op while tracing, a chunked ONNX ``Scan`` in the file.

Backend ``"onnx"`` (never chosen by "auto"): ``sigma_core.export`` routes every scan of the network here
before ``torch.onnx.export``. The delta bias, softplus and D skip are plain torch ops around the core
recurrence, which is the custom op ``sigma::scan_recurrence``: tracing sees one node per scan (export
stays fast and the graph small), the exporter writes it as ``ai.sigma.ScanRecurrence`` and
:func:`expand_scan_nodes` replaces each such node with standard ONNX ops built by :func:`recurrence_nodes`,
so any runtime (ONNX Runtime, OpenVINO, TensorRT) runs the file.

The ONNX formulation (chunked; the graph does not grow with the image and the runtime loops L / 64 times):
the sequence is cut into chunks of BLOCKS x STEPS = 64 steps, the end padded with delta = 0 and u = 0 (which
keep the state and add nothing). One ``Scan`` over the chunks carries the state h; one iteration runs few,
large ops (runtimes pay per op; see _chunk_body):

    decay  = exp(delta_t * A), inject = delta_t * u_t * B_t     for the whole chunk at once
    hl_t   = decay_t * hl_{t-1} + inject_t,  P_t = P_{t-1} * decay_t   the STEPS steps of all BLOCKS blocks at
                                                                   once, each block from a zero state
    c_s+1  = P_last,s * c_s + hl_last,s                            the BLOCKS block-entry states in turn
    y_t    = sum_n C_t[n] * (hl_t + P_t * c_s)[n]

Every exponential is of delta * A <= 0 (delta >= 0 after softplus, A < 0) and every P is a product of
factors in [0, 1]: no overflow or NaN whatever delta * A is (the log-space "exp(cumsum) / exp(cumsum)" chunk
form overflows, see ENVIRONMENT.md); float32 throughout, within 1e-4 of the float64 reference (tests). The
layout puts D/G innermost so that every broadcast repeats a contiguous run (N innermost made ONNX Runtime
3x slower). The eager torch op below computes the same recurrence step by step in chunks of CHUNK.
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch

CHUNK = 16  # steps per chunk of the eager torch formulation (the reference for tests)
STEPS, BLOCKS = 8, 8  # the ONNX Scan's iteration: BLOCKS blocks of STEPS steps (see _chunk_body)
DOMAIN = "ai.sigma"
OP_TYPE = "ScanRecurrence"


@torch.library.custom_op("sigma::scan_recurrence", mutates_args=())
def scan_recurrence(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    C: torch.Tensor) -> torch.Tensor:
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = <C_t, h_t>; float32 in and out.

    u, delta: (batch, D, L); A: (D, N); B, C: (batch, G, N, L). Returns (batch, D, L). Eagerly it runs
    the chunked formulation in torch (the same arithmetic as the ONNX nodes, for tests and checks).
    """
    batch, dim, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    per_group = dim // groups
    chunks = -(-length // CHUNK)
    pad = chunks * CHUNK - length

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
    return torch.cat(ys).flatten(2).permute(1, 2, 0)[..., :length].contiguous()


@scan_recurrence.register_fake
def _(u, delta, A, B, C):
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
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = softplus(delta)
    y = scan_recurrence(u, delta, A, B.contiguous(), C.contiguous())
    if D is not None:
        y = y + u * D.float()[:, None]
    return y


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): never overflows, and plain Relu/Abs/Exp/Log ops in
    ONNX (ONNX Runtime's CPU Softplus kernel is ~10x slower). Equals torch's softplus (threshold 20) within
    float32 rounding."""
    return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))


# --- ONNX ---------------------------------------------------------------------------------------------


def onnx_translation():
    """{torch op: onnxscript function} for torch.onnx.export(custom_translation_table=...)."""
    from onnxscript import values

    _register_placeholder_schema()
    recurrence = values.Op(values.Opset(DOMAIN, 1), OP_TYPE)  # a placeholder that expand_scan_nodes replaces

    def translate(u, delta, A, B, C):
        return recurrence(u, delta, A, B, C)

    return {torch.ops.sigma.scan_recurrence.default: translate}


def _register_placeholder_schema() -> None:
    """Declare ai.sigma.ScanRecurrence to onnx (the exporter needs a schema for every node it writes)."""
    import onnx.defs
    from onnx.defs import OpSchema

    try:
        onnx.defs.get_schema(OP_TYPE, 1, DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    tensor = [OpSchema.FormalParameter(n, "T") for n in ("u", "delta", "A", "B", "C")]
    onnx.defs.register_schema(OpSchema(
        OP_TYPE, DOMAIN, 1, inputs=tensor, outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", ["tensor(float)"], "float32")],
        doc="selective-scan recurrence; sigma_core.ops.scan_onnx.expand_scan_nodes replaces it by standard ops"))


def recurrence_nodes(prefix: str, u: str, delta: str, A: str, B: str, C: str, y: str, steps: int = STEPS,
                     blocks: int = BLOCKS):
    """The ONNX nodes (opset >= 18) computing ``y`` = scan_recurrence(u, delta, A, B, C) by name.

    One Scan iteration covers ``blocks`` blocks of ``steps`` steps (see _chunk_body). Names made here start
    with ``prefix``. Returns a list of NodeProto, the Scan's body included.
    """
    from onnx import TensorProto, helper

    nodes = []
    counter = itertools.count()
    chunk = steps * blocks

    def name(hint: str) -> str:
        return f"{prefix}{hint}_{next(counter)}"

    def node(op: str, inputs: list[str], hint: str = "", n_out: int = 1, **attrs) -> list[str]:
        outs = [name(hint or op.lower()) for _ in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=name("n_" + op), **attrs))
        return outs

    def one(op: str, inputs: list[str], hint: str = "", **attrs) -> str:
        return node(op, inputs, hint, 1, **attrs)[0]

    def const(values: list[int], hint: str = "c") -> str:
        return one("Constant", [], hint, value=helper.make_tensor(name(hint + "_v"), TensorProto.INT64,
                                                                  [len(values)], values))

    def dim(tensor_shape: str, index: int) -> str:  # (1,) int64
        return one("Gather", [tensor_shape, const([index])], "dim", axis=0)

    su, sb = one("Shape", [u], "shape_u"), one("Shape", [B], "shape_b")
    batch, channels, length = dim(su, 0), dim(su, 1), dim(su, 2)
    groups, states = dim(sb, 1), dim(sb, 2)
    per_group = one("Div", [channels, groups], "per_group")
    chunk_const, steps_const, blocks_const = const([chunk], "chunk"), const([steps], "steps"), const([blocks], "blocks")
    chunks = one("Div", [one("Add", [length, const([chunk - 1])]), chunk_const], "chunks")
    pad = one("Sub", [one("Mul", [chunks, chunk_const]), length], "pad")
    pads3 = one("Concat", [const([0, 0, 0]), const([0, 0]), pad], "pads3", axis=0)
    pads4 = one("Concat", [const([0, 0, 0, 0]), const([0, 0, 0]), pad], "pads4", axis=0)
    u_p = one("Pad", [u, pads3], "u_pad")
    dt_p = one("Pad", [delta, pads3], "dt_pad")
    b_p, c_p = one("Pad", [B, pads4], "b_pad"), one("Pad", [C, pads4], "c_pad")
    du_p = one("Mul", [dt_p, u_p], "du")

    def channel_chunks(t: str) -> str:  # (b, D, Lp) -> (c, T, S, 1, b, G, D/G); step s * T + t of chunk c
        shape = one("Concat", [batch, groups, per_group, chunks, blocks_const, steps_const], "shape6", axis=0)
        t6 = one("Transpose", [one("Reshape", [t, shape])], perm=[3, 5, 4, 0, 1, 2])
        return one("Unsqueeze", [t6, const([3])])

    def state_chunks(t: str) -> str:  # (b, G, N, Lp) -> (c, T, S, N, b, G, 1)
        shape = one("Concat", [batch, groups, states, chunks, blocks_const, steps_const], "shape6", axis=0)
        t6 = one("Transpose", [one("Reshape", [t, shape])], perm=[3, 5, 4, 2, 0, 1])
        return one("Unsqueeze", [t6, const([6])])

    dt_c, du_c, b_c, c_c = channel_chunks(dt_p), channel_chunks(du_p), state_chunks(b_p), state_chunks(c_p)
    a_shape = one("Concat", [groups, per_group, states], "a_shape", axis=0)
    a_c = one("Unsqueeze", [one("Transpose", [one("Reshape", [A, a_shape])], perm=[2, 0, 1]), const([1])])
    h_shape = one("Concat", [const([1, 1]), states, batch, groups, per_group], "h_shape", axis=0)
    h0 = one("ConstantOfShape", [h_shape], "h0", value=helper.make_tensor(name("zero"), TensorProto.FLOAT, [1], [0.0]))

    body = _chunk_body(prefix + "body_", steps, blocks)
    _, _, ys = node("Scan", [h0, a_c, dt_c, du_c, b_c, c_c], "scan", 3, body=body, num_scan_inputs=4)
    # ys: (c, T, S, b, G, D/G) -> step order (c, S, T) -> (b, D, Lp) -> first L steps
    ordered = one("Transpose", [ys], perm=[0, 2, 1, 3, 4, 5])
    lp = one("Mul", [chunks, chunk_const], "lp")
    flat = one("Reshape", [ordered, one("Concat", [lp, batch, channels], "ys_shape", axis=0)])
    full = one("Transpose", [flat], perm=[1, 2, 0])
    nodes.append(helper.make_node("Slice", [full, const([0]), length, const([2])], [y], name=name("n_Slice")))
    return nodes


def _chunk_body(prefix: str, steps: int, blocks: int):
    """The Scan body: state (h, A) and one chunk of S = ``blocks`` blocks of T = ``steps`` steps -> (h, A), y.

    Few, large ops per iteration (runtimes pay per op): the T steps run for all S blocks at once from a zero
    state (hl_t) with each block's running decay product P_t (values in [0, 1]: no overflow); then the S
    block-entry states follow one another (c_{s+1} = P_last,s c_s + hl_last,s); then h_t = hl_t + P_t c_s,
    y_t = sum_n C_t h_t. Inputs per iteration: dt, du (T, S, 1, b, G, D/G); B, C (T, S, N, b, G, 1);
    h (1, 1, N, b, G, D/G); A (N, 1, G, D/G).
    """
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    io = {k: prefix + k for k in ("h", "a", "dt", "du", "b", "c", "h_out", "a_out", "y")}
    nodes = []
    counter = itertools.count()

    def one(op: str, inputs: list[str], out: Optional[str] = None, n_out: int = 1, **attrs):
        outs = [out] if out else [f"{prefix}{op.lower()}_{next(counter)}" for _ in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=f"{prefix}n{next(counter)}", **attrs))
        return outs if n_out > 1 else outs[0]

    def split(t: str, axis: int, parts: int) -> list[str]:
        return [t] if parts == 1 else one("Split", [t], n_out=parts, axis=axis, num_outputs=parts)

    def concat(ts: list[str], axis: int) -> str:
        return ts[0] if len(ts) == 1 else one("Concat", ts, axis=axis)

    decay = split(one("Exp", [one("Mul", [io["dt"], io["a"]])]), 0, steps)  # T x (1, S, N, b, G, D/G); exponent <= 0
    inject = split(one("Mul", [io["du"], io["b"]]), 0, steps)
    local, product = [inject[0]], [decay[0]]
    for t in range(1, steps):
        local.append(one("Add", [one("Mul", [decay[t], local[-1]]), inject[t]]))
        product.append(one("Mul", [product[-1], decay[t]]))
    entering = [io["h"]]  # (1, 1, N, b, G, D/G): the state entering block s
    for last_product, last_local in zip(split(product[-1], 1, blocks), split(local[-1], 1, blocks)):
        entering.append(one("Add", [one("Mul", [last_product, entering[-1]]), last_local]))
    one("Identity", [entering.pop()], io["h_out"])
    states = one("Add", [concat(local, 0), one("Mul", [concat(product, 0), concat(entering, 1)])])  # (T, S, N, ...)
    axes = f"{prefix}axes"
    nodes.append(helper.make_node("Constant", [], [axes], value=helper.make_tensor(axes + "_v", TensorProto.INT64,
                                                                                 [1], [2])))
    one("ReduceSum", [one("Mul", [states, io["c"]]), axes], io["y"], keepdims=0)
    one("Identity", [io["a"]], io["a_out"])
    inputs = [helper.make_tensor_value_info(io[k], f, None) for k in ("h", "a", "dt", "du", "b", "c")]
    outputs = [helper.make_tensor_value_info(io[k], f, None) for k in ("h_out", "a_out", "y")]
    return helper.make_graph(nodes, prefix + "graph", inputs, outputs)


def expand_scan_nodes(model) -> int:
    """Replace every ai.sigma.ScanRecurrence node of ``model`` (ModelProto, in place) by recurrence_nodes.

    Returns how many were replaced. Also drops the ai.sigma opset import: the result is standard ONNX.
    """
    graph = model.graph
    out, count = [], 0
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            out.extend(recurrence_nodes(f"sigma_scan{count}_", *node.input, node.output[0]))
            count += 1
        else:
            out.append(node)
    del graph.node[:]
    graph.node.extend(out)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return count
