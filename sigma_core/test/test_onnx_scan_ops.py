"""sigma_core.onnx_scan_ops: the native scan kernel as onnxruntime-extensions custom ops (more of its tests, on
exported files, are in test_export.py)."""
from __future__ import annotations

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
