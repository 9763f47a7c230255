"""Selective scan through mamba-ssm's compiled CUDA kernel (the speed yardstick).

mamba-ssm must be built against the user's exact CUDA and PyTorch; when it is
missing or its compiled ``selective_scan_cuda`` does not load, importing this
module raises BackendUnavailable with what to do, and ``backend="auto"`` falls
through to the Triton backend.

The kernel's contract (mamba-ssm 2.x ``selective_scan_fn``): u, delta, B, C in
one dtype among float32/float16/bfloat16, B/C grouped as (batch, G, N, L),
N <= 256, A/D/delta_bias float32, CUDA tensors with stride 1 along L; it
returns y in the input dtype. Our contract is y in float32 (see
sigma_core.ops.selective_scan: y can exceed float16's range), so this wrapper
feeds the kernel float32 u, delta, B and C, whatever their dtype here.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional

import torch

from .selective_scan import BackendUnavailable, check_scan_shapes

INTERFACE_MODULE = "mamba_ssm.ops.selective_scan_interface"
MAX_STATE = 256
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_HOW_TO_INSTALL = (
    "install mamba-ssm built for this CUDA and PyTorch: `MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation "
    "mamba-ssm` (needs nvcc; set TORCH_CUDA_ARCH_LIST to your GPU, e.g. 9.0), or use backend='triton', "
    "which needs nothing compiled"
)


def load_selective_scan_fn() -> Callable[..., torch.Tensor]:
    """mamba-ssm's ``selective_scan_fn``; BackendUnavailable if mamba-ssm or its compiled kernel does not load."""
    try:
        interface = importlib.import_module(INTERFACE_MODULE)
        fn = interface.selective_scan_fn
    except Exception as err:  # ImportError, an undefined-symbol OSError of a mismatched build, ...
        raise BackendUnavailable(
            f"scan backend 'mamba_ssm' is unavailable ({type(err).__name__}: {err}); {_HOW_TO_INSTALL}"
        ) from err
    return fn


load_selective_scan_fn()  # fail at import, so the registry reports it once and "auto" falls through


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def selective_scan_mamba_ssm(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Grouped selective scan with mamba-ssm's CUDA kernel (differentiable through its own backward).

    u, delta: (batch, D, L) float32/float16/bfloat16 CUDA; A: (D, N) with N <= 256; B, C: (batch, G, N, L);
    D (skip), delta_bias: (D,). All are cast to float32 (the kernel writes y in its input dtype, and y
    must stay float32). Returns y: (batch, D, L) float32.
    """
    check_scan_shapes(u, delta, A, B, C, D, delta_bias)
    if u.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"mamba_ssm scan: u has dtype {u.dtype}; the kernel takes float32, float16 or bfloat16 "
            "(use backend='reference' for float64)"
        )
    if A.shape[1] > MAX_STATE:
        raise ValueError(f"mamba_ssm scan: state size N={A.shape[1]} exceeds the kernel's {MAX_STATE}; "
                         "use backend='triton'")
    fn = load_selective_scan_fn()
    u, delta, B, C = (_last_dim_contiguous(t.float()) for t in (u, delta, B, C))
    A = A.float().contiguous()
    D = None if D is None else D.float().contiguous()
    delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
    y = fn(u, delta, A, B, C, D=D, z=None, delta_bias=delta_bias, delta_softplus=bool(delta_softplus),
           return_last_state=False)
    return y.float()
