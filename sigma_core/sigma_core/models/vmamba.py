"""The VMamba encoder shared by both modalities: patch embedding, VSS blocks with SS2D, patch merging.

Module and parameter names follow the published code so that its checkpoints
load by name (see shared/reference/sigma/README.md). Inside stages tensors are
channels-last, (B, H, W, C); stage outputs are returned channels-first.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cross_scan import cross_scan_order
from ..ops.selective_scan import LowRankDelta, direction_blocks, selective_scan, selective_scan_ordered

LN_EPS = 1e-5  # every LayerNorm of the published model uses PyTorch's default
EXPORT_BACKEND = "onnx"  # the scan backend sigma_core.export sets: blocks then build their layouts from tensor ops


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (eps 1e-5) that computes and returns float32 under autocast, on every device.

    (..., C) any float dtype -> (..., C) float32 (float64 stays float64). CUDA autocast already runs
    layer_norm in float32; CPU autocast keeps a 16-bit input's dtype, which would leave the residual
    streams of the encoder, fusion and decoder (each begins at a norm) in float16/bfloat16: float16
    overflows there with trained weights and bfloat16 loses masks on near-tied pixels. With this, the
    streams and every scan output stay float32 on both devices, as in the published code under CUDA
    autocast; only the matmuls and convolutions between them run in 16 bits. Same parameters and
    state-dict keys as nn.LayerNorm; identical results in float32.
    """

    def __init__(self, normalized_shape: int, eps: float = LN_EPS, **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (per sample); identity in eval mode or with rate 0."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Permute(nn.Module):
    """Tensor.permute as a module (keeps the published `patch_embed.0/.2` indices)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def scan_directions(
    xs: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
    backend: str = "auto",
    swap_c: bool = False,
) -> torch.Tensor:
    """Selective scan of K sequence sets with per-direction projections, as one grouped scan with G = K.

    xs: (B, K, D, L); x_proj_weight: (K, R + 2N, D) whose output channels are [dt (R), B (N), C (N)];
    dt_projs_weight: (K, D, R); dt_projs_bias: (K, D); A_logs: (K*D, N); Ds: (K*D,).
    swap_c: K must be 2; direction k reads its C from the other direction (the Cross Mamba block).
    Returns (B, K, D, L) float32 whatever xs' dtype (float64 for float64 xs). A, D and the delta bias
    stay float32.

    Half precision: every caller keeps the result float32 through the merge and the LayerNorm after
    it (SS2D ``out_norm``, CroMB ``out_norm_1/2``, ConMB ``out_norm1/2``), as the published code does;
    the scan output of a trained model exceeds float16's 65504 (see sigma_core.ops.selective_scan).
    """
    batch, k, dim, length = xs.shape
    rank = dt_projs_weight.shape[2]
    n = A_logs.shape[1]
    # Positions as rows, as in scan_map_directions: (B, L, K*D) is a view where xs is channels-last in memory (the
    # fusion's are); the K x_proj projections as one block-diagonal matmul. B and C then reach the scan
    # channels-last, and delta as its factors (see LowRankDelta). (xs contiguous along L, from cross_scan, is
    # transposed here once.)
    x_dbl = torch.matmul(xs.permute(0, 3, 1, 2).flatten(2), direction_blocks(x_proj_weight))
    dts, bs, cs = torch.split(x_dbl.unflatten(2, (k, rank + 2 * n)), [rank, n, n], dim=3)  # (B, L, K, R | N | N)
    bs, cs = bs.permute(0, 2, 3, 1), cs.permute(0, 2, 3, 1)  # (B, K, N, L)
    if swap_c:
        cs = cs.flip(1)
    ys = selective_scan(
        xs.flatten(1, 2),
        LowRankDelta(dts, dt_projs_weight),
        -torch.exp(A_logs.float()),
        bs,
        cs,
        Ds.float(),
        dt_projs_bias.float().reshape(-1),
        delta_softplus=True,
        backend=backend,
    )
    return ys.unflatten(1, (k, dim))


def scan_map_directions(
    x: torch.Tensor,
    order: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """scan_directions over K step orders of one map, summed back at each position - without the K copies.

    x: (B, D, P), the P positions the step orders index, any strides (channels-last, as the convolution leaves
    it, is read without a copy); order: (K, L) from ops.cross_scan_order (SS2D) or ops.concat_scan_order
    (ConMB); parameters as in scan_directions. Returns (B, D, P), equal to
    cross_merge(scan_directions(cross_scan(x))) for the cross-scan order; float32 (float64 for float64 x), as
    selective_scan_ordered gives it.
    """
    batch, dim, positions = x.shape
    k, rank, n = order.shape[0], dt_projs_weight.shape[2], A_logs.shape[1]
    # The projections act per position, so they run once on the map, all K directions in one matmul, with
    # positions as rows: x is channels-last as the convolution leaves it (no copy), and so are B, C and delta's
    # factors (see LowRankDelta), so that a step of any direction (the column-major ones too) reads its channels
    # and states as whole cache lines.
    x_dbl = torch.matmul(x.transpose(1, 2), x_proj_weight.reshape(-1, dim).t()).unflatten(2, (k, rank + 2 * n))
    dts, bs, cs = torch.split(x_dbl, [rank, n, n], dim=3)  # (B, P, K, R | N | N)
    return selective_scan_ordered(
        x, LowRankDelta(dts, dt_projs_weight), -torch.exp(A_logs.float()), bs.permute(0, 2, 3, 1),
        cs.permute(0, 2, 3, 1), Ds.float(), dt_projs_bias.float().reshape(-1), delta_softplus=True, order=order,
        backend=backend,
    )


def scan_map_directions_export(
    x: torch.Tensor,
    directions: int,
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
) -> torch.Tensor:
    """scan_map_directions as traced for export (backend EXPORT_BACKEND): no size-keyed order table, no copies
    per direction. x: (B, D, H, W), scanned in ops.cross_scan_order (directions 4) or row-major both ways
    (directions 2, the ConMB sequence as one row); parameters as in scan_directions. Returns (B, H, W, D)
    float32, channels last: the sum of the directions' outputs at each position.

    The projections run once on the channels-last map (plain GEMMs in the file; the per-direction dt
    projections as one block-diagonal matmul), and the scan is ops.scan_onnx.scan_map, which gathers the
    directions' time-major sequences straight from these maps in the file.
    """
    from ..ops.scan_onnx import scan_map, steps_for

    k, dim, rank = dt_projs_weight.shape
    n = A_logs.shape[1]
    x = x.permute(2, 3, 0, 1)  # (H, W, B, D)
    x_dbl = torch.matmul(x, x_proj_weight.reshape(-1, dim).t()).unflatten(-1, (k, rank + 2 * n))
    # slices, not torch.split (exported as SplitToSequence + SequenceAt: 4 % of nano's forward in ONNX Runtime)
    dts, bs, cs = x_dbl[..., :rank], x_dbl[..., rank:rank + n], x_dbl[..., rank + n:]  # (H, W, B, K, R | N | N)
    dts = torch.matmul(dts.flatten(-2), direction_blocks(dt_projs_weight)).unflatten(-1, (k, dim))
    y = scan_map(x.float(), dts.float(), -torch.exp(A_logs.float()), bs.float(), cs.float(), Ds.float(),
                 dt_projs_bias.float().reshape(-1), True, k, steps_for(k * n * dim))
    return y.permute(2, 0, 1, 3)


def declare_scan_parameters(module: nn.Module, directions: int, d_inner: int, dt_rank: int, d_state: int) -> None:
    """Register the per-direction scan parameters under the published names (uninitialised; see init_ssm_).

    x_proj_weight (K, dt_rank + 2N, d_inner), dt_projs_weight (K, d_inner, dt_rank), dt_projs_bias (K, d_inner),
    A_logs (K * d_inner, N), Ds (K * d_inner), with K = directions and N = d_state. A_logs and Ds are
    tagged ``_no_weight_decay`` (see no_weight_decay).
    """
    k = directions
    module.x_proj_weight = nn.Parameter(torch.empty(k, dt_rank + 2 * d_state, d_inner))
    module.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, dt_rank))
    module.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
    module.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
    module.Ds = nn.Parameter(torch.empty(k * d_inner))
    no_weight_decay(module.A_logs, module.Ds)


def no_weight_decay(*parameters: nn.Parameter) -> None:
    """Tag parameters that the optimiser must not decay (SSM A_log and D), as mamba_ssm does with
    ``_no_weight_decay``: decaying A_log towards 0 pulls every state's decay rate to the same value."""
    for p in parameters:
        p._no_weight_decay = True


@torch.no_grad()
def init_ssm_(
    x_proj_weight: torch.Tensor,
    dt_projs_weight: torch.Tensor,
    dt_projs_bias: torch.Tensor,
    A_logs: torch.Tensor,
    Ds: torch.Tensor,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
) -> None:
    """Mamba's initialisation, in place: A = -(1..N), D = 1, dt log-uniform in [dt_min, dt_max].

    Shapes as in scan_directions (K-first); for training from scratch only, checkpoints overwrite it.
    """
    d_inner, rank = dt_projs_weight.shape[-2:]
    bound = d_inner**-0.5  # nn.Linear's default bound for the x projection
    x_proj_weight.uniform_(-bound, bound)
    dt_projs_weight.uniform_(-(rank**-0.5), rank**-0.5)
    dt = torch.exp(torch.rand_like(dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=1e-4)
    dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
    n = A_logs.shape[-1]
    A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32, device=A_logs.device)).expand_as(A_logs))
    Ds.fill_(1.0)


class SS2D(nn.Module):
    """2-D selective scan over 4 directions (VMamba). (B, H, W, C) -> (B, H, W, C).

    d_inner = ssm_ratio * C, dt_rank = ceil(C / 16); in_proj's first d_inner outputs feed the
    conv/scan branch, the last d_inner are the SiLU gate z.
    """

    directions = 4

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0, d_conv: int = 3):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        rank = math.ceil(d_model / 16)
        k = self.directions
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, rank
        self.scan_backend = "auto"
        declare_scan_parameters(self, k, d_inner, rank, d_state)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.out_norm = LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        init_ssm_(self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs, self.Ds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, d_inner, H, W)
        if self.scan_backend == EXPORT_BACKEND:  # no size-keyed table in the graph
            y = scan_map_directions_export(x, self.directions, self.x_proj_weight, self.dt_projs_weight,
                                           self.dt_projs_bias, self.A_logs, self.Ds)
        else:
            y = scan_map_directions(
                x.flatten(2), cross_scan_order(height, width, x.device), self.x_proj_weight, self.dt_projs_weight,
                self.dt_projs_bias, self.A_logs, self.Ds, backend=self.scan_backend,
            ).transpose(1, 2).reshape(batch, height, width, self.d_inner)
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)


class VSSBlock(nn.Module):
    """x + SS2D(LayerNorm(x)), channels-last. (mlp_ratio 0: the published model has no MLP.)"""

    def __init__(self, dim: int, d_state: int = 16, ssm_ratio: float = 2.0, drop_path: float = 0.0):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


class PatchMerging(nn.Module):
    """2x2 patch merging ("v1"): (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); odd sizes padded at the end."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        rows, cols = (height + 1) // 2, (width + 1) // 2
        # Padding to (2 * rows, 2 * cols) written so that a tracer sees the even size (export with symbolic sizes).
        x = F.pad(x, (0, 0, 0, 2 * cols - width, 0, 2 * rows - height))
        x = x.reshape(batch, rows, 2, cols, 2, channels)  # (b, row, row parity, col, col parity, c)
        # [0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2] as in the published code
        x = x.permute(0, 1, 3, 4, 2, 5).reshape(batch, rows, cols, 4 * channels)
        return self.reduction(self.norm(x))


class VSSStage(nn.Module):
    def __init__(self, dim: int, depth: int, d_state: int, ssm_ratio: float, drop_paths: list[float],
                 downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            VSSBlock(dim, d_state=d_state, ssm_ratio=ssm_ratio, drop_path=drop_paths[i]) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class VSSEncoder(nn.Module):
    """VMamba backbone (published `backbone.vssm`). (B, 3, H, W) -> 4 maps (B, C_i, H_i, W_i), channels-first.

    H_1 = floor(H / 4) and each later stage halves (rounding up); C_i = dims * 2**i.
    """

    def __init__(self, depths: tuple[int, ...], dims: int, d_state: int = 16, ssm_ratio: float = 2.0,
                 drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        widths = [dims * 2**i for i in range(len(depths))]
        self.widths = widths
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, dims, kernel_size=4, stride=4), Permute(0, 2, 3, 1), LayerNorm(dims)
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(VSSStage(widths[i], depth, d_state, ssm_ratio, rates[start:start + depth],
                                        downsample=i < len(depths) - 1))
        for i, width in enumerate(widths):
            self.add_module(f"outnorm{i}", LayerNorm(width))
        self.apply(_init_dense)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # The patch embedding runs in float32 even under autocast (it is ~0.1 % of the FLOPs): in
        # bfloat16 its input, the normalised pixels, round by up to half a grey level, which alone
        # changed 0.6 % of a real MFNet frame's mask pixels against float32 (0.1 % with this).
        with torch.autocast(x.device.type, enabled=False):
            x = self.patch_embed(x.float() if x.dtype != torch.float64 else x)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            # channels-first views of the channels-last maps: the fusion blocks and the decoder read them
            # channels-last again, so a contiguous copy here would only be undone by another
            outs.append(getattr(self, f"outnorm{i}")(x).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs


def _init_dense(module: nn.Module, std: Optional[float] = 0.02) -> None:
    """VMamba's initialisation of dense layers: truncated normal Linear weights, zero biases, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
