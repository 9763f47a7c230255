"""The selective scans of an exported file run by the native kernel inside ONNX Runtime (CPU), with no torch.

A file written by sigma-export computes every scan with standard ONNX ops (a chunked ``Scan`` loop, see
sigma_core.ops.scan_onnx), so any runtime runs it; ONNX Runtime's CPU provider runs those loops ~2.6x slower
than torch with our kernel. The file also lists its scans in the metadata ``sigma.scan_sites``: for each, the
names its nodes start with (its seven inputs u, delta, A, B, C, D, delta_bias enter through Identity nodes
``{prefix}input0..6``), its output and its layout (``ScanMap``: K step orders over a channels-last map;
``ScanRecurrence``: grouped sequences). At load,
:func:`kernel_model` replaces each such group of nodes by one node of a Python custom op of
onnxruntime-extensions (domain ``ai.onnx.contrib``, the domain its Python ops are served in), which calls
``sigma_core.native_kernel`` on the arrays ONNX Runtime hands it. The file itself is never changed.

Needs, besides onnxruntime: ``onnx`` (to edit the graph), ``onnxruntime-extensions`` (the custom-op bridge)
and a C++ compiler (the kernel is built on first use, as for the torch path). Where one is missing,
:func:`unavailable_reason` says which in one line and the file runs as written.

The bridge's default return path turns every output into a Python list (90 ms per million floats); the
invocation hook installed here returns numpy arrays to it instead (1.4 ms), for these ops only; any other
Python op of the process keeps the default hook.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import re
import signal
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from .native_kernel import KINDS, BackendUnavailable, library, run_forward
from .onnx_runtime import KEY_PREFIX, parse_metadata_value

SITES_KEY = KEY_PREFIX + "scan_sites"
DOMAIN = "ai.onnx.contrib"
OPS = {"ScanMap": "SigmaScanMap", "ScanRecurrence": "SigmaScanRecurrence"}  # site kind -> custom op type
TESTED_EXTENSIONS = "0.15.2"  # the onnxruntime-extensions release whose private hook and op table _register_ops uses
INSTALL_HINT = "pip install onnx onnxruntime-extensions (and a C++ compiler: apt install g++)"
SITE_PREFIX = re.compile(r"sigma_scan\d+_")  # how the names of a scan's nodes start (see site_prefix)


def site_prefix(index: int) -> str:
    """How the names of the nodes of a file's scan ``index`` start (ops.scan_onnx.expand_scan_nodes names them)."""
    return f"sigma_scan{index}_"


def site_input(prefix: str, index: int) -> str:
    """The Identity node, and its output, through which input ``index`` (0..6: u, delta, A, B, C, D, delta_bias)
    enters the scan whose nodes start with ``prefix``."""
    return f"{prefix}input{index}"


class ScanKernelUnavailable(RuntimeError):
    """The native scan kernel cannot run this file's scans in ONNX Runtime here; the message says why."""


def unavailable_reason() -> Optional[str]:
    """None where onnx, onnxruntime-extensions and the native kernel are all here, else one line saying what is
    missing and how to install it."""
    for module in ("onnx", "onnxruntime_extensions"):
        try:
            __import__(module)
        except ImportError as err:
            return f"{module} is not installed ({err}): {INSTALL_HINT}"
    try:
        library()
    except BackendUnavailable as err:
        return str(err)
    return None


def kernel_model(path: Path, threads: int) -> bytes:
    """The model at ``path`` with each scan listed in its ``sigma.scan_sites`` replaced by one custom-op node
    running the native kernel on ``threads`` threads, serialized for ort.InferenceSession; the custom ops are
    registered with onnxruntime-extensions (see session_options). Raises ScanKernelUnavailable where a package or
    the kernel is missing, or the file lists no scans (an older sigma-export) or lists them wrongly."""
    reason = unavailable_reason()
    if reason:
        raise ScanKernelUnavailable(reason)
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path))  # external data (checked by onnx_file before) is read in
    except Exception as err:  # noqa: BLE001 - a damaged file: ONNX Runtime then names it when it opens the file
        raise ScanKernelUnavailable(f"{path.name} does not parse as ONNX ({type(err).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if SITES_KEY not in props:
        raise ScanKernelUnavailable(f"{path.name} does not list its scans ({SITES_KEY}: written by sigma-export from "
                                    "this version on); export it again for the native scan kernel")
    sites = _parse_sites(props[SITES_KEY], path.name)
    graph = model.graph
    by_prefix: dict[str, list[int]] = {site["prefix"]: [] for site in sites}
    for index, node in enumerate(graph.node):
        match = SITE_PREFIX.match(node.name)
        if match and match.group(0) in by_prefix:
            by_prefix[match.group(0)].append(index)
    replaced: dict[int, object] = {}  # index of a site's first node -> its custom-op node
    dropped: set[int] = set()
    for site in sites:
        indices = by_prefix[site["prefix"]]
        kernel = _kernel_node(site, [graph.node[i] for i in indices], threads, path.name)  # raises for none
        replaced[indices[0]] = kernel
        dropped.update(indices)
    kept = [replaced.get(i, node) for i, node in enumerate(graph.node) if i in replaced or i not in dropped]
    inner = {name for i in dropped for name in graph.node[i].output} - {site["output"] for site in sites}
    leaked = sorted((_names_read(kept) | {out.name for out in graph.output}) & inner)
    if leaked:
        raise ScanKernelUnavailable(f"{path.name}: nodes outside its scans read {leaked[0]!r}, made inside one; "
                                    "export it again")
    del graph.node[:]
    graph.node.extend(kept)
    model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    _register_ops()
    return model.SerializeToString()


def _kernel_node(site: dict, nodes: list, threads: int, source: str):
    """The custom-op node running ``site`` (one entry of sigma.scan_sites) on the native kernel in place of
    ``nodes``, the file's nodes whose names start with its prefix. ScanKernelUnavailable where they are not the
    scan listed: its input Identity nodes or output missing, or another kind or softplus than listed."""
    from onnx import helper

    # by the tensors the site's nodes make (one producer each), not by node names, which need not be unique
    made = {name: node for node in nodes for name in node.output}
    inputs = [made.get(site_input(site["prefix"], j)) for j in range(7)]
    if not nodes or site["output"] not in made or any(
            entry is None or entry.op_type != "Identity" or len(entry.input) != 1 for entry in inputs):
        raise ScanKernelUnavailable(f"{source}: scan {site['prefix']} of {SITES_KEY} is not in its graph; "
                                    "export it again")
    # the kind and softplus listed must be the site's own (a wrong one ran, unnoticed, another scan): a map
    # scan merges its directions with a ReduceSum, softplus takes a Log in the chunk loop (ops.scan_onnx)
    site_ops = {node.op_type for node in nodes}
    loop_ops = {n.op_type for node in nodes for a in node.attribute if a.HasField("g") for n in a.g.node}
    if ("ReduceSum" in site_ops) != (site["op"] == "ScanMap") or ("Log" in loop_ops) != bool(site["softplus"]):
        raise ScanKernelUnavailable(f"{source}: scan {site['prefix']} is listed in {SITES_KEY} as {site['op']} "
                                    f"with softplus {site['softplus']}, which its own nodes do not compute; "
                                    "export it again")
    return helper.make_node(
        OPS[site["op"]], [entry.input[0] for entry in inputs], [site["output"]], name=site["prefix"] + "kernel",
        domain=DOMAIN, threads=int(threads), softplus=int(site["softplus"]))


def _names_read(nodes) -> set[str]:
    """Every tensor name ``nodes`` read, in their subgraphs (If branches, loop bodies) too."""
    read = set()
    for node in nodes:
        read.update(node.input)
        for attribute in node.attribute:
            read |= _names_read([n for g in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
                                 for n in g.node])
    return read


def session_options(options):
    """``options`` (ort.SessionOptions) with onnxruntime-extensions' custom-op library registered, the scan ops
    declared first: the library takes the Python ops declared when it is registered, and a session of a model
    using ops declared later crashed the process (segmentation fault, not an error). Raises ScanKernelUnavailable
    where onnxruntime-extensions lacks the parts the ops use, and onnxruntime's own error where its library does not
    load into this onnxruntime (OnnxSegmenter turns both into the file's own scan ops, with a warning)."""
    from onnxruntime_extensions import get_library_path

    _register_ops()
    options.register_custom_ops_library(get_library_path())
    return options


def _parse_sites(text: str, source: str) -> list[dict]:
    """sigma.scan_sites -> list of site dicts, every field checked (the file is input: a misfit must not reach the
    kernel as a wrong node); ScanKernelUnavailable naming the misfit. Plain checks, no assert: ``python -O``
    drops those."""
    try:
        sites = parse_metadata_value(text)
    except ValueError as err:
        sites, problem = None, str(err)[:200]
    else:
        problem = "not a list of scans" if not isinstance(sites, list) or not sites else None
    for site in sites if problem is None else ():
        problem = _site_problem(site)
        if problem:
            break
    if problem is None and len({site["prefix"] for site in sites}) != len(sites):
        problem = "a prefix listed twice"
    if problem:
        raise ScanKernelUnavailable(f"{source}: {SITES_KEY} is malformed ({problem}); export it again")
    return sites


def _site_problem(site) -> Optional[str]:
    """What is wrong with one entry of sigma.scan_sites, None if nothing."""
    if not isinstance(site, dict):
        return f"{str(site)[:80]} is not an object"
    if not isinstance(site.get("op"), str) or site["op"] not in OPS:
        return f"op {str(site.get('op'))[:80]!r}"
    if not isinstance(site.get("prefix"), str) or not SITE_PREFIX.fullmatch(site["prefix"]):
        return f"prefix {str(site.get('prefix'))[:80]!r}"
    if not isinstance(site.get("output"), str) or not site["output"]:
        return "output"
    if site.get("softplus") not in (0, 1):
        return "softplus"
    return None


# --- the custom ops ------------------------------------------------------------------------------------


def _check(condition: bool, op: str, shapes: dict) -> None:
    if not condition:  # raised inside ONNX Runtime's run: the node's name and these shapes reach the user
        raise ValueError(f"{op}: inputs of shapes {({k: list(v) for k, v in shapes.items()})} do not fit its layout")


@functools.lru_cache(maxsize=32)
def _orders(height: int, width: int, directions: int) -> np.ndarray:
    """(K, H*W) int64, step t of direction k reads row-major position order[k, t]: rows, columns, both reversed
    (K = 4, ops.cross_scan_order), or rows and rows reversed (K = 2, the two-way scan of a one-row map)."""
    rows = np.arange(height * width, dtype=np.int64)
    if directions == 2:
        return np.ascontiguousarray(np.stack([rows, rows[::-1]]))
    cols = rows.reshape(height, width).T.ravel()
    return np.ascontiguousarray(np.stack([rows, cols, rows[::-1], cols[::-1]]))


def _strided(a: np.ndarray, *axes_and_strides) -> tuple[int, tuple[int, ...]]:
    return a.ctypes.data, tuple(axes_and_strides)


def _params(A, D, delta_bias, channels: int, op: str, shapes: dict):
    _check(A.ndim == 2 and A.shape[0] == channels and D.shape == (channels,) and delta_bias.shape == (channels,),
           op, shapes)
    return (np.ascontiguousarray(A, np.float32), np.ascontiguousarray(D, np.float32),
            np.ascontiguousarray(delta_bias, np.float32))


def scan_map(u, delta, A, B, C, D, delta_bias, threads: int = 1, softplus: int = 1) -> np.ndarray:
    """sigma::scan_map (ops.scan_onnx) on float32 arrays: u (H, W, b, D) channels-last map; delta (H, W, b, K, D);
    B, C (H, W, b, K, N); A (K*D, N); D, delta_bias (K*D,); K = 4 (cross scan) or 2. Returns (H, W, b, D) float32,
    the sum over the K directions. ValueError for shapes that do not fit."""
    shapes = {"u": u.shape, "delta": delta.shape, "A": A.shape, "B": B.shape, "C": C.shape}
    _check(u.ndim == 4 and delta.ndim == 5 and B.ndim == 5, "SigmaScanMap", shapes)
    height, width, batch, dim = u.shape
    k, n = delta.shape[3], B.shape[4]
    _check(k in (2, 4) and (k == 4 or height == 1) and delta.shape == (height, width, batch, k, dim)
           and B.shape == (height, width, batch, k, n) and C.shape == B.shape and n > 0, "SigmaScanMap", shapes)
    A, D, delta_bias = _params(A, D, delta_bias, k * dim, "SigmaScanMap", {**shapes, "D": D.shape})
    _check(A.shape[1] == n, "SigmaScanMap", shapes)
    out = np.empty(u.shape, np.float32)
    if out.size == 0:
        return out
    u, delta, B, C = (np.ascontiguousarray(t, np.float32) for t in (u, delta, B, C))
    # every array the kernel reads by address is held by a name until it returns: it runs with the GIL released,
    # and another thread's allocation reuses a freed buffer at once (a temporary c_group was overwritten so)
    order, c_group = _orders(height, width, k), np.arange(k, dtype=np.int64)
    positions = height * width
    run_forward(
        library(), u=_strided(u, dim, 1, batch * dim), delta=_strided(delta, k * dim, 1, batch * k * dim),
        A=A.ctypes.data, B=_strided(B, k * n, n, 1, batch * k * n), C=_strided(C, k * n, n, 1, batch * k * n),
        D=D.ctypes.data, delta_bias=delta_bias.ctypes.data, order=order.ctypes.data, order_rows=k, length=positions,
        c_group=c_group.ctypes.data, sets=k, per=dim, n_state=n, batch=batch, u_shared=True,
        merged=True, out=_strided(out, dim, 1, batch * dim), kind=KINDS["float32"], softplus=bool(softplus),
        threads=threads)
    return out


def scan_recurrence(u, delta, A, B, C, D, delta_bias, threads: int = 1, softplus: int = 1) -> np.ndarray:
    """sigma::scan_recurrence (ops.scan_onnx) on float32 arrays: u, delta (b, D, L); B, C (b, G, N, L); A (D, N);
    D, delta_bias (D,). Returns (b, D, L) float32. ValueError for shapes that do not fit."""
    shapes = {"u": u.shape, "delta": delta.shape, "A": A.shape, "B": B.shape, "C": C.shape}
    _check(u.ndim == 3 and delta.shape == u.shape and B.ndim == 4 and C.shape == B.shape, "SigmaScanRecurrence",
           shapes)
    batch, dim, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    _check(B.shape[0] == batch and B.shape[3] == length and groups > 0 and n > 0 and dim % groups == 0,
           "SigmaScanRecurrence", shapes)
    A, D, delta_bias = _params(A, D, delta_bias, dim, "SigmaScanRecurrence", {**shapes, "D": D.shape})
    _check(A.shape[1] == n, "SigmaScanRecurrence", shapes)
    out = np.empty(u.shape, np.float32)
    if out.size == 0:
        return out
    u, delta, B, C = (np.ascontiguousarray(t, np.float32) for t in (u, delta, B, C))
    order, c_group = np.arange(length, dtype=np.int64)[None], np.arange(groups, dtype=np.int64)  # held: see scan_map
    run_forward(
        library(), u=_strided(u, dim * length, length, 1), delta=_strided(delta, dim * length, length, 1),
        A=A.ctypes.data, B=_strided(B, *(s // 4 for s in B.strides)), C=_strided(C, *(s // 4 for s in C.strides)),
        D=D.ctypes.data, delta_bias=delta_bias.ctypes.data, order=order.ctypes.data, order_rows=1, length=length,
        c_group=c_group.ctypes.data, sets=groups, per=dim // groups, n_state=n,
        batch=batch, u_shared=False, merged=False, out=_strided(out, dim * length, length, 1),
        kind=KINDS["float32"], softplus=bool(softplus), threads=threads)
    return out


_OP_IDS: set[int] = set()  # ids of our ops' Opdefs in onnxruntime-extensions, once registered
_REGISTERING = threading.Lock()  # two sessions made at once on two threads declared every op twice, hook twice
_FAILURE = threading.local()  # .error: the first exception a scan op of this thread met in a run, for take_failure


def take_failure() -> Optional[BaseException]:
    """The exception a scan op met in the calling thread's last session run (None: none), cleared.

    An exception raised in a Python op does not reach ONNX Runtime's caller: onnxruntime-extensions' bridge
    aborts the whole process on it (std::terminate), Ctrl-C's KeyboardInterrupt included (a signal's handler runs
    at the next Python line of the main thread: during a run, mostly in a scan op). So the ops never raise: on an
    error (inputs that do not fit, the kernel's refusal, out of memory, an interrupt) the op's output is NaN,
    ONNX Runtime's run goes on, and the caller (OnnxSegmenter.logits) asks here, after each run, to raise it
    there. Sessions run their nodes on the calling thread (sequential execution), hence one slot per thread."""
    error, _FAILURE.error = getattr(_FAILURE, "error", None), None
    return error


@contextlib.contextmanager
def signals_held():
    """Hold the Python signal handlers (Ctrl-C's KeyboardInterrupt, a SIGTERM handler that raises, an alarm) while a
    session runs on the main thread, and send each signal caught meanwhile again after it, where it may raise.

    A handler runs at the main thread's next Python line, which during a run is mostly in a scan op: one raising
    there, even at the op function's first line (outside any try), aborted the process (see take_failure). The
    handler the operating system calls is restored as it was, not only Python's: rclpy's (which wakes its
    executor, then calls Python's) was replaced by signal.signal, and a spinning node then ignored Ctrl-C."""
    held = {}
    if threading.current_thread() is threading.main_thread():  # Python runs handlers on the main thread only
        try:
            held = {sig: (handler, _os_action(sig)) for sig in signal.valid_signals()
                    if callable(handler := signal.getsignal(sig))}
        except OSError:  # no sigaction to restore the system's handler with: nothing held
            held = {}
    caught: list[int] = []
    for sig in held:
        signal.signal(sig, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for sig, (handler, action) in held.items():
            signal.signal(sig, handler)
            _os_action(sig, action)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _os_action(sig: int, action=None):
    """The system's handler of ``sig`` (sigaction, copied as opaque bytes), after setting ``action`` if given.
    OSError where the C library has no sigaction."""
    try:
        sigaction = ctypes.CDLL(None, use_errno=True).sigaction
    except (OSError, AttributeError) as err:
        raise OSError(f"no sigaction: {err}") from None
    old = ctypes.create_string_buffer(1024)  # larger than any struct sigaction
    if sigaction(sig, action, old) != 0:
        raise OSError(ctypes.get_errno(), f"sigaction({sig}) failed")
    return old


def _failed(error: BaseException, like: np.ndarray) -> np.ndarray:
    """Keep ``error`` for take_failure (the first of a run: the cause) and give the op's NaN output."""
    if getattr(_FAILURE, "error", None) is None:
        _FAILURE.error = error
    return np.full(np.shape(like), np.nan, np.float32)


def _never_raising(body):
    """``body`` as an op that never raises (see take_failure). In the op itself, not only in our invocation hook:
    another library may install its own hook after ours, and the default path would abort on the error as well."""

    @functools.wraps(body)
    def op(*inputs, **attributes):
        try:
            return body(*inputs, **attributes)
        except BaseException as err:  # noqa: BLE001 - raised on, even Ctrl-C, it would abort the process
            return _failed(err, inputs[0])

    return op


def _register_ops() -> None:
    """Declare SigmaScanMap / SigmaScanRecurrence to onnxruntime-extensions (once per process) and route their
    outputs back as numpy arrays (see the module docstring). Thread-safe."""
    with _REGISTERING:
        if not _OP_IDS:
            _OP_IDS.update(_declare_ops())


def _declare_ops() -> set[int]:
    """Declare the scan ops, install the invocation hook; the ids of the ops' Opdefs. ScanKernelUnavailable where
    this onnxruntime-extensions lacks the private parts used (nothing is then declared)."""
    import onnxruntime_extensions

    try:  # private parts (the hook, the op table) first: a release without them registers nothing
        from onnxruntime_extensions import PyCustomOpDef, _ocos, onnx_op

        default, registered, install = _ocos._on_pyop_invocation, _ocos.Opdef._odlist, PyCustomOpDef.install_hooker
        kinds = {"inputs": [PyCustomOpDef.dt_float] * 7, "outputs": [PyCustomOpDef.dt_float],
                 "attrs": {"threads": PyCustomOpDef.dt_int64, "softplus": PyCustomOpDef.dt_int64}}
    except (ImportError, AttributeError) as err:
        version = getattr(onnxruntime_extensions, "__version__", "?")
        raise ScanKernelUnavailable(f"onnxruntime-extensions {version} lacks what the scan ops use ({err}): pip "
                                    f"install onnxruntime-extensions=={TESTED_EXTENSIONS}, the release tested"
                                    ) from None
    ops = [onnx_op(op_type=OPS["ScanMap"], **kinds)(_never_raising(scan_map)),
           onnx_op(op_type=OPS["ScanRecurrence"], **kinds)(_never_raising(scan_recurrence))]
    ids = {id(op) for op in ops}

    def invoke(op_id, feed, attributes):
        if op_id not in ids:
            return default(op_id, feed, attributes)
        try:
            op = registered[op_id]
            out = op.body(*feed, **op.cast_attributes(attributes))
        except BaseException as err:  # noqa: BLE001 - a Ctrl-C between these lines: see take_failure
            out = _failed(err, feed[0])
        return op_id, out.shape, out.reshape(-1)

    install(invoke)
    return ids
