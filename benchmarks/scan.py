"""Selective-scan backends on the Sigma-T stage shapes, against a plain loop and a naive reference.

Usage (one thread, as in CI)::

    python benchmarks/scan.py                      # full Sigma-T stage shapes, 3 interleaved rounds
    python benchmarks/scan.py --quick              # L / 16, for a quick look
    python benchmarks/scan.py --n-state 4          # the N=4 of the fusion blocks and the decoder
    python benchmarks/scan.py --model              # also: nano forward at 480x640 with each backend
    python benchmarks/scan.py --directions         # also: SS2D's 4 directions read by index vs cross_scan copies
    python benchmarks/scan.py --compile            # also: numba's cold compile and cached load, new processes
    python benchmarks/scan.py --floor              # stage 1 only: plain loop, backends (native vs numba), the floor

Times are the min and the median of the rounds; the implementations are interleaved within each round,
so that a change in machine load affects all of them alike. Ratios are against baselines of the same run.

Baselines, written here on purpose:
- "plain loop": an eager loop over L with grouped B/C views, the obvious PyTorch code;
- "naive ref": the mamba-ssm ``selective_scan_ref`` way: materialise exp(delta*A) and
  delta*B*u as full (batch, D, L, N) tensors (and B, C repeated per channel), then loop
  over L reading strided slices of them. Its memory traffic is what makes it slow.
- "floor": the arithmetic floor of the stage-1 scan: D x L x N state updates, each
  LANE_OPS_PER_UPDATE vector-lane operations (exp of delta*A as a polynomial, three fused
  multiply-adds), at the single-core rate of vector-lane FMAs measured here on an in-cache
  float32 matmul (torch.mm, one thread; MKL/oneDNN run near the FMA units' peak), as if every
  operation issued at that rate.
Forward+backward of the plain loop goes through autograd; it keeps every step's tensors,
so it is measured on a prefix of L and scaled linearly (marked ``*``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

if "--threads" not in sys.argv:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sigma_core.ops.selective_scan import available_backends, selective_scan  # noqa: E402

# Sigma-T: stage s has K=4 directions x d_inner = 2 * 96 * 2**s channels over (120 / 2**s) x (160 / 2**s) tokens.
STAGES = [(1, 768, 120 * 160), (2, 1536, 60 * 80), (3, 3072, 30 * 40), (4, 6144, 15 * 20)]
N_STATE, GROUPS = 16, 4
AUTOGRAD_PREFIX = 1200  # steps of the plain loop run under autograd before scaling to L


def make_inputs(dim: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 inputs with the magnitudes of an initialised Sigma block (A = -(1..N), dt in [1e-3, 0.1])."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(1, dim, length, generator=g),
        delta=torch.randn(1, dim, length, generator=g) * 0.5 - 3.0,
        A=-torch.arange(1, N_STATE + 1, dtype=torch.float32).repeat(dim, 1),
        B=torch.randn(1, GROUPS, N_STATE, length, generator=g),
        C=torch.randn(1, GROUPS, N_STATE, length, generator=g),
        D=torch.ones(dim),
        delta_bias=torch.rand(dim, generator=g) * 2 - 5,
    )


def plain_loop(u, delta, A, B, C, D, delta_bias):
    """The obvious eager loop: one step of the recurrence per iteration, B/C read per group."""
    delta = F.softplus(delta + delta_bias[:, None])
    batch, dim, length = u.shape
    groups = B.shape[1]
    dg = delta.view(batch, groups, -1, length)
    ug = u.view(batch, groups, -1, length)
    Ag = A.view(groups, -1, A.shape[1])
    h = u.new_zeros(batch, groups, dim // groups, A.shape[1])
    ys = []
    for t in range(length):
        dt = dg[..., t, None]
        h = torch.exp(dt * Ag) * h + (dt * ug[..., t, None]) * B[:, :, None, :, t]
        ys.append((h * C[:, :, None, :, t]).sum(-1))
    return torch.stack(ys, -1).reshape(batch, dim, length) + u * D[:, None]


def naive_reference(u, delta, A, B, C, D, delta_bias):
    """mamba-ssm selective_scan_ref style: full (batch, D, L, N) decay and input tensors, then a loop."""
    delta = F.softplus(delta + delta_bias[:, None])
    per_group = u.shape[1] // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (batch, D, N, L)
    C = C.repeat_interleave(per_group, dim=1)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    inputs = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + inputs[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def backend_fn(name: str) -> Callable[..., torch.Tensor]:
    def run(u, delta, A, B, C, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus=True, backend=name)

    return run


def time_forward(fn, inputs) -> float:
    """Wall time of one forward call without autograd, seconds."""
    with torch.no_grad():
        t0 = time.perf_counter()
        fn(**inputs)
        return time.perf_counter() - t0


def time_forward_backward(fn, inputs, prefix: int | None = None) -> tuple[float, bool]:
    """Wall time of one forward + backward of sum(y * w), seconds; scaled from a prefix of L if given."""
    length = inputs["u"].shape[-1]
    scaled = prefix is not None and prefix < length
    if scaled:
        inputs = {k: (v[..., :prefix] if v.dim() >= 3 else v) for k, v in inputs.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    weight = torch.randn(inputs["u"].shape)
    t0 = time.perf_counter()
    (fn(**leaves) * weight).sum().backward()
    seconds = time.perf_counter() - t0
    return (seconds * length / prefix if scaled else seconds), scaled


def check_agreement(fn, inputs) -> float:
    """Max abs difference to the plain loop on the first 256 steps (a sanity check of what is timed)."""
    short = {k: (v[..., :256] if v.dim() >= 3 else v) for k, v in inputs.items()}
    with torch.no_grad():
        return (fn(**short) - plain_loop(**short)).abs().max().item()


def summary(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


LANE_OPS_PER_UPDATE = 14  # one state update: exp(delta * A) (reduction, 6 polynomial FMAs, scale) + 3 FMAs


def fma_lane_rate(seconds: float = 1.0) -> float:
    """Float32 fused multiply-adds per second of one core: best of in-cache matmuls (256^3), one thread, CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(256, 256), torch.randn(256, 256)
        out = torch.empty(256, 256)
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.thread_time()  # CPU time of this thread: what other processes take is not counted
            for _ in range(20):
                torch.mm(a, b, out=out)
            best = min(best, (time.thread_time() - t0) / 20)
        return 256 ** 3 / best
    finally:
        torch.set_num_threads(threads)


def floor_seconds(dim: int, length: int, n_state: int, lane_rate: float) -> float:
    """The arithmetic floor of one scan: dim x length x n_state updates at LANE_OPS_PER_UPDATE each."""
    return dim * length * n_state * LANE_OPS_PER_UPDATE / lane_rate


def map_scan_fn(name: str, height: int = 120, width: int = 160) -> Callable[..., torch.Tensor]:
    """The same scan as the model runs it: the K=4 cross-scan directions of one channels-last (D/4, H, W) map, read
    by index and summed in place (selective_scan_ordered); the (1, D, L) inputs give u's first D/4 channels, and
    delta, B and C channels-last too, as the model's projections leave them (vmamba.scan_map_directions)."""
    from sigma_core.ops.cross_scan import cross_scan_order
    from sigma_core.ops.selective_scan import selective_scan_ordered

    order = cross_scan_order(height, width)
    maps: dict[int, tuple[torch.Tensor, ...]] = {}  # made once per input, outside the timed calls

    def channels_last(t: torch.Tensor) -> torch.Tensor:  # (..., X, L) -> same shape, X contiguous
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)

    def run(u, delta, A, B, C, D, delta_bias):
        if id(u) not in maps:
            maps[id(u)] = tuple(channels_last(t) for t in (u[:, :u.shape[1] // GROUPS], delta))
            maps[id(u)] += tuple(t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1) for t in (B, C))
        u_map, delta_map, B_map, C_map = maps[id(u)]
        return selective_scan_ordered(u_map, delta_map, A, B_map, C_map, D, delta_bias, True, order, backend=name)

    return run


def floor_table(rounds: int) -> None:
    """The Sigma-T stage-1 scan (D=768, L=19200, N, G): plain loop, each backend, and the arithmetic floor; then
    the fast backends on the layout the model runs (4 directions of a channels-last map, "(map)")."""
    _stage, dim, length = STAGES[0]
    lane_rate = fma_lane_rate()
    floor = floor_seconds(dim, length, N_STATE, lane_rate)
    backends = [b for b in available_backends("cpu") if b != "reference"]
    inputs = make_inputs(dim, length)
    impls: dict[str, Callable] = {"plain loop": plain_loop, **{name: backend_fn(name) for name in backends}}
    impls.update({f"{name} (map)": map_scan_fn(name) for name in ("native", "numba") if name in backends})
    for name in backends:
        impls[name](**{k: (v[..., :64] if v.dim() >= 3 else v) for k, v in inputs.items()})  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in impls}
    cpu: dict[str, list[float]] = {name: [] for name in impls}
    with torch.no_grad():
        for _ in range(rounds):
            for name, fn in impls.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(**inputs)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    print(f"Sigma-T stage-1 scan forward, D={dim} L={length} N={N_STATE} G={GROUPS}, {torch.get_num_threads()} "
          f"thread(s), min / median of {rounds} interleaved rounds; load average {os.getloadavg()}")
    print(f"floor: {dim * length * N_STATE / 1e6:.0f} M state updates x {LANE_OPS_PER_UPDATE} lane operations at "
          f"{lane_rate / 1e9:.1f} G float32 FMA lanes/s (one core, measured now) = {floor:.3f} s")
    print(f"{'implementation':<12} {'wall min':>9} {'median':>7} {'process CPU min':>15}  {'vs plain':>9} "
          f"{'x floor':>8} {'vs numba':>9}")
    plain = min(cpu["plain loop"])
    for name in impls:
        best_cpu = min(cpu[name])
        numba_name = "numba (map)" if name.endswith("(map)") else "numba"
        numba = min(cpu[numba_name]) if numba_name in cpu else None
        versus_numba = f"{numba / best_cpu:8.2f}x" if numba else f"{'-':>9}"
        print(f"{name:<12} {min(wall[name]):9.3f} {statistics.median(wall[name]):7.3f} {best_cpu:15.3f}  "
              f"{plain / best_cpu:8.1f}x {best_cpu / floor:7.2f}x {versus_numba}")
    print("(ratios use process CPU time, which a loaded machine inflates less than wall time)")


def scan_table(quick: bool, naive_stages: set[int], rounds: int) -> None:
    # "reference" is the plain loop's kin; "onnx" is the export's formulation (no backward; its speed is ONNX
    # Runtime's, benchmarks/onnx_cpu.py)
    backends = [b for b in available_backends("cpu") if b not in ("reference", "onnx")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), backends timed: {backends}")
    print(f"shapes: batch 1, N={N_STATE}, G={GROUPS}" + (", L / 16 (--quick)" if quick else "")
          + f"; min / median of {rounds} interleaved rounds")
    header = (
        f"{'stage':>5} {'D':>5} {'L':>6}  {'implementation':<12} {'fwd s min':>9} {'median':>7} {'vs plain':>9}"
        f" {'vs cpu':>7} {'vs naive':>9}  {'fwd+bwd min':>11} {'median':>7} {'vs plain':>9} {'vs cpu':>7}"
        f"  {'max|diff|':>9}"
    )
    print(header)
    print("-" * len(header))
    for stage, dim, length in STAGES:
        if quick:
            length = max(length // 16, 32)
        inputs = make_inputs(dim, length)
        impls: dict[str, Callable] = {"plain loop": plain_loop}
        impls.update({name: backend_fn(name) for name in backends})
        for name in backends:
            impls[name](**{k: (v[..., :64] if v.dim() >= 3 else v) for k, v in inputs.items()})  # warm-up
        fwd: dict[str, list[float]] = {name: [] for name in impls}
        fwdbwd: dict[str, list[float]] = {name: [] for name in impls}
        scaled = False
        for _ in range(rounds):
            for name, fn in impls.items():
                fwd[name].append(time_forward(fn, inputs))
                seconds, was_scaled = time_forward_backward(
                    fn, inputs, prefix=AUTOGRAD_PREFIX if name == "plain loop" else None
                )
                scaled |= was_scaled
                fwdbwd[name].append(seconds)
        naive = time_forward(naive_reference, inputs) if stage in naive_stages else None
        plain_f, plain_fb = min(fwd["plain loop"]), min(fwdbwd["plain loop"])
        cpu_f, cpu_fb = (min(fwd["cpu"]), min(fwdbwd["cpu"])) if "cpu" in fwd else (None, None)
        for name in impls:
            f_min, f_med = summary(fwd[name])
            b_min, b_med = summary(fwdbwd[name])
            vs_cpu = f"{cpu_f / f_min:6.1f}x" if cpu_f else f"{'-':>7}"
            vs_cpu_b = f"{cpu_fb / b_min:6.1f}x" if cpu_fb else f"{'-':>7}"
            vs_naive = f"{naive / f_min:8.1f}x" if naive else f"{'-':>9}"
            star = "*" if name == "plain loop" and scaled else " "
            diff = f"{check_agreement(impls[name], inputs):9.1e}" if name != "plain loop" else ""
            print(
                f"{stage:>5} {dim:>5} {length:>6}  {name:<12} {f_min:9.3f} {f_med:7.3f} {plain_f / f_min:8.1f}x"
                f" {vs_cpu} {vs_naive}  {b_min:10.3f}{star} {b_med:7.3f} {plain_fb / b_min:8.1f}x {vs_cpu_b}  {diff}"
            )
        if naive:
            print(f"{stage:>5} {dim:>5} {length:>6}  {'naive ref':<12} {naive:9.3f}  (one round)")
        del inputs
    print(f"* plain-loop forward+backward runs under autograd on the first {AUTOGRAD_PREFIX} steps, scaled to L.")


def directions_table(rounds: int) -> None:
    """SS2D's scan at the Sigma-T stage sizes with the numba backend: directions read by index vs the copies.

    "copies": cross_scan -> projections of the 4 sequences -> grouped scan -> cross_merge (the published
    layout, still used by backends without an ordered kernel); "by index": projections on the map, one
    ordered scan writing the merged output (what the model runs with numba).
    """
    from sigma_core.models.vmamba import SS2D, scan_directions, scan_map_directions
    from sigma_core.ops.cross_scan import cross_merge, cross_scan, cross_scan_order

    if "numba" not in available_backends("cpu"):
        print("\n(directions: numba is not installed)")
        return
    print(f"\nSS2D scan (projections + scan + merge), numba backend, Sigma-T stage sizes; min / median of "
          f"{rounds} rounds")
    print(f"{'stage':>5} {'HxW':>8} {'D':>5}  {'copies s':>15} {'by index s':>15} {'saved':>7}  {'max|diff|':>9}")
    for stage, (height, width) in enumerate([(120, 160), (60, 80), (30, 40), (15, 20)], start=1):
        op = SS2D(96 * 2 ** (stage - 1))
        x = torch.randn(1, op.d_inner, height, width)
        params = (op.x_proj_weight, op.dt_projs_weight, op.dt_projs_bias, op.A_logs, op.Ds)
        order = cross_scan_order(height, width)

        def copies(x=x, params=params, height=height, width=width):
            return cross_merge(scan_directions(cross_scan(x), *params, backend="numba"), height, width)

        def by_index(x=x, params=params, order=order):
            return scan_map_directions(x.flatten(2), order, *params, backend="numba")

        times: dict[str, list[float]] = {"copies": [], "by index": []}
        with torch.no_grad():
            diff = (copies() - by_index()).abs().max().item()  # also the warm-up
            for _ in range(rounds):
                for name, fn in (("copies", copies), ("by index", by_index)):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        (c_min, c_med), (i_min, i_med) = summary(times["copies"]), summary(times["by index"])
        print(f"{stage:>5} {f'{height}x{width}':>8} {op.d_inner:>5}  {c_min:7.3f} / {c_med:5.3f} "
              f"{i_min:7.3f} / {i_med:5.3f} {100 * (1 - i_min / c_min):6.1f}%  {diff:9.1e}")


COMPILE_PROBE = """
import time, torch
t0 = time.perf_counter()
from sigma_core.ops.scan_numba import selective_scan_numba
g = torch.Generator().manual_seed(0)
args = [torch.randn(1, 32, 100, generator=g), torch.randn(1, 32, 100, generator=g), -torch.rand(32, 16),
        torch.randn(1, 4, 16, 100), torch.randn(1, 4, 16, 100)]
args = [a.requires_grad_() for a in args]
t1 = time.perf_counter()
y = selective_scan_numba(*args, None, None, True)
t2 = time.perf_counter()
y.sum().backward()
t3 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f}")
"""


def compile_table() -> None:
    """First float32 call of the numba kernels in a new process: with an empty cache, then with the cache."""
    if "numba" not in available_backends("cpu"):
        print("\n(compile: numba is not installed)")
        return
    print("\nnumba kernels in a new process (float32, one thread): import s, forward s, backward s")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, OMP_NUM_THREADS="1")
        for label in ("cold compile (empty cache)", "cached load"):
            out = subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            print(f"  {label:<28} import {out[0]:>6} s   forward {out[1]:>6} s   backward {out[2]:>6} s")


def model_table(height: int, width: int, rounds: int) -> None:
    """Forward latency of the nano network with each CPU backend (the model calls selective_scan)."""
    from sigma_core import SigmaConfig, build_sigma

    model = build_sigma(SigmaConfig(variant="nano", num_classes=9)).eval()
    rgb, x = torch.randn(1, 3, height, width), torch.randn(1, 3, height, width)
    print(f"\nnano forward at {height}x{width}, batch 1, min / median of {rounds} interleaved rounds:")
    names = [b for b in available_backends("cpu") if b != "reference"]
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            model.set_scan_backend(name)
            model(rgb[..., :64, :64], x[..., :64, :64])  # warm-up
        for _ in range(rounds):
            for name in names:
                model.set_scan_backend(name)
                times[name].append(_timed(lambda: model(rgb, x)))
    base = min(times["cpu"]) if "cpu" in times else None
    for name, values in times.items():
        ratio = f"({base / min(values):.2f}x vs cpu)" if base else ""
        print(f"  {name:<10} {min(values):7.3f} s  {statistics.median(values):7.3f} s  {ratio}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    global N_STATE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L / 16 on every stage, one round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default 3)")
    parser.add_argument("--n-state", type=int, default=16, help="N, the state size (16; 4 in fusion/decoder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in CI)")
    parser.add_argument(
        "--naive-stages", default="", help="stages on which to run the slow naive reference (e.g. 1,4)"
    )
    parser.add_argument("--model", action="store_true", help="also time the nano network with each backend")
    parser.add_argument("--model-size", default="480x640", help="HxW for --model (default 480x640)")
    parser.add_argument("--directions", action="store_true", help="also: scan directions by index vs copies")
    parser.add_argument("--compile", action="store_true", help="also: numba cold-compile and cached-load times")
    parser.add_argument("--no-table", action="store_true", help="skip the per-stage scan table")
    parser.add_argument("--floor", action="store_true",
                        help="only the stage-1 scan against the plain loop and the arithmetic floor")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    N_STATE = args.n_state
    rounds = 1 if args.quick else args.rounds
    naive = {int(s) for s in args.naive_stages.split(",") if s.strip()}
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    if args.floor:
        floor_table(rounds)
        return
    if not args.no_table:
        scan_table(args.quick, naive, rounds)
    if args.directions:
        directions_table(rounds)
    if args.model:
        height, width = (int(v) for v in args.model_size.lower().split("x"))
        model_table(height, width, rounds)
    if args.compile:
        compile_table()


if __name__ == "__main__":
    main()
