"""The native selective-scan kernel (``ops/scan_native.cpp``) as a library: built with the system's C++
compiler, cached, loaded with ctypes and called on raw pointers. Imports no torch (hence outside
``sigma_core.ops``, whose package does): the torch backend (``ops.scan_native``) and the ONNX Runtime path of a
deployment without torch (``sigma_core.onnx_scan_ops``) both call it through :func:`run_forward`. The same library
holds the decoder's 2x bilinear upsampling (:func:`run_upsample2x`, for ``ops.upsample``).

Build. ``c++`` (or $CXX) ``-O2 -march=native`` into ``cache_dir()`` (the user's cache, beside numba's kernels),
named by a hash of the source, the compiler's version, the flags and the CPU's features: a new CPU, compiler
or source builds a new library (~3 s), every later process loads it in milliseconds. The library is written
under a temporary name and renamed into place, so no process loads a half-written file and two processes
building at once both work. A library that does not load (damaged) is built again, once, with a warning.
Without a working compiler :func:`load_library` raises BackendUnavailable with one line saying why (and what to
do), for any caller: what runs instead is the caller's to say (``ops.scan_native``: the numba scan).
"""
from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "ops" / "scan_native.cpp"
ABI_VERSION = 3  # sigma_scan_abi_version() of a library this module can call
FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-pthread")
HOST_FLAGS = ("-march=native",)  # dropped (portable code, 4-8x slower) where the compiler does not take it
KINDS = {"float32": 0, "bfloat16": 1, "float16": 2}  # SigmaScanArgs.kind for each element type


class BackendUnavailable(RuntimeError):
    """A scan backend cannot run here; the message says what to install or change."""


def cache_dir() -> Path:
    """Where the built library is kept: $SIGMA_NATIVE_CACHE_DIR if set, else $XDG_CACHE_HOME/sigma_core/native
    (default ~/.cache/sigma_core/native), beside numba's kernels."""
    if os.environ.get("SIGMA_NATIVE_CACHE_DIR"):
        return Path(os.environ["SIGMA_NATIVE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sigma_core" / "native"


def compiler() -> list[str]:
    """The C++ compiler command: $CXX (may carry options, e.g. "ccache g++"), else ``c++``.

    Raises BackendUnavailable where $CXX does not parse (an unclosed quote): a typo there must make "auto" fall
    back, not break every scan with a traceback."""
    raw = os.environ.get("CXX") or ""
    try:
        return shlex.split(raw) or ["c++"]
    except ValueError as err:
        raise BackendUnavailable(f"scan backend 'native': $CXX={raw!r} does not parse ({err}); fix or unset it"
                                 ) from err


def _cpu_features() -> str:
    """The CPU's feature flags (x86 "flags", aarch64 "Features"): -march=native code is only for such a CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.split(":")[0].strip() in ("flags", "Features"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _run_compiler(args: list[str]) -> subprocess.CompletedProcess:
    try:
        # errors="replace": a compiler speaking a non-UTF-8 locale must not raise UnicodeDecodeError here
        return subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BackendUnavailable(f"scan backend 'native': the C++ compiler {args[0]!r} does not run ({err}); "
                                 "install g++ (apt install g++) or set CXX") from err


def _first_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error" in line.lower()] or stderr.splitlines() or ["?"]
    return lines[0].strip()[:200]


def _build(cxx: list[str], flags: tuple[str, ...], target: Path) -> None:
    """Compile SOURCE into ``target`` atomically: written under a unique temporary name, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = _run_compiler([*cxx, *flags, str(SOURCE), "-o", tmp])
        if done.returncode != 0:
            raise BackendUnavailable(f"scan backend 'native' does not build with {' '.join(cxx)}: "
                                     f"{_first_error(done.stderr)}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _library_path(cxx: list[str], flags: tuple[str, ...]) -> Path:
    version = _run_compiler([*cxx, "--version"])
    if version.returncode != 0:
        raise BackendUnavailable(f"scan backend 'native': {' '.join(cxx)} --version fails "
                                 f"({_first_error(version.stderr)})")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.stdout.encode(), " ".join(flags).encode(), platform.machine().encode(),
                 _cpu_features().encode()):
        key.update(part + b"\0")
    return cache_dir() / f"scan_native-{key.hexdigest()[:20]}.so"


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    try:
        version = lib.sigma_scan_abi_version()
        if version != ABI_VERSION:
            raise OSError(f"ABI version {version}, expected {ABI_VERSION}")
    except (OSError, AttributeError):
        # Unloaded, or the dynamic loader would hand this same library back for the path once rebuilt.
        _ctypes.dlclose(lib._handle)
        raise
    lib.sigma_scan_forward.argtypes = [ctypes.POINTER(_Args)]
    lib.sigma_scan_forward.restype = ctypes.c_int
    lib.sigma_upsample2x.argtypes = [ctypes.POINTER(_UpsampleArgs)]
    lib.sigma_upsample2x.restype = ctypes.c_int
    if _FORKED:  # loaded first in a forked child: the parent's OpenMP team is not there to run on
        lib.sigma_forked_child()
    return lib


def _on_noexec_mount(folder: Path) -> bool:
    """Whether ``folder`` (or, not made yet, its nearest existing parent) is on a filesystem mounted noexec."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return bool(os.statvfs(folder).f_flag & getattr(os, "ST_NOEXEC", 0))
    except OSError:
        return False


def load_library() -> ctypes.CDLL:
    """The built kernel library: from the cache, else built now (host flags first, then portable ones).

    Raises BackendUnavailable (one line: what failed, what to do) where no compiler builds it, or what it builds
    does not load. A cached library that does not load (damaged file) is rebuilt once, with a warning."""
    if _on_noexec_mount(cache_dir()):  # every build would be in vain, and be paid again by every process
        raise BackendUnavailable(f"scan backend 'native': {cache_dir()} is on a filesystem mounted noexec, where no "
                                 "library loads; set SIGMA_NATIVE_CACHE_DIR to another folder")
    cxx = compiler()
    errors = []
    for flags in (FLAGS + HOST_FLAGS, FLAGS):
        path = _library_path(cxx, flags)
        try:
            if path.exists():
                try:
                    return _warn_if_portable(_open(path), errors)
                except (OSError, AttributeError) as err:
                    warnings.warn(f"the native scan library {path} does not load ({str(err)[:160]}); "
                                  "building it again", RuntimeWarning, stacklevel=2)
            _build(cxx, flags, path)
            try:
                return _warn_if_portable(_open(path), errors)
            except (OSError, AttributeError) as err:  # the compiler's own output: a broken compiler, or a noexec mount
                raise BackendUnavailable(f"scan backend 'native': the library {' '.join(cxx)} built does not load "
                                         f"({str(err)[:160]}); set CXX to a working C++ compiler, or "
                                         "SIGMA_NATIVE_CACHE_DIR to a folder not mounted noexec") from err
        except BackendUnavailable as err:
            errors.append(err)
        except OSError as err:  # an unwritable cache folder
            errors.append(BackendUnavailable(f"scan backend 'native' cannot be built into {path.parent}: {err}; "
                                             "set SIGMA_NATIVE_CACHE_DIR to a writable folder"))
    raise errors[0]


def _warn_if_portable(lib: ctypes.CDLL, host_errors: list[BackendUnavailable]) -> ctypes.CDLL:
    """``lib``, after one warning where it is the portable build (``host_errors``: why the host flags failed; none:
    the host build): slower, and why."""
    if host_errors:
        log.warning("scan backend 'native' uses its portable build, 4-8x slower: %s", host_errors[0])
    return lib


class _Args(ctypes.Structure):
    """SigmaScanArgs of scan_native.cpp, field for field."""

    _fields_ = [
        ("u", ctypes.c_void_p), ("u_stride", ctypes.c_int64 * 3),
        ("delta", ctypes.c_void_p), ("delta_stride", ctypes.c_int64 * 3),
        ("A", ctypes.c_void_p),
        ("B", ctypes.c_void_p), ("B_stride", ctypes.c_int64 * 4),
        ("C", ctypes.c_void_p), ("C_stride", ctypes.c_int64 * 4),
        ("Dskip", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("order", ctypes.c_void_p), ("order_rows", ctypes.c_int64), ("length", ctypes.c_int64),
        ("c_group", ctypes.c_void_p),
        ("sets", ctypes.c_int64), ("per", ctypes.c_int64), ("n_state", ctypes.c_int64), ("batch", ctypes.c_int64),
        ("u_step", ctypes.c_int64), ("out_step", ctypes.c_int64),
        ("out", ctypes.c_void_p), ("out_stride", ctypes.c_int64 * 3),
        ("kind", ctypes.c_int32), ("softplus", ctypes.c_int32), ("threads", ctypes.c_int32),
        ("dt_low", ctypes.c_void_p), ("dt_low_stride", ctypes.c_int64 * 4), ("dt_weight", ctypes.c_void_p),
        ("dt_rank", ctypes.c_int64),
    ]


class _UpsampleArgs(ctypes.Structure):
    """SigmaUpsampleArgs of scan_native.cpp, field for field."""

    _fields_ = [
        ("x", ctypes.c_void_p), ("x_stride", ctypes.c_int64 * 4), ("out", ctypes.c_void_p),
        ("batch", ctypes.c_int64), ("height", ctypes.c_int64), ("width", ctypes.c_int64),
        ("channels", ctypes.c_int64), ("kind", ctypes.c_int32), ("threads", ctypes.c_int32),
    ]


Strided = tuple[int, Sequence[int]]  # (address, strides in elements)
_FORKED = False  # set in a child forked after this module was imported (see _open)


def _note_fork() -> None:
    global _FORKED
    _FORKED = True


os.register_at_fork(after_in_child=_note_fork)
_LIBRARY: list = []  # [the loaded library] once loaded, [the BackendUnavailable] once failed
_LOADING = threading.Lock()  # sessions made at once on two threads each built and loaded the library


def library() -> ctypes.CDLL:
    """load_library(), once per process (a failure, too, is remembered and raised again), thread-safe; any other
    failure (an unreadable source, a filesystem error) becomes BackendUnavailable, so that callers fall back in one
    line."""
    if not _LIBRARY:
        with _LOADING:
            if not _LIBRARY:
                _LIBRARY.append(_load_or_unavailable())
    if isinstance(_LIBRARY[0], BackendUnavailable):
        raise _LIBRARY[0]
    return _LIBRARY[0]


def _load_or_unavailable():
    """load_library(), or the BackendUnavailable saying why not."""
    try:
        return load_library()
    except BackendUnavailable as err:
        return err
    except Exception as err:  # noqa: BLE001 - reported in the one line the caller logs
        return BackendUnavailable(f"scan backend 'native' does not load: {type(err).__name__}: {str(err)[:200]}")


def run_forward(lib: ctypes.CDLL, *, u: Strided, delta: Strided, A: int, B: Strided, C: Strided,
                D: Optional[int], delta_bias: int, order: int, order_rows: int, length: int, c_group: int,
                sets: int, per: int, n_state: int, batch: int, u_shared: bool, merged: bool, out: Strided,
                kind: int, softplus: bool, threads: int, dt_low: Optional[Strided] = None, dt_weight: int = 0,
                dt_rank: int = 0) -> None:
    """One call of ``lib``'s sigma_scan_forward (see scan_native.cpp; ``lib`` from library() or
    load_library()), writing ``out``.

    u, delta: (batch, channels, positions); B, C: (batch, sets, n_state, positions); out: (batch, per or
    sets * per, positions), each (address, strides in elements) of float32/bfloat16/float16 (``kind``) data;
    A: (sets * per, n_state), D, delta_bias: (sets * per,) contiguous float32 (D 0: no D * u term); order:
    (order_rows, length) contiguous int64, step t of row r reads position order[r, t]; c_group: (sets,) int64,
    the B/C set each set of channels reads. u_shared: every set reads the same ``per`` channels of u; merged:
    the sets' outputs are summed into one ``per``-channel output. dt_low (or None: ``delta`` is read): delta as
    its factors, (batch, positions, sets, dt_rank) of the ``kind`` of u, with dt_weight (sets * per, dt_rank)
    contiguous float32: delta[b, k * per + c, p] = sum_r dt_weight[k * per + c, r] * dt_low[b, p, k, r] (``delta``
    is then not read). Raises RuntimeError where the kernel refuses.
    """
    args = _Args(
        u=u[0], u_stride=tuple(u[1]), delta=delta[0], delta_stride=tuple(delta[1]), A=A, B=B[0],
        B_stride=tuple(B[1]), C=C[0], C_stride=tuple(C[1]), Dskip=D or None, bias=delta_bias, order=order,
        order_rows=order_rows, length=length, c_group=c_group, sets=sets, per=per, n_state=n_state, batch=batch,
        u_step=0 if u_shared else per, out_step=0 if merged else per, out=out[0], out_stride=tuple(out[1]),
        kind=kind, softplus=int(bool(softplus)), threads=max(1, threads),
        dt_low=dt_low[0] if dt_low else None, dt_low_stride=tuple(dt_low[1]) if dt_low else (0, 0, 0, 0),
        dt_weight=dt_weight or None, dt_rank=dt_rank)
    status = lib.sigma_scan_forward(ctypes.byref(args))
    if status != 0:
        raise RuntimeError("native selective scan failed: " +
                           ("invalid arguments (a bug: please report)" if status == 1 else "out of memory"))


def run_upsample2x(lib: ctypes.CDLL, *, x: Strided, out: int, batch: int, height: int, width: int, channels: int,
                   kind: int, threads: int) -> None:
    """One call of ``lib``'s sigma_upsample2x (see scan_native.cpp), writing ``out``: x (batch, height, width,
    channels) of float32 or bfloat16 (``kind``), (address, strides in elements) with channel stride 1, bilinearly
    upsampled 2x (align_corners=False) into out (batch, 2 height, 2 width, channels) contiguous, of x's kind.
    Raises ValueError for arguments the kernel refuses, RuntimeError where memory ran out."""
    args = _UpsampleArgs(x=x[0], x_stride=tuple(x[1]), out=out, batch=batch, height=height, width=width,
                         channels=channels, kind=kind, threads=max(1, threads))
    status = lib.sigma_upsample2x(ctypes.byref(args))
    if status == 1:
        raise ValueError(f"native 2x upsampling takes float32 or bfloat16 maps of at least 1x1x1 with channel stride 1,"
                         f" got {batch}x{height}x{width}x{channels}, strides {tuple(x[1])}, kind {kind}")
    if status != 0:
        raise RuntimeError("native 2x upsampling failed: out of memory")
