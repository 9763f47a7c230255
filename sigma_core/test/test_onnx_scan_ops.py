"""sigma_core.onnx_scan_ops: the native scan kernel as onnxruntime-extensions custom ops, against the float64
reference, in ONNX Runtime, and on what a file or a user can hand it (its tests on an exported model are in
test_export.py, beside the export they need)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from test_export import map_scan_inputs, map_scan_reference, scan_inputs, sigma_props

from sigma_core import onnx_scan_ops
from sigma_core.onnx_runtime import KEY_PREFIX, OnnxModelError
from sigma_core.ops.selective_scan import selective_scan_reference

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

REGISTER_FROM_EIGHT_THREADS = """
import threading
from sigma_core import onnx_scan_ops  # onnxruntime_extensions not imported yet: its import widens the window

start = threading.Barrier(8)

def register():
    start.wait()
    onnx_scan_ops._register_ops()

threads = [threading.Thread(target=register) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
from onnxruntime_extensions import _ocos
print(sorted(op.op_type for op in _ocos.Opdef._odlist.values() if op.op_type.startswith("SigmaScan")),
      len(onnx_scan_ops._OP_IDS))
"""


def test_sessions_made_on_several_threads_at_once_declare_each_scan_op_once():
    # Two OnnxSegmenters made at once (two nodes in one process) declared every op and installed the hook once per
    # thread (eight times over, here), each hook routing only its own op ids back as arrays.
    done = subprocess.run([sys.executable, "-c", REGISTER_FROM_EIGHT_THREADS], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "['SigmaScanMap', 'SigmaScanRecurrence'] 2\n", done.stdout


def test_without_a_compiler_the_reason_the_file_runs_as_written_names_the_compiler_not_numba(tmp_path):
    code = "from sigma_core import onnx_scan_ops; print(onnx_scan_ops.unavailable_reason())"
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), SIGMA_NATIVE_CACHE_DIR=str(tmp_path / "native"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no-such-c++" in done.stdout and "does not run" in done.stdout and "numba" not in done.stdout, done.stdout


NAMES = ["u", "delta", "A", "B", "C", "D", "delta_bias"]


def expanded_scan_file(path: Path, edit_sites=None, extra_nodes=(), extra_outputs=()) -> Path:
    """One ai.sigma ScanRecurrence (softplus) expanded by scan_onnx.expand_scan_nodes, as sigma-export does, with
    its sigma.scan_sites (changed by ``edit_sites``, a forged list) and ``extra_nodes`` after it."""
    from sigma_core.ops import scan_onnx

    graph = helper.make_graph(
        [helper.make_node(scan_onnx.OP_TYPE, NAMES, ["y"], domain=scan_onnx.DOMAIN, softplus=1)], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"{n}{i}" for i in range(rank)])
         for n, rank in zip(NAMES, (3, 3, 2, 4, 4, 1, 1))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "d", "l"]), *extra_outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(scan_onnx.DOMAIN, 1)])
    sites = scan_onnx.expand_scan_nodes(model)
    assert [site["prefix"] for site in sites] == [onnx_scan_ops.site_prefix(0)]
    model.graph.node.extend(extra_nodes)
    entry = model.metadata_props.add()
    entry.key, entry.value = onnx_scan_ops.SITES_KEY, json.dumps(edit_sites(sites) if edit_sites else sites)
    onnx.save(model, str(path))
    return path


def test_a_scan_expanded_for_export_is_found_by_its_names_and_run_by_the_kernel(tmp_path):
    """The names scan_onnx.expand_scan_nodes gives a scan's nodes are the ones kernel_model looks for (one place,
    onnx_scan_ops.site_prefix / site_input): the file's own ops and the kernel's op give the same output."""
    path = expanded_scan_file(tmp_path / "scan.onnx")
    edited = onnx.load_from_string(onnx_scan_ops.kernel_model(path, threads=1))
    assert [node.op_type for node in edited.graph.node] == ["SigmaScanRecurrence"]
    assert list(edited.graph.node[0].input) == NAMES
    rng = np.random.default_rng(0)
    feeds = {"u": rng.standard_normal((2, 8, 21)), "delta": rng.standard_normal((2, 8, 21)) - 2,
             "A": -np.exp(rng.standard_normal((8, 4))), "B": rng.standard_normal((2, 2, 4, 21)),
             "C": rng.standard_normal((2, 2, 4, 21)), "D": rng.standard_normal(8),
             "delta_bias": rng.standard_normal(8) * 0.5}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    own = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    kernel_options = onnx_scan_ops.session_options(ort.SessionOptions())
    kernel_options.intra_op_num_threads = 1
    kernel = ort.InferenceSession(edited.SerializeToString(), kernel_options,
                                  providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert onnx_scan_ops.take_failure() is None
    np.testing.assert_allclose(kernel, own, rtol=1e-4, atol=1e-5)


def _with(**changes):
    return lambda sites: [dict(sites[0], **changes)]


@pytest.mark.parametrize("edit_sites, extra, message", [
    (_with(softplus=0), False, "scan sigma_scan0_ is listed in sigma.scan_sites as ScanRecurrence with softplus 0, "
                               "which its own nodes do not compute; export it again"),
    (_with(op="ScanMap"), False, "as ScanMap with softplus 1, which its own nodes do not compute"),
    (_with(prefix="sigma_scan7_"), False, "scan sigma_scan7_ of sigma.scan_sites is not in its graph; export it again"),
    (_with(output="z"), False, "scan sigma_scan0_ of sigma.scan_sites is not in its graph"),
    (None, True, "nodes outside its scans read 'sigma_scan0_input0', made inside one; export it again"),
])
def test_a_scan_list_that_does_not_fit_the_graph_is_refused_in_one_line(tmp_path, edit_sites, extra, message):
    """A forged or stale sigma.scan_sites must not put the kernel in place of other nodes than the scan's (a wrong
    kind or softplus ran another scan, unnoticed); nor may a node outside the scan lose a tensor made inside it."""
    leak = [helper.make_node("Identity", [onnx_scan_ops.site_input("sigma_scan0_", 0)], ["leak"])] if extra else []
    outputs = [helper.make_tensor_value_info("leak", TensorProto.FLOAT, None)] if extra else []
    path = expanded_scan_file(tmp_path / "scan.onnx", edit_sites, leak, outputs)
    with pytest.raises(onnx_scan_ops.ScanKernelUnavailable) as refused:
        onnx_scan_ops.kernel_model(path, threads=1)
    assert str(refused.value).startswith("scan.onnx: ") and message in str(refused.value), str(refused.value)


@pytest.mark.parametrize("height,width,batch,directions", [
    (1, 1, 1, 4), (3, 5, 2, 4), (7, 9, 2, 4), (1, 2, 1, 2), (1, 26, 2, 2),
])
def test_native_kernel_ops_for_onnx_runtime_match_the_reference_layouts(height, width, batch, directions):
    """onnx_scan_ops.scan_map (the native kernel on the arrays ONNX Runtime hands a custom op) equals the float64
    reference through cross_scan / concat_scan and their merges, within 1e-4 relative; scan_recurrence (grouped
    sequences, extreme decays included) equals selective_scan_reference."""
    from sigma_core import onnx_scan_ops

    inputs = map_scan_inputs(height, width, batch, 6, 3, directions)
    expected = map_scan_reference(*inputs, directions)
    got = onnx_scan_ops.scan_map(*(t.numpy() for t in inputs), threads=2)
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
    for softplus, delta_scale, a_scale in ((1, 1.0, 1.0), (0, 1.0, 1.0), (1, 1e3, 1e3)):
        seq = scan_inputs(batch, 8, height * width + 3, 4, 2, seed=height, delta_scale=delta_scale, a_scale=a_scale)
        if not softplus:
            seq = (seq[0], seq[1].abs(), *seq[2:])  # delta >= 0, as softplus would give
        want = selective_scan_reference(*(t.double() for t in seq), delta_softplus=bool(softplus)).numpy()
        got = onnx_scan_ops.scan_recurrence(*(t.numpy() for t in seq), threads=1, softplus=softplus)
        assert np.isfinite(got).all() and np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_native_kernel_ops_refuse_inputs_that_do_not_fit_their_layout():
    """The kernel reads raw memory by the shapes it is given: every misfit is a ValueError naming the shapes,
    before any read (ONNX Runtime turns it into the run's error, one line)."""
    from sigma_core import onnx_scan_ops

    u, delta, A, B, C, D, bias = (t.numpy() for t in map_scan_inputs(3, 5, 1, 6, 3, 4))
    misfits = {
        "delta of 3 directions": (u, delta[..., :3, :], A, B, C, D, bias),
        "short B": (u, delta, A, B[:2], C, D, bias),
        "C unlike B": (u, delta, A, B, C[..., :2], D, bias),
        "A of other states": (u, delta, A[:, :2], B, C, D, bias),
        "short D": (u, delta, A, B, C, D[:5], bias),
        "two directions on a map of 3 rows": (u, delta[..., :2, :], A[:12], B[..., :2, :], C[..., :2, :], D[:12],
                                              bias[:12]),
        "u of rank 3": (u[0], delta, A, B, C, D, bias),
    }
    for why, args in misfits.items():
        with pytest.raises(ValueError, match="SigmaScanMap: inputs of shapes"):
            onnx_scan_ops.scan_map(*args)
            pytest.fail(why)
    u, delta, A, B, C, D, bias = (t.numpy() for t in scan_inputs(1, 8, 10, 4, 2))
    three_groups = (B[:, :1].repeat(3, 1), C[:, :1].repeat(3, 1))  # 8 channels do not split into 3 groups
    for args in ((u, delta[:, :4], A, B, C, D, bias), (u, delta, A, B[:, :, :, :9], C, D, bias),
                 (u, delta, A, *three_groups, D, bias), (u, delta, A[:4], B, C, D, bias)):
        with pytest.raises(ValueError, match="SigmaScanRecurrence: inputs of shapes"):
            onnx_scan_ops.scan_recurrence(*args)


def test_native_kernel_ops_hold_every_array_the_kernel_reads_while_it_runs(monkeypatch):
    """The kernel gets addresses only and runs with the GIL released: an array made for it and dropped before it
    returns (the c_group table was a temporary) is reused by the next allocation of another thread, and the
    kernel read B/C at the garbage set numbers far out of bounds (a segfault with two threads). Here that other
    thread's allocations come just before the call; the tables must still hold 0..sets-1."""
    import ctypes

    from sigma_core import onnx_scan_ops

    kernel = onnx_scan_ops.run_forward

    def other_thread_allocates_first(lib, **args):
        junk = [np.full(args["sets"], 1 << 40, np.int64) for _ in range(4)]  # noqa: F841 - held, as a thread would
        c_group = np.ctypeslib.as_array((ctypes.c_int64 * args["sets"]).from_address(args["c_group"]))
        assert c_group.tolist() == list(range(args["sets"])), "c_group was freed before the kernel ran"
        kernel(lib, **args)

    monkeypatch.setattr(onnx_scan_ops, "run_forward", other_thread_allocates_first)
    inputs = map_scan_inputs(3, 5, 2, 6, 3, 4)
    expected = map_scan_reference(*inputs, 4)
    got = onnx_scan_ops.scan_map(*(t.numpy() for t in inputs))
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4
    seq = scan_inputs(2, 8, 19, 4, 2)
    want = selective_scan_reference(*(t.double() for t in seq), delta_softplus=True).numpy()
    got = onnx_scan_ops.scan_recurrence(*(t.numpy() for t in seq))
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


SCAN_OP_IN_ONNX_RUNTIME = """
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
from sigma_core import onnx_scan_ops

onnx_scan_ops._register_ops()
names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
node = helper.make_node("SigmaScanRecurrence", names, ["y"], domain=onnx_scan_ops.DOMAIN, threads=1, softplus=1)
graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
opsets = [helper.make_opsetid("", 18), helper.make_opsetid(onnx_scan_ops.DOMAIN, 1)]
model = helper.make_model(graph, opset_imports=opsets)
session = ort.InferenceSession(model.SerializeToString(), onnx_scan_ops.session_options(ort.SessionOptions()),
                               providers=["CPUExecutionProvider"])


def failure():
    error = onnx_scan_ops.take_failure()
    return error if error is None else f"{type(error).__name__}: {error}"


rng = np.random.default_rng(0)
u = rng.standard_normal((1, 8, 10), dtype=np.float32)
A = -np.ones((8, 4), np.float32)
B = rng.standard_normal((1, 2, 4, 10), dtype=np.float32)
ones = np.ones(8, np.float32)
fits = dict(u=u, delta=u, A=A, B=B, C=B, D=ones, delta_bias=ones)
y = session.run(None, {**fits, "B": B[..., :9]})[0]  # B one step short: the kernel would read past it
print("misfit", y.shape, bool(np.isnan(y).all()), failure())
y = session.run(None, fits)[0]
print("fit", bool(np.isfinite(y).all()), failure())
from onnxruntime_extensions import PyCustomOpDef, _ocos

PyCustomOpDef.install_hooker(_ocos._on_pyop_invocation)  # another library's hook, installed after ours
y = session.run(None, {**fits, "B": B[..., :9]})[0]
print("misfit under another hook", bool(np.isnan(y).all()), failure()[:39])


def interrupted():  # Ctrl-C's KeyboardInterrupt, raised at the op's next Python line
    raise KeyboardInterrupt


onnx_scan_ops.library = interrupted
y = session.run(None, fits)[0]
print("interrupt", bool(np.isnan(y).all()), repr(onnx_scan_ops.take_failure()))
"""


def test_a_scan_op_error_inside_onnx_runtime_is_reported_not_a_process_abort():
    """onnxruntime-extensions aborts the whole process (std::terminate) on an exception raised in a Python op, so a
    misfit raised as ValueError killed the node without a word. The ops give NaN instead and keep the error for
    take_failure (OnnxSegmenter.logits raises it as OnnxRunError); the next fitting run is clean; so also where
    another library installs its own invocation hook after ours, and for Ctrl-C's KeyboardInterrupt (raised at the
    op's next line: a Ctrl-C during a run aborted the process, core dumped; logits raises it again)."""
    done = subprocess.run([sys.executable, "-c", SCAN_OP_IN_ONNX_RUNTIME], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    misfit, fit, other_hook, interrupt = done.stdout.strip().splitlines()[-4:]
    assert misfit.startswith("misfit (1, 8, 10) True ValueError: SigmaScanRecurrence: inputs of shapes"), misfit
    assert "'B': [1, 2, 4, 9]" in misfit
    assert fit == "fit True None"
    assert other_hook == "misfit under another hook True ValueError: SigmaScanRecurrence: inputs", other_hook
    assert interrupt == "interrupt True KeyboardInterrupt()", interrupt


def test_malformed_scan_lists_and_metadata_are_refused_in_one_line_also_under_python_O(tmp_path):
    """sigma.scan_sites is read from the file: each misfit is ScanKernelUnavailable naming it (auto then runs the
    file's own ops), never a TypeError/RecursionError traceback, also under ``python -O`` (which drops asserts:
    the checks were asserts). The other sigma.* values nested past Python's recursion are OnnxModelError too."""
    from sigma_core.onnx_runtime import read_metadata

    site = {"prefix": "sigma_scan0_", "op": "ScanMap", "output": "y", "softplus": 1}
    forged = {"an op of no string": [dict(site, op=["ScanMap"])], "a site of no object": [None], "no list": {},
              "a number for the prefix": [dict(site, prefix=3)], "softplus 2": [dict(site, softplus=2)],
              "no output": [dict(site, output="")], "twice the same prefix": [site, site]}
    texts = [json.dumps(value) for value in forged.values()] + ["[" * 100000 + "]" * 100000, "[NaN]", "[]",
                                                               json.dumps([site] * 20000)]
    script = ("import json, sys\nfrom sigma_core.onnx_scan_ops import ScanKernelUnavailable, _parse_sites\n"
              "for text in json.load(sys.stdin):\n    try:\n        _parse_sites(text, 'f.onnx')\n"
              "        print('taken')\n    except ScanKernelUnavailable as err:\n        print(err)\n")
    for flags in ([], ["-O"]):
        done = subprocess.run([sys.executable, *flags, "-c", script], input=json.dumps(texts), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, (flags, done.stderr[-2000:])
        lines = done.stdout.strip().splitlines()
        refused = r"f\.onnx: sigma\.scan_sites is malformed \(.+\); export it again"
        assert len(lines) == len(texts) and all(re.fullmatch(refused, line) for line in lines), (flags, lines)
    props = sigma_props()
    props[KEY_PREFIX + "classes"] = "[" * 100000 + "]" * 100000
    with pytest.raises(OnnxModelError, match="metadata is malformed .nested deeper than sigma-export writes"):
        read_metadata(props, "m.onnx")


def test_an_onnxruntime_extensions_release_without_the_hook_the_scan_ops_use_is_refused_in_one_line():
    """The scan ops reach into onnxruntime-extensions' private parts (its invocation hook, its op table): a release
    without them gave an AttributeError traceback at load, not auto's fallback; now ScanKernelUnavailable naming
    the release to install, and nothing registered."""
    script = ("import onnxruntime_extensions._ocos as ocos\nfrom sigma_core import onnx_scan_ops\n"
              "del ocos._on_pyop_invocation\ntry:\n    onnx_scan_ops._register_ops()\n"
              "except onnx_scan_ops.ScanKernelUnavailable as err:\n    print(err, onnx_scan_ops._OP_IDS)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"onnxruntime-extensions \S+ lacks what the scan ops use \(.*_on_pyop_invocation.*\): pip "
                        r"install onnxruntime-extensions==\S+, the release tested set\(\)\n", done.stdout), done.stdout


CTRL_C_DURING_A_RUN = """
import os, signal, threading, time
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
from sigma_core import onnx_scan_ops

signal.signal(signal.SIGINT, signal.default_int_handler)  # a child of a shell may inherit SIGINT ignored
names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
nodes = [helper.make_node("MatMul", ["m", "m"], ["mm"]),  # ~1 s of C++ in ONNX Runtime before the scan op
         helper.make_node("ReduceSum", ["mm"], ["total"], keepdims=0),
         helper.make_node("Mul", ["total", "zero"], ["nothing"]),
         helper.make_node("Add", ["u", "nothing"], ["u_late"]),
         helper.make_node("SigmaScanRecurrence", ["u_late"] + names[1:], ["y"], domain=onnx_scan_ops.DOMAIN,
                          threads=1, softplus=1)]
graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                       for n in names + ["m", "zero"]],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
opsets = [helper.make_opsetid("", 18), helper.make_opsetid(onnx_scan_ops.DOMAIN, 1)]
options = onnx_scan_ops.session_options(ort.SessionOptions())
options.intra_op_num_threads = 1
session = ort.InferenceSession(helper.make_model(graph, opset_imports=opsets).SerializeToString(), options,
                               providers=["CPUExecutionProvider"])
u = np.ones((1, 8, 10), np.float32)
B = np.ones((1, 2, 4, 10), np.float32)
feeds = dict(u=u, delta=u, A=-np.ones((8, 4), np.float32), B=B, C=B, D=np.ones(8, np.float32),
             delta_bias=np.ones(8, np.float32), m=np.ones((3000, 3000), np.float32), zero=np.zeros((), np.float32))
threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while the MatMul runs
try:
    with onnx_scan_ops.signals_held():
        started = time.monotonic()
        y = session.run(None, feeds)[0]
    print("not interrupted", time.monotonic() - started)
except KeyboardInterrupt:
    print("interrupted after the run", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_ctrl_c_during_a_run_of_the_scan_ops_interrupts_after_the_run_not_a_process_abort():
    """Python runs a signal's handler at the main thread's next Python line: during a run, the scan op's first line
    (its function's entry, outside any try), where Ctrl-C's KeyboardInterrupt aborted the process (core dumped:
    sigma-predict, sigma-replay-eval, a benchmark). signals_held (OnnxSegmenter.logits runs in it) notes the
    signal during the run and runs its handler after it: KeyboardInterrupt where the caller can take it."""
    done = subprocess.run([sys.executable, "-c", CTRL_C_DURING_A_RUN], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "interrupted after the run True", done.stdout


SIGNAL_HANDLERS_OF_THE_SYSTEM = """
import faulthandler, os, signal, sys, tempfile
from sigma_core.onnx_scan_ops import signals_held

seen = []
signal.signal(signal.SIGUSR1, lambda number, frame: seen.append(number))
log = tempfile.TemporaryFile("w+")
faulthandler.register(signal.SIGUSR1, file=log, chain=True)  # a system-level handler over Python's, as rclpy's
with signals_held():
    os.kill(os.getpid(), signal.SIGUSR1)
    during = list(seen)
after = list(seen)
os.kill(os.getpid(), signal.SIGUSR1)
log.seek(0)
print(during, after, list(seen), log.read().count("most recent call first"))
"""


def test_signals_held_during_a_run_keep_the_handler_the_system_calls():
    """signals_held (OnnxSegmenter.logits, native scans, main thread) notes a signal during the run and sends it
    again after: Python's handler runs once, after, and the system-level handler installed over Python's (rclpy's,
    which wakes a spinning executor; here faulthandler's) is still the one the system calls, for this signal and
    the next. signal.signal had replaced it: a node warmed up on its main thread then ignored Ctrl-C."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_HANDLERS_OF_THE_SYSTEM], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    usr1 = int(signal.SIGUSR1)
    assert done.stdout.strip() == f"[] [{usr1}] [{usr1}, {usr1}] 2", done.stdout


def test_other_python_ops_of_the_process_keep_onnxruntime_extensions_default_hook():
    """The invocation hook installed for the scan ops hands their arrays back directly; a Python op of anyone
    else in the same process still goes through onnxruntime-extensions' own path and gives its right result."""
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    from sigma_core import onnx_scan_ops

    onnx_scan_ops._register_ops()

    @onnx_op(op_type="SigmaTestTriple", inputs=[PyCustomOpDef.dt_float], outputs=[PyCustomOpDef.dt_float])
    def triple(x):
        return x * 3

    node = helper.make_node("SigmaTestTriple", ["x"], ["y"], domain=onnx_scan_ops.DOMAIN)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(onnx_scan_ops.DOMAIN, 1)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x * 3)
