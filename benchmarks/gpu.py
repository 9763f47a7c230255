"""GPU benchmark of the selective-scan backends and of whole-model Sigma-T inference.

Usage (on a machine with a CUDA GPU)::

    python benchmarks/gpu.py                       # all stages, backends, precisions; model at 480x640
    python benchmarks/gpu.py --backward --cuda-graphs --out benchmarks/results/gpu_h100.json
    python benchmarks/gpu.py --stages 0 --precisions fp16 --no-model

What it measures, for batch 1 (``--batch``):

- scan: the four Sigma-T encoder stage shapes at 480x640 - stage i has C = 96 * 2**i,
  d_inner = 2C, the 4-direction cross scan as one grouped scan with D = 4 * d_inner,
  G = 4, N = 16 and L = (120 * 160) / 4**i - for each backend ("naive" = the step-by-step
  PyTorch reference, "triton", "mamba_ssm") and precision of u/delta/B/C (fp32/fp16/bf16;
  A, D, delta_bias stay fp32). ``--backward`` times forward + backward instead.
- model: Sigma-T (9 classes) forward at 480x640 under each backend ("naive" = backend
  "reference") and precision (fp16/bf16 through torch.autocast), optionally replayed as a
  CUDA graph (``--cuda-graphs``, fixed input size).

Each entry has the median time over ``--iters`` runs after ``--warmup`` runs (CUDA events),
the speed-up against "naive" at the same shape and precision, the peak memory allocated
during the run (``torch.cuda.max_memory_allocated``) minus what was allocated before, and,
for scans, the largest difference from the naive output. Results go to ``--out`` as JSON
and are printed as a table. TF32 is off so fp32 numbers are true fp32.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SCAN_BACKENDS = ("naive", "triton", "mamba_ssm")
# Sigma-T at 480x640: stage-0 map is 120x160 (patch embedding stride 4); each stage halves H and W.
BASE_WIDTH = 96
STAGE0_LENGTH = 120 * 160
D_STATE = 16
GROUPS = 4
MIB = 2**20


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"), help="JSON results file")
    p.add_argument("--backends", nargs="+", default=list(SCAN_BACKENDS), choices=SCAN_BACKENDS)
    p.add_argument("--precisions", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--stages", nargs="*", type=int, default=[0, 1, 2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--naive-iters", type=int, default=2, help="timed runs of the (slow) naive reference")
    p.add_argument("--backward", action="store_true", help="time scan forward + backward")
    p.add_argument("--no-model", dest="model", action="store_false", help="skip the whole-model benchmark")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--variant", default="tiny")
    p.add_argument("--cuda-graphs", action="store_true", help="also time the model replayed as a CUDA graph")
    return p.parse_args(argv)


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        sys.exit(
            "benchmarks/gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}). Run it on a GPU machine with a "
            "CUDA build of PyTorch; CPU timings come from the CPU benchmarks instead."
        )
    return torch.device("cuda")


def time_cuda(fn: Callable[[], Any], warmup: int, iters: int) -> dict[str, float]:
    """Median/min milliseconds of fn() by CUDA events, and its peak extra memory in MiB."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {
        "ms": statistics.median(times),
        "ms_min": min(times),
        "peak_extra_mib": (torch.cuda.max_memory_allocated() - base) / MIB,
    }


def stage_shape(stage: int, batch: int) -> dict[str, int]:
    d_inner = 2 * BASE_WIDTH * 2**stage
    return dict(batch=batch, D=GROUPS * d_inner, L=STAGE0_LENGTH // 4**stage, G=GROUPS, N=D_STATE)


def scan_inputs(shape: dict[str, int], dtype: torch.dtype, device: torch.device, grad: bool) -> dict:
    """Random inputs with Sigma-like scales: A = -exp(A_log) with A_log = log(1..N), softplus'd delta ~ 0.01..0.1."""
    g = torch.Generator(device=device).manual_seed(0)
    b, d, length, groups, n = (shape[k] for k in ("batch", "D", "L", "G", "N"))

    def rnd(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=g, device=device) * scale).to(dt)

    a_log = torch.log(torch.arange(1, n + 1, device=device, dtype=torch.float32)).repeat(d, 1)
    x = dict(
        u=rnd(b, d, length), delta=rnd(b, d, length, scale=0.5), A=-a_log.exp(),
        B=rnd(b, groups, n, length), C=rnd(b, groups, n, length),
        D=rnd(d, dt=torch.float32), delta_bias=rnd(d, scale=0.5, dt=torch.float32) - 4.0,
    )
    return {k: v.requires_grad_(grad) for k, v in x.items()}


def load_scan(name: str) -> Callable:
    from sigma_core.ops.selective_scan import load_backend

    return load_backend("reference" if name == "naive" else name)


def bench_scans(args, device) -> list[dict]:
    results = []
    for stage in args.stages:
        shape = stage_shape(stage, args.batch)
        for prec in args.precisions:
            naive_out, naive_ms = None, None
            for backend in args.backends:  # "naive" first (default order) gives the speed-up baseline
                entry = {"kind": "scan", "stage": stage, **shape, "backend": backend, "precision": prec,
                         "pass": "forward+backward" if args.backward else "forward"}
                try:
                    fn = load_scan(backend)
                except Exception as err:  # BackendUnavailable, or a broken install
                    results.append({**entry, "skipped": str(err)})
                    print(f"  skip scan stage {stage} {backend}: {err}", flush=True)
                    continue
                x = scan_inputs(shape, DTYPES[prec], device, grad=args.backward)
                grads = [t for t in x.values() if t.requires_grad]

                def run(fn=fn, x=x, grads=grads):
                    y = fn(**x, delta_softplus=True)
                    if args.backward:
                        torch.autograd.grad(y, grads, torch.ones_like(y))
                    return y

                iters = args.naive_iters if backend == "naive" else args.iters
                warmup = 1 if backend == "naive" else args.warmup
                try:
                    entry.update(time_cuda(run, warmup, iters))
                    with torch.no_grad():
                        y = fn(**{k: v.detach() for k, v in x.items()}, delta_softplus=True).float()
                except Exception as err:  # a kernel that fails on this shape is a result, not a crash
                    results.append({**entry, "error": f"{type(err).__name__}: {err}"})
                    print(f"  error scan stage {stage} {backend} {prec}: {err}", flush=True)
                    continue
                if backend == "naive":
                    naive_out, naive_ms = y, entry["ms"]
                if naive_ms is not None:
                    entry["speedup_vs_naive"] = naive_ms / entry["ms"]
                    entry["max_abs_diff_vs_naive"] = (y - naive_out).abs().max().item()
                results.append(entry)
                print(f"  scan stage {stage} {backend:9s} {prec}: {entry['ms']:.3f} ms", flush=True)
                del x, grads
                torch.cuda.empty_cache()
    return results


def build_model(args, device):
    try:
        import sigma_core
        model = sigma_core.build_sigma(sigma_core.SigmaConfig(variant=args.variant, num_classes=9))
    except (ImportError, AttributeError, NotImplementedError) as err:
        return None, f"sigma_core.build_sigma is not usable here: {type(err).__name__}: {err}"
    return model.eval().to(device), None


def bench_model(args, device) -> list[dict]:
    model, why = build_model(args, device)
    if model is None:
        print(f"  skip model: {why}", flush=True)
        return [{"kind": "model", "skipped": why}]
    g = torch.Generator(device=device).manual_seed(0)
    rgb = torch.randn(args.batch, 3, args.height, args.width, device=device, generator=g)
    other = torch.randn(args.batch, 3, args.height, args.width, device=device, generator=g)
    results = []
    for prec in args.precisions:
        naive_ms = None
        for backend in args.backends:
            name = "reference" if backend == "naive" else backend
            entry = {"kind": "model", "variant": args.variant, "batch": args.batch, "height": args.height,
                     "width": args.width, "backend": backend, "precision": prec}
            try:
                load_scan(backend)
                model.set_scan_backend(name)
            except Exception as err:
                results.append({**entry, "skipped": str(err)})
                continue

            def run(prec=prec):
                # no autocast weight cache: CUDA graph capture cannot use it
                with torch.inference_mode(), torch.autocast("cuda", dtype=DTYPES[prec], enabled=prec != "fp32",
                                                            cache_enabled=False):
                    return model(rgb, other)

            iters = args.naive_iters if backend == "naive" else args.iters
            try:
                entry.update(time_cuda(run, 1 if backend == "naive" else args.warmup, iters))
            except Exception as err:
                results.append({**entry, "error": f"{type(err).__name__}: {err}"})
                print(f"  error model {backend} {prec}: {err}", flush=True)
                continue
            entry["fps"] = 1000.0 * args.batch / entry["ms"]
            if backend == "naive":
                naive_ms = entry["ms"]
            if naive_ms is not None:
                entry["speedup_vs_naive"] = naive_ms / entry["ms"]
            results.append(entry)
            print(f"  model {backend:9s} {prec}: {entry['ms']:.2f} ms ({entry['fps']:.1f} fps)", flush=True)
            if args.cuda_graphs and backend != "naive":
                results.append(bench_graph(args, run, {**entry, "backend": f"{backend}+cudagraph"}))
            torch.cuda.empty_cache()
    model.set_scan_backend("auto")
    return results


def bench_graph(args, run: Callable[[], torch.Tensor], entry: dict) -> dict:
    """Capture one forward as a CUDA graph (fixed input size) and time its replays."""
    for key in ("ms", "ms_min", "peak_extra_mib", "fps", "speedup_vs_naive"):
        entry.pop(key, None)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up on a side stream: allocations and Triton compiles happen here
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        entry.update(time_cuda(graph.replay, args.warmup, args.iters))
    except Exception as err:
        entry["error"] = f"{type(err).__name__}: {err}"
        print(f"  error {entry['backend']} {entry['precision']}: {err}", flush=True)
        return entry
    entry["fps"] = 1000.0 * args.batch / entry["ms"]
    print(f"  model {entry['backend']} {entry['precision']}: {entry['ms']:.2f} ms ({entry['fps']:.1f} fps)")
    return entry


def environment() -> dict[str, Any]:
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for package in ("triton", "mamba_ssm"):
        try:
            info[package] = __import__(package).__version__
        except Exception as err:
            info[package] = f"unavailable ({type(err).__name__})"
    return info


def print_table(results: list[dict]) -> None:
    head = f"{'what':26s} {'backend':20s} {'prec':5s} {'ms':>10s} {'x naive':>8s} {'peak MiB':>9s} {'note':s}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        if r["kind"] == "scan":
            what = f"scan s{r['stage']} D={r['D']} L={r['L']}"
        else:
            what = f"model {r.get('variant', '')} {r.get('height', '')}x{r.get('width', '')}"
        note = r.get("skipped") or r.get("error") or (f"{r['fps']:.1f} fps" if "fps" in r else "")
        if "max_abs_diff_vs_naive" in r:
            note = f"max|diff| {r['max_abs_diff_vs_naive']:.2e}"
        ms = f"{r['ms']:10.3f}" if "ms" in r else f"{'-':>10s}"
        speed = f"{r['speedup_vs_naive']:8.1f}" if "speedup_vs_naive" in r else f"{'-':>8s}"
        mem = f"{r['peak_extra_mib']:9.1f}" if "peak_extra_mib" in r else f"{'-':>9s}"
        print(f"{what:26s} {r.get('backend', '-'):20s} {r.get('precision', '-'):5s} {ms} {speed} {mem} {note[:60]}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = require_cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if "naive" in args.backends:  # the baseline first, so speed-ups can be computed
        args.backends = ["naive"] + [b for b in args.backends if b != "naive"]
    results = bench_scans(args, device)
    if args.model:
        results += bench_model(args, device)
    report = {"environment": environment(), "settings": {k: str(v) for k, v in vars(args).items()},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
