"""The decoder's 2x bilinear upsampling of channels-last maps: the native kernel (ops.upsample) against torch's
F.interpolate, on the shapes of nano and Sigma-T at 480x640, at 1 and 2 threads.

    python benchmarks/upsample.py                  # float32 and bfloat16, 1 and 2 threads, 9 interleaved rounds
    python benchmarks/upsample.py --threads 1 4

torch's channels-last kernel splits its work by batch row only: at batch 1 it runs on one thread whatever the
thread count. Times are the min over interleaved rounds; ratios are torch's time over the native kernel's, both
measured in this run, and each one's own scaling from the first thread count.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sigma_core.allocator import set_glibc_reuse
from sigma_core.ops.upsample import _native_runs, upsample2x_channels_last

# (name, input map (B, H, W, C)): UpsampleHalve's two and FinalUpsample's two, per model
SHAPES = [("nano up 60x80", (1, 60, 80, 64)), ("nano up 120x160", (1, 120, 160, 32)),
          ("nano final 240x320", (1, 240, 320, 32)), ("Sigma-T up 120x160", (1, 120, 160, 96)),
          ("Sigma-T final 240x320", (1, 240, 320, 96))]


def torch_upsample(x: torch.Tensor) -> torch.Tensor:
    size = (2 * x.shape[1], 2 * x.shape[2])
    return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    problem = set_glibc_reuse()  # as the Segmenter runs: freed maps reused, no page faults per call
    print(f"2x bilinear upsampling, channels-last, torch {torch.__version__}, min of {args.rounds} interleaved rounds"
          + (f" (malloc left as is: {problem})" if problem else ""))
    for dtype in (torch.float32, torch.bfloat16):
        for name, shape in SHAPES:
            x = torch.randn(shape).to(dtype)
            if not _native_runs(x):
                print(f"  {name}: the native kernel does not run here (no C++ compiler?)")
                return
            runs = {(impl, threads): [] for impl in ("torch", "native") for threads in args.threads}
            with torch.no_grad():
                for _ in range(args.rounds + 1):  # the first round warms up
                    for impl, threads in runs:
                        torch.set_num_threads(threads)
                        fn = torch_upsample if impl == "torch" else upsample2x_channels_last
                        start = time.perf_counter()
                        fn(x)
                        runs[impl, threads].append(time.perf_counter() - start)
            best = {key: min(times[1:]) * 1e3 for key, times in runs.items()}
            first = args.threads[0]
            cells = []
            for threads in args.threads:
                t, n = best["torch", threads], best["native", threads]
                cells.append(f"{threads}t torch {t:6.2f} ms native {n:6.2f} ms ({t / n:4.2f}x)")
            scaling = " ".join(f"{threads}t: torch {best['torch', first] / best['torch', threads]:4.2f}x native "
                               f"{best['native', first] / best['native', threads]:4.2f}x"
                               for threads in args.threads[1:])
            tail = f"  scaling {scaling}" if scaling else ""
            print(f"  {str(dtype)[6:]:8s} {name:22s} " + " | ".join(cells) + tail)


if __name__ == "__main__":
    main()
