"""The selective-scan forward as a small native kernel (``scan_native.cpp``), built on first use with the system's
C++ compiler and loaded with ctypes: the "native" backend, preferred over "numba" where it builds.

What it is. A plain C ABI shared library (no torch headers, no Python headers): the numba forward's jobs,
chunks and passes, with the 16 states of h kept in vector registers and an inline vector 2**x (see the .cpp).
Only the forward is native: where a gradient is needed (training), or for float64 inputs (gradcheck), the
call goes to the next backend in line ("numba", else "cpu"), forward and backward, so the backward always
matches the forward it differentiates.

Build. ``c++`` (or $CXX) ``-O2 -march=native`` into ``cache_dir()`` (the user's cache, beside numba's kernels),
named by a hash of the source, the compiler's version, the flags and the CPU's features: a new CPU, compiler
or source builds a new library (~3 s), every later process loads it in milliseconds. The library is written
under a temporary name and renamed into place, so no process loads a half-written file and two processes
building at once both work. A library that does not load (damaged) is built again, once, with a warning.
Without a working compiler the module raises BackendUnavailable with one line saying why: "auto" then takes
"numba" and the registry logs that once. tools/setup.sh builds it ahead, so the first frame does not pay.

Threads: ``torch.get_num_threads()`` threads per call, started by the kernel (ctypes releases the GIL, so
several Python threads may scan at once; each call owns its threads).
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
import warnings
from pathlib import Path
from typing import Optional

import torch

from .selective_scan import (
    BackendUnavailable,
    available_backends,
    check_order_permutes,
    check_ordered_scan_shapes,
    scan_output_like,
)

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("scan_native.cpp")
ABI_VERSION = 1  # sigma_scan_abi_version() of a library this module can call
FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-pthread")
HOST_FLAGS = ("-march=native",)  # dropped (portable code, 4-8x slower) where the compiler does not take it
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def cache_dir() -> Path:
    """Where the built library is kept: $SIGMA_NATIVE_CACHE_DIR if set, else $XDG_CACHE_HOME/sigma_core/native
    (default ~/.cache/sigma_core/native), beside numba's kernels."""
    if os.environ.get("SIGMA_NATIVE_CACHE_DIR"):
        return Path(os.environ["SIGMA_NATIVE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sigma_core" / "native"


def compiler() -> list[str]:
    """The C++ compiler command: $CXX (may carry options, e.g. "ccache g++"), else ``c++``.

    Raises BackendUnavailable where $CXX does not parse (an unclosed quote): a typo there must leave "auto" the
    numba scan, not break every scan with a traceback."""
    raw = os.environ.get("CXX") or ""
    try:
        return shlex.split(raw) or ["c++"]
    except ValueError as err:
        raise BackendUnavailable(f"scan backend 'native': $CXX={raw!r} does not parse ({err}); fix or unset it; "
                                 "the numba scan is used instead") from err


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
                                 "install g++ (apt install g++) or set CXX; the numba scan is used instead") from err


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
                                     f"{_first_error(done.stderr)}; the numba scan is used instead")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _library_path(cxx: list[str], flags: tuple[str, ...]) -> Path:
    version = _run_compiler([*cxx, "--version"])
    if version.returncode != 0:
        raise BackendUnavailable(f"scan backend 'native': {' '.join(cxx)} --version fails "
                                 f"({_first_error(version.stderr)}); the numba scan is used instead")
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
                                 "library loads; set SIGMA_NATIVE_CACHE_DIR to another folder; the numba scan is used "
                                 "instead")
    cxx = compiler()
    errors = []
    for flags in (FLAGS + HOST_FLAGS, FLAGS):
        path = _library_path(cxx, flags)
        try:
            if path.exists():
                try:
                    return _portable_said(_open(path), errors)
                except (OSError, AttributeError) as err:
                    warnings.warn(f"the native scan library {path} does not load ({str(err)[:160]}); "
                                  "building it again", RuntimeWarning, stacklevel=2)
            _build(cxx, flags, path)
            try:
                return _portable_said(_open(path), errors)
            except (OSError, AttributeError) as err:  # the compiler's own output: a broken compiler, or a noexec mount
                raise BackendUnavailable(f"scan backend 'native': the library {' '.join(cxx)} built does not load "
                                         f"({str(err)[:160]}); set CXX to a working C++ compiler, or "
                                         "SIGMA_NATIVE_CACHE_DIR to a folder not mounted noexec; the numba scan "
                                         "is used instead") from err
        except BackendUnavailable as err:
            errors.append(err)
        except OSError as err:  # an unwritable cache folder
            errors.append(BackendUnavailable(f"scan backend 'native' cannot be built into {path.parent}: {err}; "
                                             "set SIGMA_NATIVE_CACHE_DIR to a writable folder"))
    raise errors[0]


def _portable_said(lib: ctypes.CDLL, host_errors: list[BackendUnavailable]) -> ctypes.CDLL:
    """``lib``, after one log line where it is the portable build (the host flags failed): slower, and why."""
    if host_errors:
        why = str(host_errors[0]).replace("; the numba scan is used instead", "")  # not so: the portable build is
        log.warning("scan backend 'native' uses its portable build, 4-8x slower: %s", why)
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
    ]



def _load_or_unavailable() -> ctypes.CDLL:
    """load_library(), any other failure (an unreadable source, a filesystem error) turned into BackendUnavailable:
    at import, where anything else would break every scan under "auto" instead of leaving it numba."""
    try:
        return load_library()
    except BackendUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - reported in the one line the registry logs
        raise BackendUnavailable(f"scan backend 'native' does not load: {type(err).__name__}: {str(err)[:200]}; "
                                 "the numba scan is used instead") from err


_LIB = _load_or_unavailable()  # at import: the registry turns BackendUnavailable into "not available" for "auto"


def _fallback(device_type: str) -> str:
    """The backend that runs what this one does not (gradients, float64, tensors not on the CPU, e.g. where
    $SIGMA_SCAN_BACKEND=native reaches a GPU model): the next in line for the tensors' device."""
    names = [name for name in available_backends(device_type) if name != "native"]
    if not names:
        raise BackendUnavailable(f"scan backend 'native' runs CPU tensors only, and no other backend serves "
                                 f"{device_type!r} tensors; move them to the CPU or choose another backend")
    return names[0]


def _native_can_run(tensors: tuple[torch.Tensor, ...], D, delta_bias, A) -> bool:
    if any(t.device.type != "cpu" for t in tensors):
        return False
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or not dtypes <= set(_KINDS):  # float64 or mixed: numba handles them
        return False
    params = [t for t in (A, D, delta_bias) if t is not None]
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (*tensors, *params)))


def _forward(u, delta, A, B, C, D, delta_bias, softplus, order, c_group, u_shared, merged) -> torch.Tensor:
    batch, sets, positions = u.shape[0], c_group.shape[0], u.shape[2]
    per = A.shape[0] // sets
    out = scan_output_like(u, (batch, per if merged else sets * per, positions), torch.float32)
    if out.numel() == 0:  # no channels, rows or steps: nothing to scan (the kernel refuses per = 0)
        return out
    A32, D32, bias32 = (t.detach().float().contiguous() if t is not None else torch.zeros(A.shape[0])
                        for t in (A, D, delta_bias))
    args = _Args(
        u=u.data_ptr(), u_stride=tuple(u.stride()), delta=delta.data_ptr(), delta_stride=tuple(delta.stride()),
        A=A32.data_ptr(), B=B.data_ptr(), B_stride=tuple(B.stride()), C=C.data_ptr(), C_stride=tuple(C.stride()),
        Dskip=D32.data_ptr() if D is not None else None, bias=bias32.data_ptr(),  # no D: null, no D * u term
        order=order.data_ptr(), order_rows=order.shape[0],
        length=order.shape[1], c_group=c_group.data_ptr(), sets=sets, per=per, n_state=A.shape[1], batch=batch,
        u_step=0 if u_shared else per, out_step=0 if merged else per, out=out.data_ptr(),
        out_stride=tuple(out.stride()), kind=_KINDS[u.dtype], softplus=int(bool(softplus)),
        threads=max(1, torch.get_num_threads()))
    status = _LIB.sigma_scan_forward(ctypes.byref(args))
    if status != 0:
        raise RuntimeError("native selective scan failed: " +
                           ("invalid arguments (a bug: please report)" if status == 1 else "out of memory"))
    return out


def selective_scan_native(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Grouped selective scan on CPU, the native forward; same arguments, dtypes and output (float32, laid
    out like u) as ``selective_scan_numba``. With a gradient to compute, or float64 inputs, the next backend
    in line (numba) runs it."""
    if not _native_can_run((u, delta, B, C), D, delta_bias, A):
        from .selective_scan import selective_scan
        return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend=_fallback(u.device.type))
    groups = B.shape[1]
    return _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, torch.arange(u.shape[2])[None],
                    torch.arange(groups, dtype=torch.int64), False, False)


def selective_scan_ordered_native(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    order: torch.Tensor,
    swap_c: bool = False,
) -> torch.Tensor:
    """K scans of one map in K step orders, summed back into position order (see ``selective_scan_ordered``),
    the native forward; with a gradient to compute, or float64 inputs, the next backend in line runs it."""
    if not _native_can_run((u, delta, B, C), D, delta_bias, A):
        from .selective_scan import selective_scan_ordered
        return selective_scan_ordered(u, delta, A, B, C, D, delta_bias, delta_softplus, order, swap_c,
                                      backend=_fallback(u.device.type))
    check_ordered_scan_shapes(u, delta, A, B, C, D, delta_bias, order)  # called directly, as from the dispatcher
    check_order_permutes(order, u.shape[2])
    k = order.shape[0]
    order = order.to(torch.int64).contiguous()
    c_group = torch.arange(k - 1, -1, -1) if swap_c else torch.arange(k)
    return _forward(u, delta, A, B, C, D, delta_bias, delta_softplus, order, c_group, True, True)
