"""sigma_core.native_kernel: building, caching and loading the native scan library (the kernel's arithmetic is
tested in test_scan_native.py, its failure modes in test_scan_native_edges.py)."""
from __future__ import annotations

import threading
import time

import pytest

from sigma_core import native_kernel


def test_the_library_is_loaded_once_when_several_threads_ask_at_once(monkeypatch):
    # Two sessions made at once on two threads each built and loaded the library (library() was an unlocked cache).
    loads = []

    def slow_load():
        loads.append(threading.get_ident())
        time.sleep(0.2)  # a build takes seconds: every thread arrives meanwhile
        return object()

    monkeypatch.setattr(native_kernel, "_LIBRARY", [])
    monkeypatch.setattr(native_kernel, "load_library", slow_load)
    start, got = threading.Barrier(4), []

    def ask():
        start.wait()
        got.append(native_kernel.library())

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(got) == 4 and all(lib is got[0] for lib in got)


def test_a_failure_to_load_is_remembered_and_raised_again_as_backend_unavailable(monkeypatch):
    calls = []

    def broken_load():
        calls.append(1)
        raise PermissionError("scan_native.cpp: permission denied")

    monkeypatch.setattr(native_kernel, "_LIBRARY", [])
    monkeypatch.setattr(native_kernel, "load_library", broken_load)
    for _ in range(2):
        with pytest.raises(native_kernel.BackendUnavailable,
                           match="^scan backend 'native' does not load: PermissionError: scan_native.cpp"):
            native_kernel.library()
    assert calls == [1]


def test_without_a_compiler_the_reason_is_one_line_for_any_caller_naming_no_fallback(tmp_path, monkeypatch):
    # The kernel serves the torch backend (numba runs instead, ops.scan_native says so) and ONNX Runtime (the
    # file's own scan ops run instead): its own message names neither, so that neither caller has to cut it out.
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("SIGMA_NATIVE_CACHE_DIR", str(tmp_path / "native"))
    with pytest.raises(native_kernel.BackendUnavailable) as caught:
        native_kernel.load_library()
    message = str(caught.value)
    assert "no-such-c++" in message and "does not run" in message and "apt install g++" in message
    assert "\n" not in message and "numba" not in message


def test_setup_builds_the_kernel_ahead_and_without_a_compiler_says_why_and_what_runs_instead(tmp_path):
    # tools/setup.sh's build step (its python -c program, run alone): native_kernel's message names no fallback,
    # so the set-up says what the torch path does instead.
    import os
    import subprocess
    import sys
    from pathlib import Path

    setup = (Path(__file__).resolve().parents[2] / "tools" / "setup.sh").read_text()
    program = setup.split('"$venv/bin/python" -c "', 1)[1].split('"\n', 1)[0]
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), SIGMA_NATIVE_CACHE_DIR=str(tmp_path / "native"))
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("[setup] scan backend 'native': the C++ compiler") and "no-such-c++" in done.stdout
    assert done.stdout.endswith("; the numba scan is used instead\n") and done.stdout.count("\n") == 1, done.stdout
