"""sigma_core.onnx_scan_ops: the native scan kernel as onnxruntime-extensions custom ops (more of its tests, on
exported files, are in test_export.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sigma_core import onnx_scan_ops

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
