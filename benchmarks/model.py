"""Whole-model cost of Sigma variants on this machine: parameters, FLOPs, forward latency.

    python benchmarks/model.py                         # nano and tiny at 480x640, one thread
    python benchmarks/model.py --variants nano --size 240 320 --repeats 5 --backend cpu
    python benchmarks/model.py --compare numba:fp32 numba:bf16 cpu:fp32 --repeats 3   # same-run ratios
    python benchmarks/model.py --compare numba:fp32 numba:bf16 --threads 1 2 --repeats 3  # thread scaling
    python benchmarks/model.py --compare numba:fp32 --malloc both --threads 1 2   # freed memory kept vs glibc's

With --compare, each variant runs every backend:precision in turn within each round (rounds interleaved,
so machine load hits all alike) and prints min and median latency and the ratio to the last entry
(the baseline). bf16 runs under CPU autocast; it is skipped where the CPU has no native bf16.

FLOPs of one forward (batch 1): the dense ops (convolutions, linear layers, ...)
are counted by torch.utils.flop_counter with the selective scans stubbed out;
each scan is counted analytically as 9 FLOPs per state element and step
(exp(delta*A), two products for delta*B*u, the state update h*dA + dBu, the
C.h product and sum) plus 2 per channel and step for the D skip. A
multiply-add counts as 2 FLOPs throughout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sigma_core import SigmaConfig, build_sigma  # noqa: E402
from sigma_core.allocator import set_glibc_reuse  # noqa: E402
from sigma_core.inference import cpu_bf16_is_native, parse_precision  # noqa: E402
from sigma_core.models import vmamba  # noqa: E402
from sigma_core.ops.selective_scan import resolve_backend  # noqa: E402


@contextmanager
def counted_scans(totals: dict):
    """Replace the scan with a zero-cost stub that adds its analytic FLOPs to totals["scan"]."""
    real = vmamba.selective_scan

    def stub(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend="auto"):
        batch, dim, length = u.shape
        n = A.shape[1]
        totals["scan"] += 9 * batch * dim * length * n + (2 * batch * dim * length if D is not None else 0)
        totals["scan_calls"] += 1
        return torch.zeros_like(u)

    vmamba.selective_scan = stub
    try:
        yield
    finally:
        vmamba.selective_scan = real


def count_flops(model: torch.nn.Module, size: tuple[int, int]) -> tuple[int, int, int]:
    """(dense FLOPs, scan FLOPs, scan calls) of one forward at batch 1."""
    totals = {"scan": 0, "scan_calls": 0}
    rgb, x = torch.zeros(1, 3, *size), torch.zeros(1, 3, *size)
    with torch.inference_mode(), counted_scans(totals), FlopCounterMode(display=False) as counter:
        model(rgb, x)
    return counter.get_total_flops(), totals["scan"], totals["scan_calls"]


def time_forward(model: torch.nn.Module, size: tuple[int, int], repeats: int) -> list[float]:
    rgb, x = torch.randn(1, 3, *size), torch.randn(1, 3, *size)
    times = []
    with torch.inference_mode():
        model(rgb, x)  # warm-up (allocator, backend import)
        for _ in range(repeats):
            start = time.perf_counter()
            model(rgb, x)
            times.append(time.perf_counter() - start)
    return times


def compare(model: torch.nn.Module, size: tuple[int, int], setups: list[str], rounds: int,
            thread_counts: list[int]) -> dict[str, dict[str, list[float]]]:
    """Interleaved rounds of every backend:precision setup at every thread count on one model.
    Returns {label: {"wall": [s, ...], "cpu": [s, ...]}} in setup order (label "SETUP@Nt")."""
    rgb, x = torch.randn(1, 3, *size), torch.randn(1, 3, *size)
    runnable = []
    for setup in setups:
        backend, _, precision = setup.partition(":")
        dtype = parse_precision(precision or "fp32")
        if dtype == torch.bfloat16 and not cpu_bf16_is_native():
            print(f"  {setup:<14} skipped: this CPU has no native bf16")
            continue
        runnable += [(f"{setup}@{threads}t", backend, dtype, threads) for threads in thread_counts]
    measured = {label: {"wall": [], "cpu": []} for label, *_ in runnable}  # CPU time: robust on a shared machine

    def forward(backend: str, dtype: torch.dtype, threads: int, inputs) -> None:
        torch.set_num_threads(threads)
        model.set_scan_backend(backend)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(*inputs)

    with torch.inference_mode():
        for _label, *setup in runnable:  # warm-up at full size: kernels, oneDNN's bf16 primitives
            forward(*setup, (rgb, x))
        for _ in range(rounds):
            for label, *setup in runnable:
                start, start_cpu = time.perf_counter(), time.process_time()
                forward(*setup, (rgb, x))
                measured[label]["wall"].append(time.perf_counter() - start)
                measured[label]["cpu"].append(time.process_time() - start_cpu)
    return measured


def report(measured: dict[str, dict[str, list[float]]], thread_counts: list[int]) -> None:
    """Min and median per setup, ratios to the baseline (the last setup at the first thread count), and each
    setup's thread scaling."""
    labels = list(measured)
    baseline = labels[-len(thread_counts)]
    base, base_cpu = min(measured[baseline]["wall"]), min(measured[baseline]["cpu"])
    for label in labels:
        wall, cpu = measured[label]["wall"], measured[label]["cpu"]
        print(f"  {label:<16} wall min {min(wall):6.2f} s  median {statistics.median(wall):6.2f} s  "
              f"{base / min(wall):5.2f}x   process CPU min {min(cpu):6.2f} s  "
              f"median {statistics.median(cpu):6.2f} s  "
              f"{base_cpu / min(cpu):5.2f}x  (ratios vs {baseline})", flush=True)
    for first in range(0, len(labels), len(thread_counts)):
        one = labels[first]
        for label in labels[first + 1:first + len(thread_counts)]:
            print(f"  {label:<16} {min(measured[one]['wall']) / min(measured[label]['wall']):5.2f}x the wall time "
                  f"of {one} (min)")


def compare_malloc(argv: list[str], variant: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Each round, this script in two new processes, one per malloc mode (glibc's defaults hold only in a process
    that never changed them): each warms up and times one forward per setup; labels get "+reuse"/"+glibc"."""
    measured: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        for _ in range(rounds):
            for malloc in ("reuse", "glibc"):
                subprocess.run([sys.executable, __file__, *argv, "--variants", variant, "--repeats", "1",
                                "--malloc", malloc, "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
                for label, times in json.loads(out.read_text()).items():
                    setup, _, threads = label.rpartition("@")
                    entry = measured.setdefault(f"{setup}+{malloc}@{threads}", {"wall": [], "cpu": []})
                    entry["wall"] += times["wall"]
                    entry["cpu"] += times["cpu"]
    # report() takes the baseline from the last block: put glibc's last, thread counts kept together
    return dict(sorted(measured.items(), key=lambda item: ("+glibc@" in item[0], list(measured).index(item[0]))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["nano", "tiny"])
    parser.add_argument("--size", nargs=2, type=int, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed forwards per variant after one warm-up; 0: count only")
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="torch threads; several (e.g. 1 2) with --compare: each setup at each count")
    parser.add_argument("--backend", default="auto", help="selective-scan backend (default: best for CPU)")
    parser.add_argument("--num-classes", type=int, default=9)
    parser.add_argument("--compare", nargs="+", metavar="BACKEND:PRECISION",
                        help="time these setups in interleaved rounds instead (last one = baseline)")
    parser.add_argument("--malloc", choices=["reuse", "glibc", "both"], default="reuse",
                        help="reuse: glibc keeps freed memory, as the Segmenter sets it on a CPU "
                             "(sigma_core.allocator); glibc: its defaults; both: each setup both ways, in new "
                             "processes per round (--compare)")
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # --compare's times, for --malloc both
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.malloc == "both" and not args.compare:
        parser.error("--malloc both needs --compare")
    if args.malloc == "reuse":
        problem = set_glibc_reuse()
        if problem:
            print(f"malloc left as is: {problem}")
    torch.set_num_threads(args.threads[0])
    size = tuple(args.size)
    if args.compare:
        print(f"Sigma forward, batch 1, {size[0]}x{size[1]}, threads {args.threads}, torch {torch.__version__}, "
              f"min / median of {args.repeats} interleaved rounds; load average {os.getloadavg()}")
        child_argv = _without_options(raw_argv, {"--variants", "--repeats", "--malloc", "--json"})
        for name in args.variants:
            torch.manual_seed(0)
            print(f"{name}:", flush=True)
            if args.malloc == "both":
                measured = compare_malloc(child_argv, name, args.repeats)
            else:
                measured = compare(build_sigma(SigmaConfig(variant=name, num_classes=args.num_classes)).eval(),
                                   size, args.compare, args.repeats, args.threads)
            if args.json:
                args.json.write_text(json.dumps(measured))
            report(measured, args.threads)
        return
    backend = resolve_backend(args.backend, "cpu")
    print(f"Sigma forward, batch 1, {size[0]}x{size[1]}, {args.threads[0]} thread(s), scan backend {backend!r}, "
          f"torch {torch.__version__}")
    header = f"{'variant':<8} {'params':>10} {'dense GFLOPs':>13} {'scan GFLOPs':>12} {'total GFLOPs':>13} " \
             f"{'latency s (median)':>19} {'min':>7}"
    print(header)
    print("-" * len(header))
    for name in args.variants:
        torch.manual_seed(0)
        model = build_sigma(SigmaConfig(variant=name, num_classes=args.num_classes, scan_backend=backend)).eval()
        params = sum(p.numel() for p in model.parameters())
        dense, scan, _ = count_flops(model, size)
        times = time_forward(model, size, args.repeats) if args.repeats > 0 else []
        latency = f"{statistics.median(times):>19.2f} {min(times):>7.2f}" if times else f"{'-':>19} {'-':>7}"
        print(f"{name:<8} {params / 1e6:>9.2f}M {dense / 1e9:>13.1f} {scan / 1e9:>12.1f} {(dense + scan) / 1e9:>13.1f} "
              f"{latency}", flush=True)


def _without_options(argv: list[str], names: set[str]) -> list[str]:
    """argv without the given options and their values (the values run up to the next option)."""
    kept, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=", 1)[0] in names
        if not skipping:
            kept.append(arg)
    return kept


if __name__ == "__main__":
    main()
