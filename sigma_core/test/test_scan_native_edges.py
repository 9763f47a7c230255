"""What a hostile caller can hand the index-reading CPU kernels (native, numba): misfit shapes and orders that are
not permutations are refused before any kernel reads past a tensor or leaves output positions unwritten; and the
shapes the model never makes (no channels, odd state sizes) still agree with the float64 reference; and the build
where it goes wrong: a compiler whose output does not load, one without -march=native (the portable build), a
library of another ABI in the cache, a cache on a noexec mount, tensors off the CPU."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading

import pytest
import torch
from forked_child import assert_forked_child_runs
from test_scan_numba import assert_relative, ordered_inputs
from test_selective_scan import make_inputs, run

from sigma_core import native_kernel
from sigma_core.ops.cross_scan import cross_scan_order
from sigma_core.ops.selective_scan import (
    BackendUnavailable,
    selective_scan,
    selective_scan_ordered,
    selective_scan_reference,
)

try:
    from sigma_core.ops import scan_native  # noqa: F401
    BACKENDS = ["native", "numba"]
except BackendUnavailable:
    BACKENDS = ["numba"]

ORDER = cross_scan_order(3, 4)  # K = 4 directions of a 3 x 4 map


def _misfit(name):
    inputs = ordered_inputs(1, 4, 5, 16, 12, seed=2)
    misfit = {
        "B with fewer states than A": dict(B=torch.randn(1, 4, 2, 12)),
        "A with more states than B": dict(A=-torch.rand(20, 64)),
        "A with too few rows": dict(A=-torch.rand(10, 16)),
        "C of one direction": dict(C=torch.randn(1, 1, 16, 12)),
        "short D": dict(D=torch.randn(2)),
        "short delta_bias": dict(delta_bias=torch.randn(19)),
    }[name]
    return {**inputs, **misfit}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["B with fewer states than A", "A with more states than B", "A with too few rows",
                                  "C of one direction", "short D", "short delta_bias"])
def test_ordered_scan_refuses_misfit_shapes_before_reading(backend, name):
    inputs = _misfit(name)
    with torch.no_grad(), pytest.raises(ValueError, match="must be|need the same"):
        selective_scan_ordered(*inputs.values(), True, ORDER, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_scan_refuses_an_order_row_that_repeats_a_position(backend):
    order = ORDER.clone()
    order[2, 5] = order[2, 4]  # in range, but position order[2, 5] of direction 2 would never be written
    with torch.no_grad(), pytest.raises(ValueError, match="each row a permutation"):
        selective_scan_ordered(*ordered_inputs(1, 4, 5, 16, 12, seed=2).values(), True, order, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_channels_give_an_empty_output_like_the_reference(backend):
    u, B = torch.randn(2, 0, 5), torch.randn(2, 1, 4, 5)
    with torch.no_grad():
        y = selective_scan(u, u, torch.randn(0, 4), B, B, backend=backend)
    assert y.shape == (2, 0, 5) and y.dtype == torch.float32


def test_a_compiler_whose_output_does_not_load_leaves_numba_with_one_line_naming_it(tmp_path):
    # A compiler (or wrapper) that exits 0 but writes no shared library: the cache folder is fine, the compiler is not.
    fake = tmp_path / "fake-c++"
    fake.write_text('#!/bin/sh\nprev=""\nfor a in "$@"; do [ "$prev" = "-o" ] && echo garbage > "$a"; prev="$a"; done\n'
                    'printf "fake \\351 1.0\\n"\n')  # a non-UTF-8 version line (a Latin-1 locale)
    fake.chmod(0o755)
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
            "from sigma_core.ops.selective_scan import resolve_backend\n"
            "print('chosen', resolve_backend('auto', 'cpu'))")
    env = dict(os.environ, CXX=str(fake), SIGMA_NATIVE_CACHE_DIR=str(tmp_path / "native"), OMP_NUM_THREADS="1")
    env.pop("SIGMA_SCAN_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "chosen numba" in out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if "native" in line]
    assert len(lines) == 1 and "fake-c++ built does not load" in lines[0] and "set CXX" in lines[0], out.stderr
    assert "writable" not in out.stderr and "Traceback" not in out.stderr


def test_the_portable_build_says_so_and_matches_the_float64_reference_at_the_edges(tmp_path):
    # A compiler without -march=native: the portable build (its own 2**x, no AVX-512) is what such users run;
    # the scan and the upsampling.
    cxx = tmp_path / "no-march-c++"
    cxx.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && echo "error: bad option $a" >&2 && exit 1;'
                   ' done\nexec c++ "$@"\n')
    cxx.chmod(0o755)
    code = """if True:
        import logging, torch
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
        from sigma_core.ops.selective_scan import resolve_backend, selective_scan, selective_scan_reference
        print('chosen', resolve_backend('auto', 'cpu'))
        g = torch.Generator().manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            u, dt = torch.randn(2, 2, 33, 70, generator=g).to(dtype)
            dt[0, 0, :5] = torch.tensor([1e4, -1e4, float('inf'), -float('inf'), 40.0])  # huge steps, both signs
            A, skip = -torch.rand(33, 16, generator=g) * 3, torch.randn(33, generator=g)
            B, C = torch.randn(2, 2, 1, 16, 70, generator=g).to(dtype)
            u = u.transpose(1, 2).contiguous().transpose(1, 2)  # channels-last, as the model's maps
            want = selective_scan_reference(*(t.double() for t in (u, dt, A, B, C, skip)), None, True)
            with torch.no_grad():
                got = selective_scan(u, dt, A, B, C, skip, None, True, backend='native')
            finite = want.isfinite()
            assert torch.equal(finite, got.isfinite()), dtype
            err = ((got - want).abs()[finite].max() / want.abs()[finite].max()).item()
            assert err < 1e-5, (dtype, err)
        import torch.nn.functional as F
        from sigma_core.ops import upsample
        for dtype in (torch.float32, torch.bfloat16):  # the upsampling's portable loads, stores and rounding
            x = torch.randn(2, 5, 7, 37, generator=g).to(dtype)
            assert upsample._native_runs(x)
            with torch.no_grad():
                got = upsample.upsample2x_channels_last(x)
            want = F.interpolate(x.permute(0, 3, 1, 2), size=(10, 14), mode='bilinear').permute(0, 2, 3, 1)
            tolerance = 0 if dtype == torch.bfloat16 else 2.4e-7
            torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
        print('matched')
    """
    env = dict(os.environ, CXX=str(cxx), SIGMA_NATIVE_CACHE_DIR=str(tmp_path / "native"), OMP_NUM_THREADS="1")
    env.pop("SIGMA_SCAN_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "chosen native" in out.stdout and "matched" in out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if "native" in line and "WARNING" in line]
    assert len(lines) == 1 and "portable build" in lines[0] and "-march=native" in lines[0], out.stderr
    assert "numba" not in lines[0], out.stderr  # the portable build runs, not numba


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
def test_a_build_with_the_standard_librarys_checks_scans_delta_written_out_and_as_factors(tmp_path):
    # $CXX may carry options; with -D_GLIBCXX_ASSERTIONS (hardened toolchains) an out-of-range vector index aborts the
    # process: every scan of a written-out delta took &w_all[0] of the empty factor weights (undefined behaviour).
    cxx = tmp_path / "checked-c++"
    cxx.write_text('#!/bin/sh\nexec c++ -D_GLIBCXX_ASSERTIONS "$@"\n')
    cxx.chmod(0o755)
    code = """if True:
        import torch
        from sigma_core.ops import LowRankDelta, selective_scan, selective_scan_reference
        g = torch.Generator().manual_seed(0)
        u, A = torch.randn(1, 40, 30, generator=g), -torch.rand(40, 16, generator=g)
        B, C = torch.randn(2, 1, 2, 16, 30, generator=g)
        factors = LowRankDelta(torch.randn(1, 30, 2, 3, generator=g), torch.randn(2, 20, 3, generator=g))
        for delta in (factors.dense(), factors):
            with torch.no_grad():
                got = selective_scan(u, delta, A, B, C, None, None, True, backend='native')
            want = selective_scan_reference(*(t.double() for t in (u, factors.dense(), A, B, C)), None, None, True)
            assert ((got - want).abs().max() / want.abs().max()).item() < 1e-5
        print('matched')
    """
    env = dict(os.environ, CXX=str(cxx), SIGMA_NATIVE_CACHE_DIR=str(tmp_path / "native"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "matched" in out.stdout, out.stderr[-2000:]


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
def test_tensors_off_the_cpu_go_to_a_backend_of_their_device_not_to_numba(monkeypatch):
    # $SIGMA_SCAN_BACKEND=native with a GPU model. No GPU here: "meta" tensors stand in, served by a stand-in backend
    # (the reference's code, which runs on them); numba, the CPU's next in line, cannot read them.
    registry = sys.modules["sigma_core.ops.selective_scan"]
    monkeypatch.setitem(registry._BACKENDS, "meta_stand_in", registry.ScanBackend(
        "meta_stand_in", ("meta",), 5, ".selective_scan", "selective_scan_reference"))
    u, A = torch.randn(1, 4, 5, device="meta"), torch.randn(4, 2, device="meta")
    B = torch.randn(1, 1, 2, 5, device="meta")
    with torch.no_grad():
        y = selective_scan(u, u, A, B, B, backend="native")
    assert y.device.type == "meta" and y.shape == (1, 4, 5)
    meta = {k: v.to("meta") for k, v in ordered_inputs(1, 4, 5, 16, 12, seed=2).items()}
    with torch.no_grad():
        y = selective_scan_ordered(*meta.values(), True, ORDER.to("meta"), backend="native")
    assert y.device.type == "meta" and y.shape == (1, 5, 12)
    monkeypatch.delitem(registry._BACKENDS, "meta_stand_in")
    monkeypatch.delitem(registry._loaded, "meta_stand_in")
    with torch.no_grad(), pytest.raises(BackendUnavailable, match="runs CPU tensors only.*'meta'"):
        selective_scan(u, u, A, B, B, backend="native")


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
def test_a_library_of_another_abi_in_its_place_is_rebuilt_and_the_rebuilt_one_loaded(tmp_path, monkeypatch):
    # A library that loads but is not this kernel's ABI (a stale or swapped file): the loader keeps it open by its
    # path, so unless it is closed first the rebuilt file there is never loaded and the process gives up native.
    monkeypatch.setenv("SIGMA_NATIVE_CACHE_DIR", str(tmp_path))
    path = native_kernel._library_path(native_kernel.compiler(), native_kernel.FLAGS + native_kernel.HOST_FLAGS)
    other = tmp_path / "other.cpp"
    other.write_text('extern "C" int sigma_scan_abi_version(void) { return 99; }\n')
    subprocess.run([*native_kernel.compiler(), "-shared", "-fPIC", str(other), "-o", str(path)], check=True,
                   timeout=300)
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
            "from sigma_core.ops.selective_scan import resolve_backend\n"
            "print('chosen', resolve_backend('auto', 'cpu'))")
    env = dict(os.environ, SIGMA_NATIVE_CACHE_DIR=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("SIGMA_SCAN_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "chosen native" in out.stdout, out.stderr
    assert "ABI version 99" in out.stderr and "building it again" in out.stderr, out.stderr
    assert "portable" not in out.stderr and "numba scan is used" not in out.stderr, out.stderr


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
def test_a_cache_on_a_noexec_mount_is_refused_at_once_naming_it(tmp_path, monkeypatch):
    # No mount can be made here: statvfs stands in for a home or /tmp mounted noexec, where every process would
    # otherwise compile twice (~10 s) and still not load the library.
    real_statvfs = os.statvfs
    noexec = type("Statvfs", (), {"f_flag": os.ST_NOEXEC})()
    monkeypatch.setattr(os, "statvfs", lambda p: noexec if str(p).startswith(str(tmp_path)) else real_statvfs(p))
    monkeypatch.setenv("SIGMA_NATIVE_CACHE_DIR", str(tmp_path / "cache" / "native"))
    monkeypatch.setenv("CXX", str(tmp_path / "never-run-c++"))
    with pytest.raises(BackendUnavailable, match="mounted noexec.*SIGMA_NATIVE_CACHE_DIR"):
        native_kernel.load_library()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_groups_or_no_directions_are_refused_naming_g(backend):
    u, A, none = torch.randn(1, 4, 5), torch.randn(4, 2), torch.randn(1, 0, 2, 5)
    with pytest.raises(ValueError, match="group count G"):
        selective_scan(u, u, A, none, none, backend=backend)
    with pytest.raises(ValueError, match="group count G"):
        selective_scan_ordered(u, torch.randn(1, 0, 5), torch.randn(0, 2), none, none, None, None, True,
                               torch.zeros(0, 5, dtype=torch.int64), backend=backend)


@pytest.mark.parametrize("backend", [*BACKENDS, "cpu", "reference"])
def test_no_states_are_refused_naming_n(backend):
    # A (D, 0): the shapes fit each other, but the native kernel refused it as 'a bug: please report' and "cpu"
    # divided by zero; every backend now refuses it alike.
    u, A, none = torch.randn(1, 4, 6), -torch.rand(4, 0), torch.randn(1, 2, 0, 6)
    with pytest.raises(ValueError, match="N >= 1 states"):
        selective_scan(u, torch.rand(1, 4, 6), A, none, none, backend=backend)
    with pytest.raises(ValueError, match="N >= 1 states"):
        selective_scan_ordered(u, torch.rand(1, 8, 6), -torch.rand(8, 0), none, none, None, None, True,
                               torch.stack([torch.arange(6), torch.arange(6).flip(0)]), backend=backend)


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
def test_the_merged_map_scan_is_bit_equal_on_1_3_and_7_threads_and_after_fork():
    # 100 channels = 7 blocks of 16: on 3 threads, spans of 2 blocks and a last one of 1 (uneven); the directions
    # of one span run in one job and add into the same output rows.
    inputs = ordered_inputs(1, 4, 100, 16, 12, seed=4)
    threads = torch.get_num_threads()

    def scan():
        with torch.no_grad():
            return selective_scan_ordered(*inputs.values(), True, ORDER, True, backend="native")

    try:
        torch.set_num_threads(1)
        one = scan()
        for n in (3, 7):
            torch.set_num_threads(n)
            assert torch.equal(scan(), one), n
        pid = os.fork()
        if pid == 0:  # the child: the kernel starts its own threads (the parent's OpenMP team is not there)
            os._exit(0 if torch.equal(scan(), one) else 3)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        torch.set_num_threads(threads)


def _torch_libgomp_loaded() -> bool:
    return hasattr(ctypes.CDLL(None), "GOMP_parallel")


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
@pytest.mark.skipif(not _torch_libgomp_loaded(), reason="torch runs on another thread pool than libgomp here")
def test_two_thread_scans_run_on_torchs_openmp_team_and_start_no_thread():
    # A thread of its own would share a core with torch's OpenMP worker, still spinning after the op before. Every
    # thread seen while the kernel runs (polled from /proc) must have existed before it: the main one and torch's.
    inputs = ordered_inputs(2, 4, 64, 16, 6000, seed=5)
    order = torch.stack([torch.arange(6000), torch.arange(6000).flip(0)] * 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.ones(1 << 20).mul_(2)  # torch's OpenMP team exists from here on
        with torch.no_grad():
            one = selective_scan_ordered(*inputs.values(), True, order, backend="native")
        before, seen, done = set(os.listdir("/proc/self/task")), set(), threading.Event()

        def watch():
            while not done.is_set():
                seen.update(os.listdir("/proc/self/task"))
        watcher = threading.Thread(target=watch)
        watcher.start()
        seen.update(os.listdir("/proc/self/task"))
        watcher_id = str(watcher.native_id)
        with torch.no_grad():
            for _ in range(5):
                assert torch.equal(selective_scan_ordered(*inputs.values(), True, order, backend="native"), one)
        done.set()
        watcher.join()
    finally:
        torch.set_num_threads(threads)
    assert seen - before - {watcher_id} == set(), "the kernel started threads of its own"


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
@pytest.mark.parametrize("batch, groups, per_group, n, length",
                         [(1, 1, 17, 1, 9), (2, 2, 5, 5, 65), (1, 1, 33, 32, 20)])
def test_state_sizes_without_a_compiled_path_match_the_float64_reference(batch, groups, per_group, n, length):
    # The kernel has compiled paths for N = 16 and 4 (the model's) and a general one for every other N.
    inputs = make_inputs(batch, groups, per_group, n, length, seed=n, skip=True, bias=True)
    want = run(selective_scan_reference, inputs, True)
    with torch.no_grad():
        got = run(lambda *a, **kw: selective_scan(*a, **kw, backend="native"),
                  {k: v.float() if v is not None else None for k, v in inputs.items()}, True)
    assert_relative(got, want, 1e-5, "y vs float64")
    ordered = ordered_inputs(1, 4, 5, n, 12, seed=n)
    want = selective_scan_ordered(*(t.double() for t in ordered.values()), True, ORDER, True, backend="reference")
    with torch.no_grad():
        got = selective_scan_ordered(*ordered.values(), True, ORDER, True, backend="native")
    assert_relative(got, want, 1e-5, "ordered y vs float64")


@pytest.mark.parametrize("cxx", ['g++ "-O2', " "])
def test_a_cxx_typo_leaves_auto_a_working_backend_and_one_line_naming_it(tmp_path, cxx):
    # An unclosed quote in $CXX raised ValueError at import: every scan under "auto" failed with a traceback.
    # A blank $CXX means the default compiler (whose library setup built into the default cache), not none.
    if cxx == " " and "native" not in BACKENDS:
        pytest.skip("the native scan does not build here")
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
            "from sigma_core.ops.selective_scan import resolve_backend\n"
            "print('chosen', resolve_backend('auto', 'cpu'))")
    env = dict(os.environ, CXX=cxx, OMP_NUM_THREADS="1")
    env.pop("SIGMA_SCAN_BACKEND", None)
    if cxx != " ":
        env["SIGMA_NATIVE_CACHE_DIR"] = str(tmp_path / "native")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    if cxx == " ":
        assert "chosen native" in out.stdout, out.stderr
    else:
        lines = [line for line in out.stderr.splitlines() if "'native'" in line]
        assert "chosen numba" in out.stdout and len(lines) == 1 and "$CXX" in lines[0] and "does not parse" in lines[0]


def test_an_unexpected_failure_at_load_leaves_auto_numba_with_one_line(tmp_path):
    # An unreadable kernel source (a packaging or permission fault): an OSError the build steps did not expect.
    code = ("import logging, pathlib; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
            "read = pathlib.Path.read_bytes\n"
            "def refuse(self):\n"
            "    if self.name == 'scan_native.cpp':\n"
            "        raise PermissionError(13, 'Permission denied', str(self))\n"
            "    return read(self)\n"
            "pathlib.Path.read_bytes = refuse\n"
            "from sigma_core.ops.selective_scan import resolve_backend\n"
            "print('chosen', resolve_backend('auto', 'cpu'))")
    env = dict(os.environ, SIGMA_NATIVE_CACHE_DIR=str(tmp_path / "native"), OMP_NUM_THREADS="1")
    env.pop("SIGMA_SCAN_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "chosen numba" in out.stdout and "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if "'native'" in line]
    assert len(lines) == 1 and "PermissionError" in lines[0] and "scan_native.cpp" in lines[0], out.stderr


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_d_an_infinite_input_gives_the_references_infinity_not_nan(dtype):
    # No D: y has no D * u term. The kernel added 0 * u, and 0 * inf made the reference's -inf a NaN.
    inputs = make_inputs(1, 1, 16, 1, 6, seed=3, dtype=torch.float32, skip=False, bias=False)  # N = 1: one infinity
    inputs["A"][0] = 0.0  # channel 0 does not decay: h stays infinite
    inputs["u"][0, 0, 3] = float("inf")
    inputs = {k: v.to(dtype) if v is not None and k in ("u", "delta", "B", "C") else v for k, v in inputs.items()}
    want = run(selective_scan_reference, {k: v.double() if v is not None else None for k, v in inputs.items()}, True)
    with torch.no_grad():
        got = run(lambda *a, **kw: selective_scan(*a, **kw, backend="native"), inputs, True)
    assert want[0, 0, 3:].isinf().all()
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    assert_relative(got[finite], want[finite], 1e-5, "finite y")


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
def test_tensors_native_code_may_not_read_in_place_never_reach_the_native_scan():
    # A negated view was scanned unnegated and a forward-mode tangent silently dropped (ops.native_memory): they go
    # to numba, which refuses both in words.
    import torch.autograd.forward_ad as forward_ad

    inputs = make_inputs(1, 1, 8, 4, 20, seed=5, dtype=torch.float32)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias")]
    with torch.no_grad(), pytest.raises(RuntimeError, match="negative bit"):
        selective_scan(torch._neg_view(-args[0]), *args[1:], delta_softplus=True, backend="native")
    with forward_ad.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
        selective_scan(forward_ad.make_dual(args[0], torch.ones_like(args[0])), *args[1:], delta_softplus=True,
                       backend="native")


@pytest.mark.skipif("native" not in BACKENDS, reason="the native scan does not build here")
def test_a_child_forked_before_the_library_loads_scans_and_upsamples_on_threads_of_its_own():
    # The library first loaded in the child took the parent's OpenMP team for its own (its pid matched) and waited
    # forever on threads the child does not have: native_kernel tells it the process is a forked child.
    assert_forked_child_runs(
        """
        import torch
        torch.set_num_threads(2)
        from sigma_core.ops.upsample import upsample2x_channels_last
        from sigma_core.ops.selective_scan import selective_scan
        a = torch.randn(2000, 2000)
        for _ in range(3):
            (a + 1).relu_()  # torch's OpenMP team now exists in the parent
        """,
        """
        with torch.no_grad():
            upsample2x_channels_last(torch.randn(1, 4, 4, 16))  # the library's first load, in the child
            u, A, B = torch.randn(1, 64, 50), -torch.rand(64, 4), torch.randn(1, 1, 4, 50)
            selective_scan(u, u.abs(), A, B, B, backend="native")
        """,
        wait_s=60)
