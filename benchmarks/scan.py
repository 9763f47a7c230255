"""Selective-scan backends on the Sigma-T stage shapes, against a plain loop and a naive reference.

Usage (one thread, as in CI)::

    python benchmarks/scan.py            # full Sigma-T stage shapes (about 2-3 minutes)
    python benchmarks/scan.py --quick    # L / 16, for a quick look
    python benchmarks/scan.py --model    # also: nano forward at 480x640 with each backend

Baselines, written here on purpose:
- "plain loop": an eager loop over L with grouped B/C views, the obvious PyTorch code;
- "naive ref": the mamba-ssm ``selective_scan_ref`` way: materialise exp(delta*A) and
  delta*B*u as full (batch, D, L, N) tensors (and B, C repeated per channel), then loop
  over L reading strided slices of them. Its memory traffic is what makes it slow.
Forward+backward of the plain loop goes through autograd; it keeps every step's tensors,
so it is measured on a prefix of L and scaled linearly (marked ``*``).
"""
from __future__ import annotations

import argparse
import os
import sys
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


def time_forward(fn, inputs, repeats: int) -> float:
    """Best wall time of ``repeats`` forward calls without autograd, seconds."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(**inputs)
            best = min(best, time.perf_counter() - t0)
    return best


def time_forward_backward(fn, inputs, repeats: int, prefix: int | None = None) -> tuple[float, bool]:
    """Best wall time of forward + backward of sum(y * w), seconds; scaled from a prefix of L if given."""
    length = inputs["u"].shape[-1]
    scaled = prefix is not None and prefix < length
    if scaled:
        inputs = {k: (v[..., :prefix] if v.dim() >= 3 else v) for k, v in inputs.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    weight = torch.randn_like(inputs["u"])
    best = float("inf")
    for _ in range(repeats):
        for v in leaves.values():
            v.grad = None
        t0 = time.perf_counter()
        (fn(**leaves) * weight).sum().backward()
        best = min(best, time.perf_counter() - t0)
    return (best * length / prefix if scaled else best), scaled


def check_agreement(fn, inputs) -> float:
    """Max abs difference to the plain loop on the first 256 steps (a sanity check of what is timed)."""
    short = {k: (v[..., :256] if v.dim() >= 3 else v) for k, v in inputs.items()}
    with torch.no_grad():
        return (fn(**short) - plain_loop(**short)).abs().max().item()


def scan_table(quick: bool, naive_stages: set[int], repeats: int) -> None:
    backends = available_backends("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), backends on cpu: {backends}")
    print(f"shapes: batch 1, N={N_STATE}, G={GROUPS}" + (", L / 16 (--quick)" if quick else ""))
    header = (
        f"{'stage':>5} {'D':>5} {'L':>6}  {'implementation':<16} {'fwd s':>8} {'vs plain':>9} {'vs naive':>9}"
        f"  {'fwd+bwd s':>10} {'vs plain':>9}  {'max|diff|':>9}"
    )
    print(header)
    print("-" * len(header))
    for stage, dim, length in STAGES:
        if quick:
            length = max(length // 16, 32)
        inputs = make_inputs(dim, length)
        fwd: dict[str, float] = {}
        fwdbwd: dict[str, tuple[float, bool]] = {}
        fwd["plain loop"] = time_forward(plain_loop, inputs, repeats)
        fwdbwd["plain loop"] = time_forward_backward(plain_loop, inputs, max(1, repeats - 1), prefix=AUTOGRAD_PREFIX)
        if stage in naive_stages:
            fwd["naive ref"] = time_forward(naive_reference, inputs, 1)
        for name in backends:
            fn = backend_fn(name)
            if name == "reference":
                fwd[name] = time_forward(fn, inputs, 1)  # the float oracle: same loop shape as the plain one
                continue
            fn(**{k: (v[..., :64] if v.dim() >= 3 else v) for k, v in inputs.items()})  # warm-up
            fwd[name] = time_forward(fn, inputs, repeats)
            fwdbwd[name] = time_forward_backward(fn, inputs, max(1, repeats - 1))
        for name, seconds in fwd.items():
            vs_plain = fwd["plain loop"] / seconds
            vs_naive = f"{fwd['naive ref'] / seconds:8.1f}x" if "naive ref" in fwd else f"{'-':>9}"
            if name in fwdbwd:
                fb, scaled = fwdbwd[name]
                fb_cell = f"{fb:9.3f}{'*' if scaled else ' '} {fwdbwd['plain loop'][0] / fb:8.1f}x"
            else:
                fb_cell = f"{'-':>10} {'-':>9}"
            fn = naive_reference if name == "naive ref" else backend_fn(name) if name != "plain loop" else None
            diff = f"{check_agreement(fn, inputs):9.1e}" if fn is not None else ""
            print(
                f"{stage:>5} {dim:>5} {length:>6}  {name:<16} {seconds:8.3f} {vs_plain:8.1f}x {vs_naive}"
                f"  {fb_cell}  {diff}"
            )
        del inputs
    print(f"* plain-loop forward+backward runs under autograd on the first {AUTOGRAD_PREFIX} steps, scaled to L.")


def model_table(height: int, width: int, repeats: int) -> None:
    """Forward latency of the nano network with each CPU backend (the model calls selective_scan)."""
    from sigma_core import SigmaConfig, build_sigma

    model = build_sigma(SigmaConfig(variant="nano", num_classes=9)).eval()
    rgb, x = torch.randn(1, 3, height, width), torch.randn(1, 3, height, width)
    print(f"\nnano forward at {height}x{width}, batch 1:")
    times = {}
    for name in available_backends("cpu"):
        model.set_scan_backend(name)
        with torch.inference_mode():
            model(rgb[..., :64, :64], x[..., :64, :64])  # warm-up
            times[name] = min(_timed(lambda: model(rgb, x)) for _ in range(repeats))
    for name, seconds in times.items():
        print(f"  {name:<10} {seconds:7.3f} s  ({times.get('reference', seconds) / seconds:.1f}x vs reference)")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L / 16 on every stage, one repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in CI)")
    parser.add_argument(
        "--naive-stages", default="1,2,3,4", help="stages on which to run the slow naive reference (e.g. 1)"
    )
    parser.add_argument("--model", action="store_true", help="also time the nano network with each backend")
    parser.add_argument("--model-size", default="480x640", help="HxW for --model (default 480x640)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    naive = {int(s) for s in args.naive_stages.split(",") if s.strip()}
    scan_table(args.quick, naive, repeats)
    if args.model:
        height, width = (int(v) for v in args.model_size.lower().split("x"))
        model_table(height, width, 1 if args.quick else 2)


if __name__ == "__main__":
    main()
