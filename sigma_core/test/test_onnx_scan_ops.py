"""sigma_core.onnx_scan_ops: the native scan kernel as onnxruntime-extensions custom ops (more of its tests, on
exported files, are in test_export.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
